"""`Run` and `Job`: handles on detached calls, re-openable by id from any process on the same checkout.

>>> run = app.spawn_map(train, learning_rates)          # returns at once
>>> run.id                                               # '20261123-170102-a3f9'
>>> Run.open("20261123-170102-a3f9").results()           # later, from any shell or notebook
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from mini.runs.errors import CallCancelled, CallNotFinished, RunNotFound
from mini.runs.monitor import Monitor, load_monitor
from mini.runs.process_identity import is_alive
from mini.runs.registry import CallRecord, RunFolder, RunRecord, open_run
from mini.runs.state import CallState, Status, count_statuses, run_status

if TYPE_CHECKING:
    from mini.reports import Report
    from mini.runs.events import CallHistory

R = TypeVar("R")

_POLL = (0.01, 0.5)  # first and longest pause between looks at a call that has not settled, in seconds


class Run(Generic[R]):
    """The calls of one `spawn_map` (or one `spawn`), in input order.

    >>> run = Run.open("20261123-1701")          # a unique prefix of the id is enough
    >>> run.status(), run.counts()
    ('running', {'pending': 0, 'running': 2, 'done': 6, 'failed': 0, 'cancelled': 0})
    >>> losses = run.results(timeout=3600)
    """

    def __init__(self, folder: RunFolder, record: RunRecord | None = None) -> None:
        self.folder = folder
        self._record = record
        self._monitor: Monitor | None = None

    @classmethod
    def open(cls, run_id: str, project_root: Path | None = None) -> Run[Any]:
        """The run `run_id` of this checkout (found from the working directory unless `project_root`)."""
        return cls(open_run(run_id, _root(project_root)))

    @property
    def id(self) -> str:
        return self.folder.id

    @property
    def record(self) -> RunRecord:
        """What was recorded at launch: backend, function, arguments, git commit, backend ids."""
        if self._record is None or self._record.launched is None:
            self._record = self.folder.record()  # the launcher fills in backend ids once all are taken
        return self._record

    def refresh(self) -> None:
        """Read the record again at the next question (another process may have retried calls)."""
        self._record = None

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.record.function} ×{len(self)}>"

    def __len__(self) -> int:
        return len(self.record.calls)

    def __getitem__(self, index: int) -> Job[R]:
        calls = self.record.calls
        if not -len(calls) <= index < len(calls):
            raise IndexError(f"run {self.id} has {len(calls)} calls; there is no call #{index}")
        return Job(self, calls[index].index)

    def __iter__(self) -> Iterator[Job[R]]:
        return (Job(self, call.index) for call in self.record.calls)

    # ----- state -------------------------------------------------------------------------------------

    def monitor(self) -> Monitor:
        if self._monitor is None:
            self._monitor = load_monitor(self.record.monitor, self.record.backend)
        return self._monitor

    def call_state(self, index: int) -> CallState:
        """Where call `index` stands: an outcome stored here wins, then a cancel, then the backend's word."""
        self._check_folder()
        known = self._known_state(index)
        if known is not None:
            return known
        return self._checked(index, self.monitor().state(self.folder, self.record.calls[index]))

    def states(self) -> list[CallState]:
        """Every call's state, in input order; the backend is asked once about all the unsettled ones."""
        self._check_folder()
        calls = self.record.calls
        known = [self._known_state(call.index) for call in calls]
        unsettled = [call for call, state in zip(calls, known, strict=True) if state is None]
        asked = iter(self.monitor().states(self.folder, unsettled) if unsettled else ())
        return [
            state if state is not None else self._checked(call.index, next(asked))
            for call, state in zip(calls, known, strict=True)
        ]

    def _check_folder(self) -> None:
        if not self.folder.path.is_dir():
            raise RunNotFound(f"run {self.id} was deleted from {self.folder.path.parent} while in use.")

    def _known_state(self, index: int) -> CallState | None:
        """What the run folder says of call `index`: its stored outcome, or its cancel; None otherwise."""
        settled = _stored_state(self.folder, index)
        if settled is not None:
            return settled
        cancelled = self.folder.cancelled_at(index)
        if cancelled is not None:
            return CallState("cancelled", finished=cancelled)
        return None

    def _checked(self, index: int, state: CallState) -> CallState:
        """The backend's word on call `index`, checked against the run folder and the launcher."""
        if state.status == "failed":  # it may have stored its outcome just as it ended
            return _stored_state(self.folder, index) or state
        if state.status == "pending" and self.record.launched is None and not _launcher_alive(self.record):
            return CallState("failed", "the launching process ended before it handed this call over")
        return state

    def status(self) -> Status:
        """`pending`, `running`, `done`, `failed` (some call failed) or `cancelled`."""
        return run_status(self.states())

    def counts(self) -> dict[str, int]:
        return count_statuses(self.states())

    # ----- results and control -----------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> list[CallState]:
        """Wait until every call has settled; `CallNotFinished` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _POLL[0]
        while True:  # the whole run at each look: one request for all its calls where the backend can
            states = self.states()
            waiting = next((index for index, state in enumerate(states) if not state.settled), None)
            if waiting is None:
                return states
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _not_finished(self[waiting], states[waiting])
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 1.5, _POLL[1])

    def results(self, timeout: float | None = None, return_exceptions: bool = False) -> list[R]:
        """Every call's result in input order, waiting for them; the first failure raises (with its
        remote traceback) unless `return_exceptions`, which puts exceptions in their place."""
        self.wait(timeout)
        values: list[Any] = []
        for job in self:
            try:
                values.append(job.result(timeout=0))
            except Exception as exc:
                if not return_exceptions:
                    raise
                values.append(exc)
        return values

    def cancel(self) -> int:
        """Cancel every call that has not settled; returns how many were cancelled."""
        return sum(job.cancel() for job in self)

    def retry(self) -> list[Job[R]]:
        """Launch again, on the run's own backend and options, every call that failed, was cancelled or was
        lost (its process or container vanished), with its original arguments; finished calls are left
        alone. Returns the calls launched again (none if every call succeeded). Needs every call settled.

        >>> run = Run.open("20261123-1701")
        >>> [job.index for job in run.retry()]       # `mini retry 20261123-1701` from a shell
        [3, 7]
        >>> run.results()                            # each call's latest attempt
        """
        from mini.runs.retry import retry_calls

        return [Job(self, index) for index in retry_calls(self)]

    # ----- what the calls said -----------------------------------------------------------------------

    def reports(self, index: int | None = None) -> list[Report]:
        """What the calls reported with `mini.report`, so far: call `index`'s reports, or every call's (call
        by call, in input order), each call's in the order it sent them.

        >>> losses = [r.metrics["loss"] for r in Run.open(run_id).reports(0) if "loss" in r.metrics]
        """
        return [report for history in self.histories(index) for report in history.reports]

    def histories(self, index: int | None = None) -> list[CallHistory]:
        """Everything call `index` (or each call) has said so far, as `mini.runs.events.CallHistory`: its
        reports, its printed lines where the backend keeps them as events (Modal), where it last started."""
        from mini.runs.events import history

        indices = [call.index for call in self.record.calls] if index is None else [self[index].index]
        self.collect_events(indices)
        return [history(self.folder.events_path(i), i) for i in indices]

    def collect_events(self, indices: int | Iterable[int] | None = None) -> None:
        """Bring the events of call `indices` (one, several, or every call) into the run folder from
        wherever the backend keeps them until then; nothing to do on the local backend, whose calls write
        them there."""
        calls = self.record.calls
        if indices is not None:
            chosen = [indices] if isinstance(indices, int) else indices
            calls = tuple(calls[self[i].index] for i in chosen)
        self.monitor().collect_events(self.folder, calls)


class Job(Generic[R]):
    """One detached call, like a `concurrent.futures.Future` that survives the process that made it.

    >>> job = app.spawn(train, lr=1e-3)
    >>> job.id                                     # '20261123-170102-a3f9/0'
    >>> Job.open(job.id).result(timeout=600)
    """

    def __init__(self, run: Run[R], index: int) -> None:
        self.run = run
        self.index = index

    @classmethod
    def open(cls, job_id: str, project_root: Path | None = None) -> Job[Any]:
        """The call `RUN/INDEX`; plain `RUN` names the call of a single-call run (a `spawn`)."""
        run_id, _, index = job_id.partition("/")
        run = Run.open(run_id, project_root)
        if index:
            if not index.isdigit():
                raise RunNotFound(f"{job_id!r} is not a call id: use RUN/INDEX, e.g. {run.id}/0")
            return run[int(index)]
        if len(run) != 1:
            raise RunNotFound(f"run {run.id} has {len(run)} calls: name one as {run.id}/INDEX.")
        return run[0]

    @property
    def id(self) -> str:
        return f"{self.run.id}/{self.index}"

    @property
    def record(self) -> CallRecord:
        return self.run.record.calls[self.index]

    @property
    def attempt(self) -> int:
        """How many times this call has been launched: 1, plus one per retry that included it."""
        return self.record.attempt

    @property
    def backend_id(self) -> str | None:
        """The backend's id for this call (a Modal function-call id, a local pid once it started)."""
        return self.run.monitor().backend_id(self.run.folder, self.record)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status()}>"

    def state(self) -> CallState:
        return self.run.call_state(self.index)

    def status(self) -> Status:
        """`pending`, `running`, `done`, `failed` or `cancelled`."""
        return self.state().status

    def result(self, timeout: float | None = None) -> R:
        """The call's result, waiting for it; raises what the call raised, with its remote traceback.

        `CallNotFinished` if it has not settled within `timeout` seconds (`timeout=0`: do not wait);
        `CallCancelled` if it was cancelled.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        state = _wait(self, deadline)
        if state.status == "cancelled":
            raise CallCancelled(f"call {self.id} was cancelled before it produced a result.")
        folder = self.run.folder
        if folder.outcome_summary(self.index) is None:
            raise self.run.monitor().failure(folder, self.record, state)
        from mini.serialization import decode_result

        return decode_result(folder.load_outcome(self.index))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the call raised (None if it succeeded), waiting for it like `result`."""
        try:
            self.result(timeout)
        except CallNotFinished:
            raise
        except Exception as exc:
            return exc
        return None

    def cancel(self) -> bool:
        """Stop the call if it has not settled; False if it had already finished."""
        if self.state().settled:
            return False
        folder = self.run.folder
        # Mark first: a call still waiting to start reads the mark and never runs.
        folder.mark_cancelled(self.index)
        self.run.monitor().cancel(folder, self.record)
        return True

    def logs(self) -> str:
        """What the call has printed so far."""
        return self.run.monitor().logs(self.run.folder, self.record)

    def reports(self) -> list[Report]:
        """What the call has reported so far (`Run.reports`)."""
        return self.run.reports(self.index)


def _wait(job: Job[Any], deadline: float | None) -> CallState:
    pause = _POLL[0]
    while True:
        state = job.state()
        if state.settled:
            return state
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise _not_finished(job, state)
        time.sleep(pause if remaining is None else min(pause, remaining))
        pause = min(pause * 1.5, _POLL[1])


def _not_finished(job: Job[Any], state: CallState) -> CallNotFinished:
    return CallNotFinished(
        f"call {job.id} is still {state.status}{f' ({state.detail})' if state.detail else ''}; "
        "ask again later, or wait with result(timeout=None)."
    )


def _stored_state(folder: RunFolder, index: int) -> CallState | None:
    summary = folder.outcome_summary(index)
    if summary is None:
        return None
    started = folder.read_call_json(index, "started.json")
    return CallState(
        "done" if summary["ok"] else "failed",
        summary.get("error") or "",
        started=started["started"] if started else None,
        finished=summary.get("finished"),
    )


def _launcher_alive(record: RunRecord) -> bool:
    return bool(record.launcher) and is_alive(record.launcher)


def _root(project_root: Path | None) -> Path:
    if project_root is not None:
        return project_root.resolve()
    from mini.project import find_project_root

    return find_project_root()
