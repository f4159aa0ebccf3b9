"""The WASI test suite's runtime adapter for pier (see the suite's doc/adapters.md).

The runner loads this file as a module and asks it for the command line of each test. It
drives the pier binary named by $PIER (default: `pier` on PATH).
"""

import os
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

PIER = shlex.split(os.getenv("PIER", "pier"))


def get_name() -> str:
    return "pier"


def get_version() -> str:
    result = subprocess.run(PIER + ["--version"], encoding="UTF-8",
                            capture_output=True, check=True)
    return result.stdout.split()[-1]


def get_wasi_versions() -> List[str]:
    return ["wasm32-wasip1", "wasm32-wasip3"]


def get_wasi_worlds() -> List[str]:
    return ["wasi:cli/command", "wasi:http/service"]


def get_timeout_seconds() -> float:
    # pier compiles each test once (its compile cache is off here); debug builds take longer.
    return 30.0


def compute_argv(test_path: str,
                 args_env_root: Tuple[List[str], Dict[str, str], Optional[str]],
                 proposals: List[str],
                 wasi_world: str,
                 wasi_version: str) -> List[str]:
    args, env, root = args_env_root
    if wasi_world == "wasi:http/service":
        argv = PIER + ["serve", "--addr", "127.0.0.1:0"]
    else:
        argv = PIER + ["run"]
    argv += ["--no-cache"]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
        # The test servers a guest must reach, and only those: the runner names them in the
        # guest's environment as HTTP_SERVER_<NAME>=HOST:PORT.
        if key.startswith("HTTP_SERVER_"):
            argv += ["--allow-outbound", f"http://{value}"]
    if root:
        remove_symlinks_left_behind(Path(root))
        argv += ["--dir", f"{root}::/"]
    # The sockets tests need the network. Two of them (`sockets-*-properties`, which only make
    # sockets and read their options) have no JSON spec, so no "sockets" proposal: they are
    # known by name.
    sockets = "sockets" in proposals or Path(test_path).name.startswith("sockets-")
    if wasi_version == "wasm32-wasip3" and sockets:
        argv += ["-S", "inherit-network,allow-ip-name-lookup"]
    argv += [test_path]
    argv += args
    return argv


def remove_symlinks_left_behind(root: Path) -> None:
    """Removes the `*.cleanup` symlinks earlier tests made in the shared test directory.

    The filesystem tests make `parent.cleanup` (a symlink to `..`) when they can, and leave it
    for the runner to remove; the runner removes `*.cleanup` files and directories but skips
    symlinks. Where the tests run unprivileged the directory's read-only mode stops them making
    it; as root (CI here) it does not, and the next test would find it there.
    """
    for path in root.glob("**/*.cleanup"):
        if path.is_symlink():
            path.unlink()
