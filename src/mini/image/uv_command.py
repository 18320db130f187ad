"""Running the `uv` executable, with errors that say what to do.

out = run_uv(["export", "--frozen"], cwd=project_root)
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mini.image.errors import UvCommandError, UvNotFoundError

_STDERR_TAIL_LINES = 20


def find_uv() -> str:
    """The `uv` executable: the one mini's own `uv` dependency installed, else the first on PATH; raises
    `UvNotFoundError` if neither exists.

    The dependency's binary comes first because PATH often lacks the environment's `bin/` (a notebook
    kernel, an IDE's run configuration, a cron job, `.venv/bin/python script.py`).

        uv = find_uv()   # '/home/me/project/.venv/bin/uv'
    """
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found is None:
        raise UvNotFoundError()
    return found


def run_uv(args: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    """Run `uv *args` and return its stdout; on failure raise `UvCommandError` naming `what` was attempted.

    pins = run_uv(["export", "--frozen"], cwd=root, what="export the locked pins")
    """
    command = [find_uv(), *args]
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise UvCommandError(
            f"uv failed to {what} (exit {completed.returncode}): `uv {' '.join(args)}`\n"
            f"{stderr_tail(completed.stderr)}"
        )
    return completed.stdout


def stderr_tail(stderr: str) -> str:
    """The last lines of a command's stderr, enough to show the cause without flooding the terminal."""
    lines = stderr.strip().splitlines()
    return "\n".join(lines[-_STDERR_TAIL_LINES:])
