#!/usr/bin/env python3
"""A soak: one release pier serving a mixed application under a bounded load for a set time,
checking that it holds steady.

The application (a manifest written to a temporary directory) has a route for each kind of
work: /hello (the WAT hello), /echo (1 MiB POSTs echoed back), /py (componentize-py),
/js (componentize-js), /getset (a Python guest's key-value get and set, on a local Redis),
/forward (a WAT guest forwarding to a native upstream), /filtered (the hello behind a
Proxy-Wasm filter) and /trap (a guest that traps: 500 expected). Each route gets its own `wrk`
(2 connections each, 16 in all) in rounds of --round seconds until --duration is spent.

After every round it samples pier's resident memory, its open file descriptors, the pool's
free warm slots (`pier_pool_unused_warm_slots` on the admin listener) and Redis's connected
clients. It fails (exit 1) if any request got an unexpected status or a socket error, or if,
after the first round (the warm-up), memory grew by more than --rss-slack MiB, file
descriptors or Redis clients grew by more than a few, or the warm slots kept growing.

    cargo build --release -p pier -p native-hello && guests/build.sh python && guests/build.sh js \
        && guests/build.sh filters
    python3 bench/soak.py --duration 1800 --round 60

Figures go to bench/results/soak.json.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the bench harness: paths, ports, waiting, guests)
import kv as kv_bench  # noqa: E402  (a local redis-server)

ROOT = run.ROOT
PIER = ROOT / "target" / "release" / "pier"

MANIFEST = """manifest_version = 1
[[route]]
path = "/hello"
component = "hello"
[[route]]
path = "/echo"
component = "echo"
[[route]]
path = "/py"
component = "py"
[[route]]
path = "/js"
component = "js"
[[route]]
path = "/getset"
component = "kv"
[[route]]
path = "/forward"
component = "forward"
[[route]]
path = "/filtered"
component = "hello"
filters = ["headers"]
[[route]]
path = "/trap"
component = "faults"

[component.hello]
source = "{hello}"
[component.echo]
source = "{echo}"
[component.py]
source = "{py}"
[component.js]
source = "{js}"
[component.kv]
source = "{kv}"
key_value_stores = ["default"]
[component.forward]
source = "{forward}"
allowed_outbound = ["http://127.0.0.1:{upstream}"]
[component.faults]
source = "{faults}"

[filter.headers]
source = "{filter}"
root_id = "solo"

