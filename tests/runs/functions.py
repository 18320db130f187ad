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


def report_steps(x: int, steps: int, release: str | None = None) -> int:
    """Report `step` and `loss` and print a line for each step; with `release`, wait for that file after
    the first step (the test lets it go once it has seen that step from another process)."""
    import mini

    for step in range(steps):
        mini.report(step=step * 10, loss=1.0 / (step + 1 + x))
        print(f"call {x} step {step}", flush=True)
        if step == 0 and release is not None:
            _wait_for(Path(release))
    return x


def report_then_fail_first_time(marker: str) -> str:
    """Report once per attempt; the first attempt then fails."""
    import mini

    path = Path(marker)
    mini.report(first=int(not path.exists()))
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "second attempt"


def report_many(n: int) -> int:
    """Report `n` times in a tight loop."""
    import mini

    for i in range(n):
        mini.report(i=i)
    return n


def print_then_fail(message: str) -> None:
    print("about to fail", flush=True)
    raise ValueError(message)


def report_until_fixed(folder: str) -> str:
    """Report which launch this is (`fixed` once `folder/fixed` exists), then fail until it does."""
    import mini

    fixed = Path(folder, "fixed").exists()
    mini.report(fixed=int(fixed))
    print(f"fixed={int(fixed)}", flush=True)
    if not fixed:
        raise ValueError("not fixed yet")
    return "fixed"
