#!/usr/bin/env python3
"""CPU per request, in paired rounds: the servers given take turns, each round starting every
server afresh, warming it for 2 s and loading it with `wrk -t2 -c50` for --duration seconds.

For each server and round it prints requests per second, the server's CPU per request (user +
system time of its whole process tree, workers included, over the requests answered), wrk's CPU
per request, and the server's voluntary and involuntary context switches and page faults per
request; then the median of each over the rounds. On a noisy machine, only servers measured in
the same rounds are worth comparing (bench/RESULTS.md).

    python3 bench/cpu.py --rounds 3 --duration 4 \\
        "pier=target/release/pier serve --addr {addr} examples/hello/hello.wasm" \\
        "native=target/release/native-hello {addr}"

`{addr}` in a command is replaced by the address to listen on. Servers run with PIER_LOG=warn and
the benchmark's compile cache (target/bench/pier-cache).
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")


def tree(pid):
    """`pid` and its descendants."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    pids += tree(int(child))
    except FileNotFoundError:
        pass
    return pids


def counters(pid):
    """CPU seconds, voluntary and involuntary context switches, minor faults of `pid`'s tree."""
    cpu = voluntary = involuntary = faults = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / HZ
            faults += int(fields[7])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/status") as f:
                    status = f.read()
                voluntary += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])
                involuntary += int(
                    re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)[1]
                )
        except FileNotFoundError:
            pass
    return cpu, voluntary, involuntary, faults


def wrk(addr, seconds):
    """Requests answered, and wrk's own CPU seconds."""
    before = os.times()
    out = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{seconds}s", f"http://{addr}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    after = os.times()
    cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    return int(re.search(r"(\d+) requests in", out)[1]), cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--port", type=int, default=19100)
    parser.add_argument("servers", nargs="+", metavar="NAME=COMMAND")
    args = parser.parse_args()
    servers = [s.split("=", 1) for s in args.servers]
    env = dict(
        os.environ,
        PIER_LOG="warn",
        PIER_CACHE_DIR=os.path.join(ROOT, "target/bench/pier-cache"),
    )
    port = args.port
    rows = {name: [] for name, _ in servers}
    for round_ in range(1, args.rounds + 1):
        for name, command in servers:
            port += 1
            addr = f"127.0.0.1:{port}"
            server = subprocess.Popen(
                command.format(addr=addr).split(), env=env, stderr=subprocess.DEVNULL
            )
            try:
                time.sleep(1.5)
                wrk(addr, 2)
                before = counters(server.pid)
                requests, wrk_cpu = wrk(addr, args.duration)
                after = counters(server.pid)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            delta = [b - a for a, b in zip(before, after)]
            row = {
                "req/s": requests / args.duration,
                "cpu us/req": delta[0] / requests * 1e6,
                "wrk us/req": wrk_cpu / requests * 1e6,
                "vcs/req": delta[1] / requests,
                "ivcs/req": delta[2] / requests,
                "faults/req": delta[3] / requests,
            }
            rows[name].append(row)
            print(f"round {round_} {name:12s} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()),
                  flush=True)
    print("median over rounds:")
    for name, runs in rows.items():
        print(f"  {name:12s} " + "  ".join(
            f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in runs[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
