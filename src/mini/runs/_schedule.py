"""A local run's scheduler: `python -m mini.runs._schedule RUN_FOLDER WORKERS TIMEOUT RETRIES INDICES`.

It leads its own session, so it outlives the launcher, and starts each call named in INDICES (comma-separated:
every call of a new run, or those `mini retry` launches again) as
`python -m mini.runs._call` in a session of its own, keeping at most WORKERS running. It records each
call's process as it starts it and reaps the calls as they end, then exits. Calls it has started do not
depend on it; calls it had not started yet are reported failed if it dies (see `LocalMonitor`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from mini.runs.process_identity import identify
from mini.runs.registry import RunFolder


def _start(folder: RunFolder, index: int, timeout: str, retries: str) -> int:
    with folder.log_path(index).open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "mini.runs._call", str(folder.path), str(index), timeout, retries],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    folder.write_call_file(index, "process.json", json.dumps(identify(child.pid)).encode())
    child.returncode = 0  # reaped below with os.waitpid; stops Popen from trying again
    return child.pid


def main(argv: list[str]) -> int:
    folder, workers, timeout, retries = RunFolder(Path(argv[0])), int(argv[1]), argv[2], argv[3]
    queue = deque(int(index) for index in argv[4].split(",") if index)
    running: set[int] = set()
    while queue or running:
        while queue and len(running) < workers:
            index = queue.popleft()
            if folder.cancelled_at(index) is None:
                running.add(_start(folder, index, timeout, retries))
        if running:
            pid, _ = os.waitpid(-1, 0)
            running.discard(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
