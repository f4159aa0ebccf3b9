#!/usr/bin/env python3
"""Runs the WASI test suite (../shared/wasi-testsuite beside the repository, used in place)
against pier with the suite's own runner, and writes its JSON results.

    conformance/run.py --pier target/debug/pier [--json OUT.json] [--verbose]

The suite's runner is written for Python 3.12; the machines have 3.11. So this script does what
the suite's `run-tests` does (find every test directory, load the adapter, call the runner's
`run_tests`) without its two 3.12-only pathlib calls, and gives 3.11 the one 3.12 behaviour the
runner relies on (`"text" in SomeEnum`, see `enum_membership_by_value`). It makes a virtual
environment for the runner's dependencies (requests, colorama) under target/conformance-venv
on first use.
"""

import argparse
import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SUITE = (REPO / ".." / "shared" / "wasi-testsuite").resolve()
VENV = REPO / "target" / "conformance-venv"


def in_venv() -> None:
    """Re-runs this script inside the runner's virtual environment, made if needed."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r",
                        str(SUITE / "test-runner" / "requirements" / "common.txt")],
                       check=True)
    os.execv(str(python), [str(python), __file__] + sys.argv[1:])


def enum_membership_by_value() -> None:
    """Python 3.12's `value in EnumClass`: true when a member has that value (3.11 raises
    TypeError for a value that is not a member). The runner asks it of a directory name."""
    import enum  # pylint: disable=import-outside-toplevel
    if sys.version_info >= (3, 12):
        return
    members_only = enum.EnumType.__contains__

    def contains(cls, value):  # type: ignore[no-untyped-def]
        if isinstance(value, enum.Enum):
            return members_only(cls, value)
        return value in cls._value2member_map_

    enum.EnumType.__contains__ = contains  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pier", required=True, help="the pier binary")
    parser.add_argument("--json", help="where to write the runner's JSON results")
    parser.add_argument("--verbose", action="store_true")
    options = parser.parse_args()
    if not (SUITE / "tests").is_dir():
        print(f"the WASI test suite is not at {SUITE}", file=sys.stderr)
        return 2
    in_venv()

    enum_membership_by_value()
    os.environ["PIER"] = str(Path(options.pier).resolve())
    sys.path.insert(0, str(SUITE / "test-runner"))
    # pylint: disable=import-outside-toplevel
    from wasi_test_runner.harness import run_tests
    from wasi_test_runner.runtime_adapter import RuntimeAdapter

    test_dirs = sorted(Path(root) for root, _, files in os.walk(SUITE / "tests")
                       if "manifest.json" in files)
    adapter = RuntimeAdapter(str(HERE / "pier_adapter.py"))
    try:
        return run_tests([adapter], test_dirs, expectations=[HERE / "expectations.toml"],
                         color=False, verbose=options.verbose, json_log_file=options.json)
    finally:
        # What the last filesystem test left in the shared suite (see the adapter).
        for path in (SUITE / "tests").glob("**/*.cleanup"):
            if path.is_symlink():
                path.unlink()


if __name__ == "__main__":
    sys.exit(main())
