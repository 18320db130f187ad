"""Launching a settled run's failed, cancelled and lost calls again (`Run.retry`, `mini retry RUN`).

The calls keep their index, arguments and folder; what their last attempt left moves to
`calls/<index>/attempts/<n>/`, so every question about the run (`mini status`, `mini results`) answers for
the latest attempt. They go to the run's own backend, with the settings and options recorded at launch, from
the process that retries: on Modal, a new detached app of the image as the project stands now.

>>> retry_calls(Run.open("20261123-170102-a3f9"))
[1, 4]
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

from mini.project import exclusive_lock
from mini.runs.errors import RunError
from mini.runs.process_identity import identify

if TYPE_CHECKING:
    from mini.runs.handles import Run
    from mini.runs.launcher import Launcher
    from mini.runs.registry import RunFolder, RunRecord

# What a retry launches again. A call whose process or container vanished without an outcome is `failed`.
RETRIED = frozenset({"failed", "cancelled"})


def retry_calls(run: Run[Any]) -> list[int]:
    """Launch again every call of `run` that failed, was cancelled or was lost; the indices launched (none
    when every call succeeded). `RunError` while calls are still pending or running."""
    folder = run.folder
    with exclusive_lock(folder.path / "retry.lock"):  # two retries at once would launch the calls twice
        run.refresh()
        record = run.record
        states = run.states()
        waiting = [call.index for call, state in zip(record.calls, states, strict=True) if not state.settled]
        if waiting:
            named = ", ".join(f"#{index}" for index in waiting[:10])
            raise RunError(
                f"run {run.id} still has {len(waiting)} call(s) pending or running ({named}); retry it once "
                f"they have settled (`mini watch {run.id}`), or stop them first (`mini cancel {run.id}`)."
            )
        todo = [
            call.index for call, state in zip(record.calls, states, strict=True) if state.status in RETRIED
        ]
        if not todo:
            return []
        launcher, close = _launcher(folder, record)
        try:
            _launch_again(run, launcher, todo)
        finally:
            close()
    return todo


def _launch_again(run: Run[Any], launcher: Launcher, todo: list[int]) -> None:
    from mini.serialization import Call

    folder = run.folder
    fn_blob = (folder.path / "function.pkl").read_bytes()
    calls = [Call(index, (folder.call_dir(index) / "payload.pkl").read_bytes()) for index in todo]
    # What the last attempts reported goes aside with them, complete (a backend that buffers events lets
    # go of its buffer once every call's are in).
    run.collect_events()
    for index in todo:
        folder.archive_attempt(index)
    again = set(todo)
    record = run.record
    # Until the backend has taken them, the calls are pending on this process (see `Run.call_state`).
    fresh = [
        dataclasses.replace(call, backend_id=None, attempt=call.attempt + 1) if call.index in again else call
        for call in record.calls
    ]
    record = dataclasses.replace(record, calls=tuple(fresh), launched=None, launcher=identify(os.getpid()))
    folder.write_record(record)
    run.refresh()
    try:
        ids = launcher.launch(folder, fn_blob, calls)
    except BaseException:
        for index in todo:  # whatever did start is stopped; the record says those calls were cancelled
            run[index].cancel()
        raise
    by_index = dict(zip(todo, ids, strict=True))
    with_ids = [
        dataclasses.replace(call, backend_id=by_index[call.index]) if call.index in again else call
        for call in record.calls
    ]
    folder.write_record(dataclasses.replace(record, calls=tuple(with_ids), launched=time.time()))
    run.refresh()


def _launcher(folder: RunFolder, record: RunRecord) -> tuple[Launcher, Any]:
    """The launcher the run was launched with, made again from its record, and what closes it."""
    recipe = record.relaunch
    if not recipe:
        raise RunError(
            f"run {record.id} was launched by a version of mini that did not record how to launch its calls "
            "again; start them anew (app.spawn_map, or `mini run --detach`)."
        )
    if "options_error" in recipe:
        raise RunError(
            f"run {record.id} cannot be retried: its options could not be recorded at launch "
            f"({recipe['options_error']}); start its calls anew from Python."
        )
    from mini import backends
    from mini.serialization import loads

    try:
        options = loads((folder.path / "options.pkl").read_bytes())
    except Exception as error:
        raise RunError(
            f"the options of run {record.id} cannot be read back here ({type(error).__name__}: {error}); "
            "retry it from the checkout and mini version that launched it."
        ) from error
    apparatus = backends.make(recipe["backend"], record.apparatus, **recipe["settings"])
    return apparatus.backend.launcher(record.apparatus, options), apparatus.close
