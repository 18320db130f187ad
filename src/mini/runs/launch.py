"""Recording and starting a detached run; what `Apparatus.spawn` and `spawn_map` do.

The whole run is written down before any call starts (function, every call's arguments, the record), so
whatever happens to this process afterwards, the registry knows what was asked for.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mini._maprun import check_runnable
from mini.runs.handles import Run
from mini.runs.process_identity import identify
from mini.runs.provenance import function_name, git_state, summarise_arguments
from mini.runs.registry import CallRecord, RunFolder, RunRecord, new_run_folder, note_launch

if TYPE_CHECKING:
    from mini.runs.launcher import Launcher

R = TypeVar("R")


def launch(
    launcher: Launcher,
    apparatus: str,
    fn: Callable[..., R],
    arg_tuples: Iterable[Iterable[Any]],
    kwargs: Mapping[str, Any] | None,
    *,
    kind: str,
    label: str | None = None,
    backend: str | None = None,
    settings: Mapping[str, Any] | None = None,
    project_root: Path | None = None,
) -> Run[R]:
    """Record a run of `fn` over `arg_tuples` (for the apparatus named `apparatus`) and start its calls
    detached with `launcher`.

    >>> run = launch(launcher, "sweep", train, [(1e-3,), (1e-4,)], {"steps": 100}, kind="spawn_map")

    `label` replaces the function's name in the record (the CLI records `experiment.sweep:main`, not the
    wrapper that runs it); `backend` and `settings` replace the launcher's, for a run whose calls only drive
    work elsewhere (a detached experiment on Modal is driven from a local process: a Modal run).
    """
    from mini.project import find_project_root
    from mini.serialization import ArgumentEncoder, dump_function

    check_runnable(fn)
    root = (project_root or find_project_root()).resolve()
    shared = dict(kwargs or {})
    fn_blob = dump_function(fn)
    encoder = ArgumentEncoder(fn)
    inputs = [tuple(args) for args in arg_tuples]
    calls = [encoder.encode(index, args, shared) for index, args in enumerate(inputs)]
    commit, dirty = git_state(root)

    folder = new_run_folder(root)
    # Plain writes: nothing reads these files before the record below exists, and they never change.
    (folder.path / "function.pkl").write_bytes(fn_blob)
    relaunch = _record_relaunch(launcher, folder)
    for call in calls:
        folder.call_dir(call.index).mkdir()
        (folder.call_dir(call.index) / "payload.pkl").write_bytes(call.payload)
    record = RunRecord(
        id=folder.id,
        kind=kind,
        backend=backend or launcher.backend,
        apparatus=apparatus,
        function=label or function_name(fn),
        monitor=launcher.monitor,
        created=time.time(),
        project_root=str(root),
        image_hash=launcher.image_hash(),
        git_commit=commit,
        git_dirty=dirty,
        calls=tuple(CallRecord(i, summarise_arguments(fn, args, shared)) for i, args in enumerate(inputs)),
        settings=dict(settings) if settings is not None else launcher.settings(),
        launcher=identify(os.getpid()),
        relaunch=relaunch,
    )
    folder.write_record(record)
    note_launch(folder.id, root)
    run: Run[R] = Run(folder, record)
    try:
        ids = launcher.launch(folder, fn_blob, calls)
    except BaseException:
        run.cancel()  # whatever did start is stopped; the record says the run was cancelled
        raise
    with_ids = (dataclasses.replace(call, backend_id=i) for call, i in zip(record.calls, ids, strict=True))
    record = dataclasses.replace(record, calls=tuple(with_ids), launched=time.time())
    folder.write_record(record)
    return Run(folder, record)


def _record_relaunch(launcher: Launcher, folder: RunFolder) -> dict[str, Any]:
    """What `mini retry` needs to launch calls of this run again: the backend and its settings in the record,
    the options beside it (pickled: they may hold objects, such as a Modal image). Empty if the launcher
    cannot be made again or its options cannot be pickled; the retry then says so."""
    recipe = launcher.relaunch()
    if recipe is None:
        return {}
    settings, options = recipe
    from mini.options import Options
    from mini.serialization import dumps

    try:
        blob = dumps(Options(**options.where_calls_run()))  # the caller's own options play no part
    except Exception as error:  # e.g. a secret object that cannot be pickled
        return {"backend": launcher.backend, "settings": settings, "options_error": str(error)}
    (folder.path / "options.pkl").write_bytes(blob)
    return {"backend": launcher.backend, "settings": settings}
