#!/usr/bin/env python3
"""Hot reload under load: what a reload costs, and that it drops nothing.

An app of two routes: `/` answered by a WAT component that changes at every reload (the hello
example and the echo guest, alternately: a component compiled anew, or taken from the cache the
second time), and `/py/...` by the componentize-py hello (18 MB), which never changes. For
--rounds rounds, pier (release build, its own compile cache, warmed by a first start) is loaded
with `wrk -t2 -c50` on `/` for --duration seconds, once without reloads and once with a SIGHUP
every --every seconds. It prints, per round, the requests per second of both runs and their
ratio, the reloads made, the time each took (from pier's `built in N ms`), whether any component
was compiled during a reload (the Python one must come from the cache), and wrk's errors and
non-2xx answers, which must be zero. JSON goes to bench/results/reload.json.

    cargo build --release -p pier && guests/build.sh python
    python3 bench/reload.py --rounds 3 --duration 10
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIER = os.path.join(ROOT, "target/release/pier")
PYTHON = os.path.join(ROOT, "guests/build/python-hello.wasm")

MANIFEST = """manifest_version = 1
[[route]]
path = "/..."
component = "front"
[[route]]
path = "/py/..."
component = "py"
[component.front]
source = "{front}"
[component.py]
source = "python-hello.wasm"
"""


def start(app, cache, log):
    env = dict(os.environ, PIER_CACHE_DIR=cache, PIER_LOG="info,pier::access=off")
    proc = subprocess.Popen(
        [PIER, "serve", "--addr", "127.0.0.1:0", os.path.join(app, "pier.toml")],
        stdout=subprocess.DEVNULL, stderr=log, env=env,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        with open(log.name) as f:
            m = re.search(r"pier: serving http://(\S+)", f.read())
        if m:
            return proc, m[1]
        if proc.poll() is not None:
            sys.exit(f"pier exited: {open(log.name).read()}")
        time.sleep(0.1)
    sys.exit("pier did not start")


def wrk(addr, seconds):
    out = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{int(seconds)}s", f"http://{addr}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out)[1])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "rps": requests / seconds,
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def deploy(app, front):
    with open(os.path.join(app, "pier.toml.next"), "w") as f:
        f.write(MANIFEST.format(front=front))
    os.replace(os.path.join(app, "pier.toml.next"), os.path.join(app, "pier.toml"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--every", type=float, default=0.5)
    args = parser.parse_args()
    for need in (PIER, PYTHON):
        if not os.path.exists(need):
            sys.exit(f"{need} is missing: cargo build --release -p pier && guests/build.sh python")
    work = tempfile.mkdtemp(prefix="pier-reload-")
    app = os.path.join(work, "app")
    os.mkdir(app)
    shutil.copy(PYTHON, app)
    shutil.copy(os.path.join(ROOT, "examples/hello/hello.wasm"), app)
    subprocess.run(
        ["cargo", "run", "--quiet", "--locked", "-p", "pier-testkit", "--bin", "pier-guest",
         "--", "wat2component", "guests/wat/echo.wat", os.path.join(app, "echo.wasm")],
        cwd=ROOT, check=True,
    )
    cache = os.path.join(work, "cache")
    deploy(app, "hello.wasm")
    # Warm the cache with both versions, as a deploy that has been running would have it.
    for front in ("hello.wasm", "echo.wasm"):
        deploy(app, front)
        with open(os.path.join(work, "warm.log"), "w") as log:
            proc, _ = start(app, cache, log)
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    rounds = []
    for r in range(args.rounds):
        result = {}
        for mode in ("steady", "reloading"):
            deploy(app, "hello.wasm")
            log_path = os.path.join(work, f"{mode}-{r}.log")
            with open(log_path, "w") as log:
                proc, addr = start(app, cache, log)
                time.sleep(1)
                started = time.time()
                out = {}
                t = threading.Thread(target=lambda: out.update(wrk(addr, args.duration)))
                t.start()
                reloads = 0
                if mode == "reloading":
                    while time.time() - started < args.duration - args.every:
                        time.sleep(args.every)
                        reloads += 1
                        deploy(app, "echo.wasm" if reloads % 2 else "hello.wasm")
                        proc.send_signal(signal.SIGHUP)
                t.join()
                time.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            text = open(log_path).read()
            built = [int(ms) for ms in re.findall(r"built in (\d+) ms", text)]
            out["reloads"] = reloads
            out["reloaded"] = len(built)
            out["reload_ms"] = built
            out["reload_failed"] = text.count("reload (")
            out["compiled_during_run"] = len(re.findall(r"compiled in", text))
            result[mode] = out
        steady, reloading = result["steady"], result["reloading"]
        ms = reloading["reload_ms"]
        print(
            f"round {r + 1}: steady {steady['rps']:.0f} req/s, reloading {reloading['rps']:.0f} req/s "
            f"(x{reloading['rps'] / steady['rps']:.2f}); {reloading['reloaded']}/{reloading['reloads']} "
            f"reloads, built in median {statistics.median(ms) if ms else 0:.0f} ms "
            f"(max {max(ms) if ms else 0} ms), components compiled: {reloading['compiled_during_run']}; "
            f"errors {reloading['socket_errors']}, non-2xx {reloading['non2xx']}",
            flush=True,
        )
        rounds.append(result)
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/reload.json"), "w") as f:
        json.dump(rounds, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
