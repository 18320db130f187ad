"""`mini status` of a detached Modal run of 10,000 calls, against the emulator.

The run is spawned from this process (its calls wait for a file, two containers at a time); `mini status
RUN` is then timed in a fresh process, as a user types it, three times: while every call is queued or
running, once all have finished but before anyone looked (every outcome is fetched once and stored in the
run folder), and again (everything is answered from the run folder). The RPCs each look made are counted
at the emulator.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.workloads import Sizes

CALLS = 10_000
QUICK_CALLS = 50
GOAL_SECONDS = 5.0
_REPOSITORY = Path(__file__).resolve().parents[1]
_BACKGROUND = {"AppHeartbeat", "AppGetLogs"}


def run(sizes: Sizes) -> dict[str, Any]:
    """Seconds and RPCs of each look, and how long spawning took.

    >>> run(FULL)["looks"]["running"]["seconds"]
    1.9
    """
    from tests.emulator.server import run_emulator

    from mini import ModalApparatus

    calls = QUICK_CALLS if sizes.map_items < 10_000 else CALLS
    with tempfile.TemporaryDirectory(prefix="mini-bench-status-") as folder, run_emulator() as emulator:
        release = Path(folder, "release")
        with emulator.client_environment():
            app = ModalApparatus("bench-status", max_containers=2)
            try:
                started = time.perf_counter()
                run = app.spawn_map(_held(), range(calls), kwargs={"release": str(release)})
                spawn_seconds = time.perf_counter() - started
                try:
                    looks = {"running": _look(run.id, emulator.recorder)}
                    release.touch()
                    finishing = time.perf_counter()
                    _wait_until_finished(run)
                    finish_seconds = time.perf_counter() - finishing
                    looks["finished, first look"] = _look(run.id, emulator.recorder)
                    looks["again"] = _look(run.id, emulator.recorder)
                finally:
                    release.touch()
                    shutil.rmtree(run.folder.path, ignore_errors=True)
            finally:
                app.close()
    return {
        "calls": calls,
        "spawn_s": spawn_seconds,
        "finish_s": finish_seconds,
        "goal_s": GOAL_SECONDS,
        "looks": looks,
    }


def _held() -> Callable[..., int]:
    # Defined in a function so that it is pickled by value: the bench package is not in the image.
    def held(x: int, release: str) -> int:
        import pathlib
        import time

        while not pathlib.Path(release).exists():
            time.sleep(0.05)
        return x

    return held


def _look(run_id: str, recorder: Any) -> dict[str, Any]:
    """`mini status RUN` in a fresh process: its seconds, the RPCs it made, and the counts it printed."""
    command = [str(Path(sys.executable).parent / "mini"), "status", run_id]
    with recorder.counting() as rpcs:
        started = time.perf_counter()
        shown = subprocess.run(command, cwd=_REPOSITORY, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - started
    if shown.returncode != 0:
        raise RuntimeError(f"mini status failed ({shown.returncode}):\n{shown.stderr}")
    return {
        "seconds": seconds,
        "rpcs": {name: count for name, count in sorted(rpcs.items()) if name not in _BACKGROUND},
        "summary": shown.stdout.splitlines()[0],
    }


def _wait_until_finished(run: Any) -> None:
    """Until Modal lists every call of the run as finished, asking only for the listing, so that the next
    look is the first to fetch their outcomes."""
    from mini import _loop
    from mini.modal_backend._invocation import on_client_loop
    from mini.modal_backend.call_index import list_inputs

    function_id = (run.folder.read_json("modal.json") or {})["function_id"]
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        listed = _loop.wait(on_client_loop(list_inputs(function_id, since=run.record.created)))
        if listed and len(listed) == len(run) and all(s.state == "finished" for s in listed.values()):
            return
        time.sleep(1)
    raise RuntimeError("the run's calls did not finish within 30 minutes")
