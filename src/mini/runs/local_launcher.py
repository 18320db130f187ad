"""Detached runs on this machine: each call in its own process and session, outliving the launcher.

The call process (`mini.runs._call`) writes its outcome into the run folder itself, so the monitor only
reads files and checks whether recorded processes are still alive: a call whose process is gone without
an outcome has failed, whatever killed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mini.runs.launcher import Launcher, Monitor
from mini.runs.processes import identify, is_alive
from mini.runs.state import CallState

if TYPE_CHECKING:
    from mini.local.processes import WorkerCommand
    from mini.options import Options
    from mini.runs.registry import CallRecord, RunFolder
    from mini.serialization import Call

# Call processes this process started and has not reaped yet; reaped on the next launch.
_children: list[subprocess.Popen[bytes]] = []


class LocalLauncher(Launcher):
    """Starts each call as `python -m mini.runs._call` in a new session, at most `workers` running at once.

    >>> launcher = LocalLauncher(WorkerCommand(), workers=2, options=Options(timeout=600))
    """

    backend = "local"
    monitor = "mini.runs.local_launcher:LocalMonitor"

    def __init__(self, command: WorkerCommand, workers: int, options: Options, mode: str = "process") -> None:
        self._command = command
        self._workers = workers
        self._options = options
        self._mode = mode

    def settings(self) -> dict[str, Any]:
        options = self._options
        return {
            "workers": self._workers,
            "mode": self._mode,
            "timeout": options.timeout,
            "retries": options.retries,
        }

    def launch(self, run: RunFolder, fn_blob: bytes, calls: Sequence[Call]) -> list[str]:
        _children[:] = [child for child in _children if child.poll() is None]
        env = self._command.environment()
        env.update(self._options.env or {})
        env["PYTHONUNBUFFERED"] = "1"  # so `mini logs` shows output as it is printed
        timeout = "-" if self._options.timeout is None else repr(self._options.timeout)
        retries = str(self._options.retries or 0)
        ids = []
        for call in calls:
            with run.log_path(call.index).open("ab") as log:
                child = subprocess.Popen(
                    [self._command.python, "-m", "mini.runs._call", str(run.path), str(call.index)]
                    + [str(self._workers), timeout, retries],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            _children.append(child)
            run.write_call_file(call.index, "process.json", json.dumps(identify(child.pid)).encode())
            ids.append(str(child.pid))
        return ids


class LocalMonitor(Monitor):
    """Reads a local run's files and checks its processes; never starts anything."""

    def state(self, run: RunFolder, call: CallRecord) -> CallState:
        process = run.read_call_json(call.index, "process.json")
        started = run.read_call_json(call.index, "started.json")
        started_at = started["started"] if started else None
        if process is None:
            return CallState("pending", "being launched")
        if is_alive(process):
            if started is None:
                return CallState("pending", "waiting for a free worker slot")
            return CallState("running", started=started_at)
        return CallState(
            "failed",
            f"its process (pid {process['pid']}) ended without storing a result: it was killed "
            "(by a signal, the OOM killer or a reboot) or exited abruptly. `mini logs` shows its output.",
            started=started_at,
        )

    def cancel(self, run: RunFolder, call: CallRecord) -> None:
        process = run.read_call_json(call.index, "process.json")
        if process is not None and is_alive(process):
            # The call leads its own session and process group: this ends it and whatever it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(process["pid"]), signal.SIGKILL)

    def logs(self, run: RunFolder, call: CallRecord) -> str:
        try:
            return run.log_path(call.index).read_text(errors="replace")
        except FileNotFoundError:
            return ""
