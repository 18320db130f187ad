"""What a backend implements for detached runs: a `Launcher` to start calls, a `Monitor` to watch them.

The two halves are separate because they run in different processes: the launcher lives in the process
that called `spawn`, with an apparatus and its options; the monitor is loaded later, in any process on
the same checkout, from nothing but the run record (whose `monitor` field names its class). Everything
else (the registry, handles, waiting, the CLI) is written once, in `mini.runs`.

A backend plugs in with
    class ModalLauncher(Launcher):
        backend = "modal"
        monitor = "mini.modal_backend.runs:ModalMonitor"
        def launch(self, run, fn_blob, calls): ...        # spawn in a detached app; return call ids
    class ModalMonitor(Monitor): ...                       # state/cancel/logs from those ids
and `Apparatus._detached_launcher` returning a `ModalLauncher`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mini.runs.errors import RunError

if TYPE_CHECKING:
    from mini.runs.registry import CallRecord, RunFolder
    from mini.runs.state import CallState
    from mini.serialization import Call


class Launcher(ABC):
    """Starts calls that outlive the launching process. One per `spawn`/`spawn_map`."""

    backend: ClassVar[str]
    monitor: ClassVar[str]  # "module:Class" of the matching Monitor, stored in each run record

    @abstractmethod
    def launch(self, run: RunFolder, fn_blob: bytes, calls: Sequence[Call]) -> list[str | None]:
        """Start every call detached and return at once with each call's backend id, in order (None for
        an id the backend assigns only when the call starts; `Monitor.backend_id` then reports it).

        `run` already holds `function.pkl` and each call's `payload.pkl`. Raise before starting anything
        if the calls cannot be started (bad options, no credentials), so no half-launched run is left.
        """

    def settings(self) -> dict[str, Any]:
        """What to record about how the calls run (workers, GPU, ...): JSON-serialisable."""
        return {}

    def image_hash(self) -> str | None:
        """The content hash of the image the calls run in, or None when there is no image (local)."""
        return None


class Monitor(ABC):
    """Answers for calls of a recorded run, from any process: never builds, deploys or creates anything.

    The shared code asks a monitor only about calls with no outcome stored in the run folder yet. A
    monitor that learns a call has finished should store its outcome there (`RunFolder.store_outcome`),
    so the answer survives the backend forgetting it.
    """

    @abstractmethod
    def state(self, run: RunFolder, call: CallRecord) -> CallState:
        """Where `call` stands now (quick: a file read or one status request)."""

    @abstractmethod
    def cancel(self, run: RunFolder, call: CallRecord) -> None:
        """Stop `call` if it has not settled; the shared code has already marked it cancelled."""

    @abstractmethod
    def logs(self, run: RunFolder, call: CallRecord) -> str:
        """What `call` printed so far (stdout and stderr)."""

    def backend_id(self, run: RunFolder, call: CallRecord) -> str | None:
        """The backend's id for `call`; override where ids are assigned as calls start (local pids)."""
        return call.backend_id

    def failure(self, run: RunFolder, call: CallRecord, state: CallState) -> BaseException:
        """The exception to raise for a call that failed without storing an outcome."""
        from mini.errors import WorkerCrashed

        return WorkerCrashed(f"call #{call.index} of run {run.id} failed: {state.detail}")


def load_monitor(where: str, backend: str) -> Monitor:
    """The monitor named in a run record, e.g. `mini.runs.local_launcher:LocalMonitor`."""
    module_name, _, class_name = where.partition(":")
    if not module_name.startswith("mini."):
        raise RunError(f"the run record names a monitor outside mini ({where!r}); the record is damaged.")
    try:
        monitor_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise RunError(
            f"this run was launched on the {backend} backend, whose monitor ({where}) cannot be loaded "
            f"here ({error}). Use the mini version that launched it."
        ) from error
    return monitor_class()
