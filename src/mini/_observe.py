"""What the caller does with the events of running calls (see `mini.dispatch.CallEvent`): where each call
runs, its reports (to `on_report`, in order, and to the live display), its printed lines (shown with the
call's index). One `CallObserver` per map or stream, fed on mini's loop.

Code that wants every report of every map in this process, such as the process driving a detached
experiment, which keeps the reports of the calls its main(app) makes, listens:

    with listening(lambda map_id, report: print(map_id, report.index, report.metrics)):
        app.map(train, configs)
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
from collections.abc import Callable, Iterator
from queue import SimpleQueue

from mini._loop import Signal
from mini.dispatch import CallEvent
from mini.reports import Placement, Report, describe

OnReport = Callable[[Report], None]
Listener = Callable[[int, Report], None]  # (the map's id within this process, one of its reports)

_listeners: list[Listener] = []
_ids = itertools.count()


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Tell `listener` of every report of every map in this process, for the duration of the block.

    It is called on mini's loop, in each call's order: keep it quick and thread-safe.
    """
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class CallObserver:
    """Turns a map's events into `Report`s and lines; `on_report` runs on a thread of its own, so that a
    slow callback delays neither the map nor mini's loop, and sees each call's reports in order."""

    def __init__(self, on_report: OnReport | None) -> None:
        self._id = next(_ids)
        self.placements: dict[int, Placement] = {}
        self.latest: dict[int, Report] = {}  # the last report of each call still running
        self._on_report = on_report
        self._queue: SimpleQueue[Report | Signal | None] | None = None
        self._failure: BaseException | None = None

    def observe(self, event: CallEvent, attempt: int = 1) -> None:
        kind, index = event.kind, event.index
        if kind == "started":
            self.placements[index] = event.data
        elif kind == "report":
            when, metrics, coalesced = event.data
            report = Report(index, metrics, when, attempt, self.placements.get(index), coalesced)
            self.latest[index] = report
            if self._on_report is not None:
                self._deliver(report)
            for listener in list(_listeners):
                listener(self._id, report)
        elif kind == "output":
            stream, text = event.data
            target = sys.stderr if stream == "stderr" else sys.stdout
            print(f"[{index}] {text}", file=target, flush=True)

    def settled(self, index: int) -> None:
        """Call `index` has an outcome: it no longer runs."""
        if self.latest:
            self.latest.pop(index, None)
        if self.placements:
            self.placements.pop(index, None)

    def running(self) -> list[tuple[int, str]]:
        """A line for each running call that said something: its latest metrics, where it runs, how long
        it has run (for the live display)."""
        indices = sorted(set(self.placements) | set(self.latest))
        return [(index, describe(self.latest.get(index), self.placements.get(index))) for index in indices]

    def _deliver(self, report: Report) -> None:
        if self._queue is None:
            self._queue = SimpleQueue()
            threading.Thread(
                target=self._call_back, args=(self._queue,), name="mini-on-report", daemon=True
            ).start()
        self._queue.put(report)

    def _call_back(self, queue: SimpleQueue[Report | Signal | None]) -> None:
        assert self._on_report is not None
        while (item := queue.get()) is not None:
            if isinstance(item, Signal):
                item.set()
            elif self._failure is None:
                try:
                    self._on_report(item)
                except Exception as error:  # raised to the caller with its next results
                    self._failure = error

    async def caught_up(self) -> None:
        """Wait until `on_report` has seen every report so far (a call's reports come before its result);
        raise what `on_report` raised."""
        if self._queue is not None:
            done = Signal()  # a Signal: the map may be driven on the caller's thread
            self._queue.put(done)
            await done
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._queue = None
