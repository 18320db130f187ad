"""Functions detached calls run in the tests; imported by reference, as a project's own code is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def square(x: int) -> int:
    print(f"squaring {x}", flush=True)
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def fail_on(x: int, bad: tuple[int, ...]) -> int:
    if x in bad:
        raise ValueError(f"bad input {x}")
    return x


def _wait_for(path: Path) -> None:
    # The test controls when this call ends by creating `path`; it never returns on its own.
    while not path.exists():
        time.sleep(0.02)


def wait_for_file(release: str) -> dict[str, int]:
    """Block until `release` exists; say which session and process ran the call."""
    _wait_for(Path(release))
    return {"pid": os.getpid(), "sid": os.getsid(0)}


def start_child_and_wait(pid_file: str, release: str) -> None:
    """Start a grandchild that would run for ten minutes, record its pid, and block."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(pid_file + ".partial").write_text(str(child.pid))
    os.replace(pid_file + ".partial", pid_file)
    _wait_for(Path(release))


def fail_first_time(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "second attempt"


def environment_variable(name: str) -> str | None:
    return os.environ.get(name)


async def async_square(x: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return x * x


def count_to(n: int):
    yield from range(n)


def until_fixed(how: str, folder: str) -> str:
    """Leaves a file for each execution; until `folder/fixed` exists, `how` says what goes wrong: "raise" an
    error, "exit" (its process or container vanishes), "block" (until cancelled); "ok" never fails."""
    import uuid

    Path(folder, f"ran-{how}-{uuid.uuid4().hex}").touch()
    if how == "ok" or Path(folder, "fixed").exists():
        return how
    if how == "raise":
        raise ValueError("not fixed yet")
    if how == "exit":
        os._exit(3)
    _wait_for(Path(folder, "fixed"))
    return how
