"""What a backend implements to watch its detached calls from any process: a `Monitor`.

Loaded from nothing but the run record, whose `monitor` field names its class (`load_monitor`).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mini.runs.errors import RunError

if TYPE_CHECKING:
    from mini.runs.registry import CallRecord, RunFolder
    from mini.runs.state import CallState


class Monitor(ABC):
    """Answers for calls of a recorded run, from any process: never builds, deploys or creates anything.

    The shared code asks a monitor only about calls with no outcome stored in the run folder yet. A
    monitor that learns a call has finished should store its outcome there (`RunFolder.store_outcome`),
    so the answer survives the backend forgetting it.
    """

    @abstractmethod
    def state(self, run: RunFolder, call: CallRecord) -> CallState:
        """Where `call` stands now (quick: a file read or one status request)."""

    def states(self, run: RunFolder, calls: Sequence[CallRecord]) -> list[CallState]:
        """Where each of `calls` stands now, in their order. A backend that can answer for many calls in
        one request overrides this; `mini status` of a large run asks it once."""
        return [self.state(run, call) for call in calls]

    @abstractmethod
    def cancel(self, run: RunFolder, call: CallRecord) -> None:
        """Stop `call` if it has not settled; the shared code has already marked it cancelled."""

    @abstractmethod
    def logs(self, run: RunFolder, call: CallRecord) -> str:
        """What `call` printed so far (stdout and stderr)."""

    def collect_events(self, run: RunFolder, calls: Sequence[CallRecord]) -> None:  # noqa: B027
        """Bring what `calls` reported and printed into their events files (`mini.runs.events`) from
        wherever the backend buffers them, before a reader reads those files. Nothing to do for a backend
        whose calls write there themselves (the local one). Asked about every call of the run once all have
        settled, a backend may release its buffer."""

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
