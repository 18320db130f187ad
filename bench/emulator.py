"""The emulator in a process of its own, for sections that measure a client's memory: what the emulator
holds is then not counted in the client's peak RSS.

>>> with emulator_process() as (environment, pid):
...     subprocess.run([sys.executable, "-m", "bench.volumes", "modal", "32"], env=environment)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_REPOSITORY = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def emulator_process() -> Iterator[tuple[dict[str, str], int]]:
    """A running emulator in its own process: the environment that points a client at it, and its pid."""
    emulator = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator"], stdout=subprocess.PIPE, text=True, cwd=_REPOSITORY
    )
    try:
        assert emulator.stdout is not None
        variables: dict[str, str] = {}
        while len(variables) < 4:
            name, _, value = emulator.stdout.readline().removeprefix("export ").strip().partition("=")
            variables[name] = value.strip("'")
        yield {**os.environ, **variables}, emulator.pid
    finally:
        emulator.send_signal(signal.SIGINT)  # it stops the way it documents, removing its files
        emulator.communicate(timeout=60)
