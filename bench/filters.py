#!/usr/bin/env python3
"""What Proxy-Wasm filters cost per request, measured in one run.

    bench/filters.py                   # ~4 minutes
    bench/filters.py --quick           # short runs, one round

Variants, alternated A B C A B C so drift cancels out:
  hello+0, hello+1, hello+3   the WAT hello component behind 0, 1 and 3 no-op filters
                              (guests/proxywasm/noop.wat: every header callback, on_log...)
  upstream+0, upstream+hdr    pier --upstream to a native hello, without and with a filter that
                              rewrites request and response headers (guests/proxywasm/headers.wat)
The time per request is 1 / (req/s): at concurrency 1 that is the latency a client sees, at 50
the machine time each request takes with both cores busy. The cost of a filter is the
difference to the same handler without filters, divided by the number of filters. Results: a table on stdout,
JSON in bench/results/filters.json.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import run
from run import ROOT, WORK, free_port, sh, wait_http

NOOP = ROOT / "guests" / "proxywasm" / "noop.wat"
HEADERS = ROOT / "guests" / "proxywasm" / "headers.wat"
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

VARIANTS = {
    "hello+0": ("hello", []),
    "hello+1": ("hello", [NOOP]),
    "hello+3": ("hello", [NOOP, NOOP, NOOP]),
    "upstream+0": ("upstream", []),
    "upstream+hdr": ("upstream", [HEADERS]),
}


def start(variant, port, upstream):
    handler, filters = VARIANTS[variant]
    cmd = [ROOT / "target" / "release" / "pier", "serve", "--addr", f"127.0.0.1:{port}"]
    for f in filters:
        cmd += ["--filter", f]
    if handler == "upstream":
        cmd += ["--upstream", f"http://127.0.0.1:{upstream}"]
    else:
        cmd.append(HELLO)
    return subprocess.Popen([str(c) for c in cmd], env=run.pier_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(variant, conc, duration, upstream):
    port = free_port()
    return run.measure(start(variant, port, upstream), port, conc, duration, "GET", 0, b"hello", {})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,50")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2, 1
    WORK.mkdir(parents=True, exist_ok=True)
    sh("cargo", "build", "--release", "--locked", "-p", "pier", "-p", "native-hello", cwd=ROOT)
    sh(ROOT / "target" / "release" / "pier", "compile", HELLO, env=run.pier_env())
    upstream = free_port()
    native = subprocess.Popen([str(ROOT / "target" / "release" / "native-hello"), f"127.0.0.1:{upstream}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_http(upstream, b"hello", "GET", 0)
        for conc in [int(c) for c in args.concurrency.split(",")]:
            samples = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    r = measure(variant, conc, args.duration, upstream)
                    print(f"  {variant:13} c={conc:<3} {r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.3f} ms"
                          f"  p99 {r['p99_ms']:.3f} ms  non-2xx {r['non_2xx']}", file=sys.stderr)
                    samples[variant].append(r)
            for variant, rs in samples.items():
                rows.append({
                    "variant": variant, "concurrency": conc,
                    "rps": round(statistics.mean(r["rps"] for r in rs)),
                    "p50_ms": round(statistics.median(r["p50_ms"] for r in rs), 3),
                    "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 3),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                    "non_2xx": sum(r["non_2xx"] for r in rs),
                    "samples": [r["rps"] for r in rs],
                })
    finally:
        native.terminate()

    by = {(r["variant"], r["concurrency"]): r for r in rows}
    print(f"\n{'variant':14}{'c':>4}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'us/req':>9}{'added us per filter':>22}")
    costs = []
    for r in rows:
        base = by[("hello+0" if r["variant"].startswith("hello") else "upstream+0", r["concurrency"])]
        n = len(VARIANTS[r["variant"]][1])
        per_req = 1e6 / r["rps"]
        added = ""
        if n:
            cost = (per_req - 1e6 / base["rps"]) / n
            added = f"{cost:.1f}"
            costs.append({"variant": r["variant"], "concurrency": r["concurrency"], "us_per_filter": round(cost, 2)})
        print(f"{r['variant']:14}{r['concurrency']:>4}{r['rps']:>10}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
              f"{per_req:>9.1f}{added:>22}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
              "duration_s": args.duration, "rounds": args.rounds, "rows": rows, "costs": costs,
              "machine": {"cpu": run.cpu_model()}}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "filters.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {out / 'filters.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
