#!/usr/bin/env python3
"""What a key-value store costs a request: the componentize-py key-value app (guests/python/kv.py)
doing one `get` and one `set` per request (`/getset`), on SQLite and on Redis (loopback), against
the same app doing no storage (`/none`), all in the same run.

One release pier per backend (warmed compile cache, PIER_LOG=warn) serves both paths; each is
warmed for 2 s, then for --rounds rounds the two paths are loaded in turn (`wrk -t2`, or -t1 at
c=1) at each concurrency for --duration seconds, so drift on a shared machine cancels out. It
prints req/s and latency per path and concurrency, and the cost a store adds per request: at
c=1 the difference of mean latencies, at c=50 the difference of 1/throughput (CPU per request
on the saturated machine). Redis's own round trip (a PING, from
Python, sequential) is printed beside it. JSON goes to bench/results/kv.json.

    cargo build --release -p pier && guests/build.sh python && apt-get install wrk redis-server
    python3 bench/kv.py --rounds 3 --duration 8

`bench/run.py` runs it as its `kv` scenario, in the same run as the others.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIER = os.path.join(ROOT, "target/release/pier")
GUEST = os.path.join(ROOT, "guests/build/python-kv.wasm")

MANIFEST = """manifest_version = 1
[[route]]
path = "/..."
component = "app"
[component.app]
source = "app.wasm"
key_value_stores = ["default"]
{store}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(work):
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(7) == b"+PONG\r\n":
                    return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def redis_rtt_us(port, n=2000):
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.perf_counter()
        for _ in range(n):
            s.sendall(b"PING\r\n")
            s.recv(7)
        return (time.perf_counter() - started) / n * 1e6


def start_pier(app, cache):
    env = dict(os.environ, PIER_CACHE_DIR=cache, PIER_LOG="warn")
    log = open(os.path.join(app, "pier.log"), "w")
    proc = subprocess.Popen(
        [PIER, "serve", "--addr", "127.0.0.1:0", os.path.join(app, "pier.toml")],
        stdout=subprocess.DEVNULL, stderr=log, env=env,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        text = open(log.name).read()
        m = re.search(r"pier: serving http://(\S+)", text)
        if m:
            return proc, m[1]
        if proc.poll() is not None:
            sys.exit(f"pier exited: {text}")
        time.sleep(0.1)
    sys.exit("pier did not start")


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        sys.exit(f"wrk printed a latency pier's bench cannot read: {text!r}")
    value, unit = m.groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def wrk(url, c, seconds):
    out = subprocess.run(
        ["wrk", "-t1" if c == 1 else "-t2", f"-c{c}", f"-d{int(seconds)}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out)[1])
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": requests / seconds,
        "mean_ms": ms(re.search(r"^\s+Latency\s+([\d.]+\w+)", out, re.M)[1]),
        "p50_ms": ms(re.search(r"^\s+50%\s+([\d.]+\w+)", out, re.M)[1]),
        "p99_ms": ms(re.search(r"^\s+99%\s+([\d.]+\w+)", out, re.M)[1]),
        "non2xx": int(errors[1]) if errors else 0,
    }


def measure(rounds=3, duration=8.0, concurrency=(1, 50), log=print):
    """Runs the benchmark; returns the report (also written to bench/results/kv.json)."""
    for need in (PIER, GUEST):
        if not os.path.exists(need):
            sys.exit(f"{need} is missing: cargo build --release -p pier && guests/build.sh python")
    work = tempfile.mkdtemp(prefix="pier-kv-bench-")
    redis, port = start_redis(work)
    rtt = redis_rtt_us(port)
    cache = os.path.join(work, "cache")
    backends = {
        "sqlite": "",
        "redis": f'[key_value_store.default]\ntype = "redis"\nurl = "redis://127.0.0.1:{port}"\n',
    }
    # backend -> path -> concurrency -> measurements
    results = {b: {p: {c: [] for c in concurrency} for p in ("/none", "/getset")} for b in backends}
    try:
        for backend, store in backends.items():
            app = os.path.join(work, f"app-{backend}")
            os.mkdir(app)
            shutil.copy(GUEST, os.path.join(app, "app.wasm"))
            with open(os.path.join(app, "pier.toml"), "w") as f:
                f.write(MANIFEST.format(store=store))
            proc, addr = start_pier(app, cache)
            try:
                for path in ("/none", "/getset"):
                    wrk(f"http://{addr}{path}", 50, 2)
                # The two paths of one process, alternated: drift cancels out.
                for r in range(rounds):
                    for c in concurrency:
                        for path in ("/none", "/getset"):
                            m = wrk(f"http://{addr}{path}", c, duration)
                            results[backend][path][c].append(m)
                            log(f"round {r + 1} {backend:6} {path:7} c={c:<3} {m['rps']:8.0f} req/s  "
                                f"mean {m['mean_ms']:.3f} ms  p50 {m['p50_ms']:.3f}  p99 {m['p99_ms']:.3f}  "
                                f"non-2xx {m['non2xx']}")
            finally:
                proc.terminate()
                proc.wait()
    finally:
        redis.terminate()
        redis.wait()
    log(f"Redis round trip (PING, loopback, sequential): {rtt:.1f} us")
    summary = {}
    for backend in backends:
        for c in concurrency:
            med = {p: {k: statistics.median(m[k] for m in results[backend][p][c]) for k in ("rps", "mean_ms")}
                   for p in ("/none", "/getset")}
            none, getset = med["/none"], med["/getset"]
            if c == 1:
                added, how = (getset["mean_ms"] - none["mean_ms"]) * 1000, "mean latency"
            else:
                added, how = (1 / getset["rps"] - 1 / none["rps"]) * 1e6, "1/throughput"
            summary[f"{backend}-c{c}"] = round(added, 1)
            log(f"c={c:<3} {backend:6}: {getset['rps']:8.0f} req/s vs {none['rps']:8.0f} without a store "
                f"(x{getset['rps'] / none['rps']:.2f}); adds {added:6.1f} us per request ({how})")
    report = {"redis_rtt_us": round(rtt, 1), "added_us": summary,
              "results": {b: {p: {str(c): v for c, v in by_c.items()} for p, by_c in r.items()}
                          for b, r in results.items()}}
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/kv.json"), "w") as f:
        json.dump(report, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--concurrency", default="1,50")
    args = parser.parse_args()
    measure(args.rounds, args.duration, [int(c) for c in args.concurrency.split(",")],
            log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
