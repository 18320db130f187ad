"""Detached runs on this machine: each call in its own process and session, outliving the launcher.

A run's scheduler process starts the calls (at most `workers` at once) and records their processes; each
call process (`mini.runs._call`) writes its outcome into the run folder itself. So the monitor only reads
files and checks whether recorded processes are still alive: a call whose process is gone without an
outcome has failed, whatever killed it, and so has a queued call whose scheduler is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mini.runs.launcher import Launcher
from mini.runs.monitor import Monitor
from mini.runs.process_identity import identify, is_alive
from mini.runs.state import CallState

if TYPE_CHECKING:
    from mini.local.processes import WorkerCommand
    from mini.options import Options
    from mini.runs.registry import CallRecord, RunFolder
    from mini.serialization import Call

_SCHEDULER = "scheduler.json"

# Schedulers this process started and has not reaped yet; reaped on the next launch.
_children: list[subprocess.Popen[bytes]] = []


class LocalLauncher(Launcher):
    """Starts a run's scheduler (`mini.runs._schedule`) in a new session; it starts each call in a session
    of its own, at most `workers` at once.

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
        timeout, retries = self._options.timeout, self._options.retries
        return {"workers": self._workers, "mode": self._mode, "timeout": timeout, "retries": retries}

    def relaunch(self) -> tuple[dict[str, Any], Options]:
        return {"workers": self._workers, "mode": self._mode}, self._options

    def launch(self, run: RunFolder, fn_blob: bytes, calls: Sequence[Call]) -> list[str | None]:
        _children[:] = [child for child in _children if child.poll() is None]
        env = self._command.environment()
        env.update(self._options.env or {})
        env["PYTHONUNBUFFERED"] = "1"  # so `mini logs` shows output as it is printed
        timeout = "-" if self._options.timeout is None else repr(self._options.timeout)
        with (run.path / "scheduler.log").open("ab") as log:
            scheduler = subprocess.Popen(
                [self._command.python, "-m", "mini.runs._schedule", str(run.path), str(self._workers)]
                + [timeout, str(self._options.retries or 0), ",".join(str(call.index) for call in calls)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _children.append(scheduler)
        run.write_file(_SCHEDULER, json.dumps(identify(scheduler.pid)).encode())
        return [None] * len(calls)  # a call's id is its pid: see LocalMonitor.backend_id


class LocalMonitor(Monitor):
    """Reads a local run's files and checks its processes; never starts anything."""

    def state(self, run: RunFolder, call: CallRecord) -> CallState:
        process = run.read_call_json(call.index, "process.json")
        if process is None:
            scheduler = run.read_json(_SCHEDULER)
            if scheduler is None:
                return CallState("pending", "being launched")
            if is_alive(scheduler):
                return CallState("pending", "queued for a free worker")
            return CallState(
                "failed",
                f"the run's scheduler (pid {scheduler['pid']}) ended before starting this call: it was "
                f"killed, or the machine restarted. Its log: {run.path / 'scheduler.log'}",
            )
        pid = str(process["pid"])
        started = run.read_call_json(call.index, "started.json")
        started_at = started["started"] if started else None
        if is_alive(process):
            return CallState("running", started=started_at)
        detail = (
            f"its process (pid {pid}) ended without storing a result: it was killed (by a signal, the "
            "OOM killer or a reboot) or exited abruptly. `mini logs` shows its output."
        )
        record = run.record()
        if record.kind == "experiment" and record.settings.get("mode") == "thread":
            detail += (
                " In thread mode a call that ends its process (os._exit, a segfault) ends main(app) with "
                "it: run it with --mode process, where such a call fails alone with WorkerCrashed."
            )
        return CallState("failed", detail, started=started_at)

    def backend_id(self, run: RunFolder, call: CallRecord) -> str | None:
        process = run.read_call_json(call.index, "process.json")
        return None if process is None else str(process["pid"])

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