[key_value_store.default]
type = "redis"
url = "redis://127.0.0.1:{redis}"
"""

# path -> (method, body bytes, extra headers, expected status)
LOADS = {
    "/hello": ("GET", 0, {}, 200),
    "/echo": ("POST", 1 << 20, {}, 200),
    "/py": ("GET", 0, {}, 200),
    "/js": ("GET", 0, {}, 200),
    "/getset": ("GET", 0, {}, 200),
    "/forward": ("GET", 0, None, 200),  # headers filled in with the upstream's address
    "/filtered": ("GET", 0, {}, 200),
    "/trap": ("GET", 0, {}, 500),
}


def wat_guest(name):
    out = run.WORK / f"{name}.wasm"
    run.sh("cargo", "run", "--quiet", "--locked", "-p", "pier-testkit", "--bin", "pier-guest", "--",
           "wat2component", ROOT / "guests" / "wat" / f"{name}.wat", out, cwd=ROOT)
    return out


def built(file, kind):
    path = ROOT / "guests" / "build" / file
    if not path.exists():
        run.sh(ROOT / "guests" / "build.sh", kind, cwd=ROOT)
    return path


def wrk(port, path, method, body, headers, seconds):
    args = ["wrk", "-t1", "-c2", "-d", f"{seconds}s", "--timeout", "10s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    script = None
    if method == "POST":
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(run.LUA_POST.format(size=body))
        script.close()
        args += ["-s", script.name]
    args.append(f"http://127.0.0.1:{port}{path}")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), script


def parse_wrk(out):
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(g) for g in m.groups()) if m else 0
    return requests, non_2xx, errors


def wait_ready(port, pier, timeout=300):
    """Until GET /hello answers 200 (the app's components compile on the first start)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pier.poll() is not None:
            sys.exit("pier exited before serving: see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("pier did not serve /hello in time")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return round(kb / 1024, 1)


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(admin_port, name):
    with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    total = 0.0
    for line in data.decode(errors="replace").splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def redis_clients(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO clients\r\n")
        data = b""
        while b"connected_clients" not in data or not data.endswith(b"\r\n"):
            data += s.recv(65536)
    return int(re.search(rb"connected_clients:(\d+)", data).group(1)) - 1  # less this one


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=300, help="seconds of load in all")
    parser.add_argument("--round", type=int, default=30, help="seconds per round")
    parser.add_argument("--rss-slack", type=float, default=32, help="MiB RSS may grow after warm-up")
    parser.add_argument("--out", default="soak.json")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"bench/soak.py needs {tool}")
    if not PIER.exists():
        sys.exit(f"{PIER} is missing: cargo build --release -p pier -p native-hello")
    run.WORK.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="pier-soak-")
    redis_proc, redis_port = kv_bench.start_redis(work)
    upstream = run.upstream_port()
    sources = {
        "hello": ROOT / "examples" / "hello" / "hello.wasm",
        "echo": wat_guest("echo"),
        "forward": wat_guest("forward"),
        "faults": wat_guest("faults"),
        "py": built("python-hello.wasm", "python"),
        "kv": built("python-kv.wasm", "python"),
        "js": built("js-hello.wasm", "js"),
        "filter": built("filter-solo.wasm", "filters"),
    }
    manifest = os.path.join(work, "pier.toml")
    with open(manifest, "w") as f:
        f.write(MANIFEST.format(upstream=upstream, redis=redis_port,
                                **{k: str(v) for k, v in sources.items()}))
    port, admin = run.free_port(), run.free_port()
    log = open(os.path.join(work, "pier.log"), "w")
    env = dict(run.pier_env(), PIER_LOG="warn")
    # The AssemblyScript filter's runtime keeps what it allocates per request inside its VM (the
    # VM's own heap grows, not pier's): pier replaces a VM grown past 80% of its memory, so a
    # smaller cap shows that bound within the soak instead of after 100 MB.
    pier = subprocess.Popen([PIER, "serve", "--addr", f"127.0.0.1:{port}", "--admin-addr",
                             f"127.0.0.1:{admin}", "--filter-max-memory", "16MiB", manifest],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=log, env=env)
    samples, problems = [], []
    try:
        wait_ready(port, pier)
        LOADS["/forward"] = ("GET", 0, {"x-forward-to": f"127.0.0.1:{upstream}"}, 200)
        started = time.time()
        n = 0
        while time.time() - started < args.duration:
            n += 1
            procs = {path: wrk(port, path, m, b, h, args.round) for path, (m, b, h, _) in LOADS.items()}
            counts = {}
            for path, (proc, script) in procs.items():
                out = proc.communicate()[0]
                if script:
                    os.unlink(script.name)
                requests, non_2xx, errors = parse_wrk(out)
                expected = LOADS[path][3]
                unexpected = non_2xx if expected == 200 else requests - non_2xx
                counts[path] = requests
                if unexpected or errors:
                    problems.append(f"round {n} {path}: {unexpected} unexpected statuses, "
                                    f"{errors} socket errors of {requests}")
            sample = {
                "round": n, "seconds": round(time.time() - started),
                "rss_mb": rss_mb(pier.pid), "fds": fds(pier.pid),
                "warm_slots": metric(admin, "pier_pool_unused_warm_slots"),
                "redis_clients": redis_clients(redis_port), "requests": counts,
            }
            samples.append(sample)
            print(f"round {n}: {sum(counts.values())} requests, rss {sample['rss_mb']} MB, "
                  f"fds {sample['fds']}, warm slots {sample['warm_slots']:.0f}, "
                  f"redis clients {sample['redis_clients']}", file=sys.stderr)
    finally:
        pier.terminate()
        pier.wait(timeout=60)
        redis_proc.terminate()
        if run.UPSTREAM["proc"]:
            run.UPSTREAM["proc"].terminate()
    if len(samples) >= 2:
        warm, last = samples[0], samples[-1]
        if last["rss_mb"] - warm["rss_mb"] > args.rss_slack:
            problems.append(f"RSS grew {warm['rss_mb']} -> {last['rss_mb']} MB after warm-up")
        if last["fds"] - warm["fds"] > 8:
            problems.append(f"file descriptors grew {warm['fds']} -> {last['fds']}")
        if last["redis_clients"] - warm["redis_clients"] > 2:
            problems.append(f"Redis clients grew {warm['redis_clients']} -> {last['redis_clients']}")
        if all(b["warm_slots"] > a["warm_slots"] for a, b in zip(samples, samples[1:])) and len(samples) > 2:
            problems.append("the pool's warm slots grew every round")
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "duration_s": args.duration, "round_s": args.round, "samples": samples,
              "problems": problems}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / args.out).write_text(json.dumps(report, indent=2) + "\n")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print(f"{'FAILED' if problems else 'steady'}: {len(samples)} rounds; JSON: {out / args.out}",
          file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
