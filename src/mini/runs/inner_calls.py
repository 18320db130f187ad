"""The calls a detached call makes through an apparatus of its own, as `mini status` and `mini watch` show.

A detached experiment (`mini run EXP --detach`) is one call whose `main(app)` makes many: maps and single
calls, here or on Modal. The process running it listens to `mini.progress` and keeps their counts in the
call's folder (`calls/<index>/inner.json`): rewritten at most every `_INTERVAL`, never further behind
than that, and once at the end.

>>> with recording(folder, 0):        # in the detached call's process (mini.runs._call does this)
...     main(app)
>>> read_inner_calls(folder, 0)       # in any process: InnerCalls(maps=2, done=12, running=4, ...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from mini.progress import Counts, listening

if TYPE_CHECKING:
    from mini.runs.registry import RunFolder

_FILE = "inner.json"
_INTERVAL = 0.25  # seconds between rewrites of the file while calls are under way


@dataclass(frozen=True)
class InnerCalls:
    """The calls made so far, over every map: `maps` counts maps and single calls alike."""

    maps: int = 0
    active: int = 0  # maps not finished yet
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    cached: int = 0  # answered from the result cache, never run
    # A line per running call of the maps under way that said something: (label, its latest metrics, where
    # it runs, for how long, as of the last rewrite); labelled `#3`, or `map 2 #3` when several maps run.
    lines: tuple[tuple[str, str], ...] = ()

    @property
    def made(self) -> int:
        return self.queued + self.running + self.done + self.failed + self.cancelled + self.cached

    def __str__(self) -> str:
        """`12 calls (done 10 · running 2 · queued 0 · failed 0) in 3 maps, 1 under way`."""
        states = ("done", "running", "queued", "failed", "cancelled")
        counts = " · ".join(f"{state} {getattr(self, state)}" for state in states if state != "cancelled")
        if self.cancelled:
            counts += f" · cancelled {self.cancelled}"
        if self.cached:
            counts += f" · cached {self.cached}"
        under_way = f", {self.active} under way" if self.active else ""
        return f"{self.made} calls ({counts}) in {self.maps} map{'s' * (self.maps != 1)}{under_way}"


class _Recorder:
    """A `mini.progress` listener: folds finished maps into totals, so memory stays small however many."""

    def __init__(self, folder: RunFolder, index: int) -> None:
        self._folder = folder
        self._index = index
        self._lock = threading.Lock()
        self._active: dict[int, Counts] = {}
        self._settled = InnerCalls()
        self._written = 0.0
        self._pending: threading.Timer | None = None

    def __call__(self, progress_id: int, counts: Counts) -> None:
        with self._lock:
            if counts.finished:
                self._active.pop(progress_id, None)
                self._settled = _plus(self._settled, counts)
            else:
                self._active[progress_id] = counts
            wait = self._written + _INTERVAL - time.monotonic()
            if wait <= 0:
                self.write()
            elif self._pending is None:  # the latest counts reach the file within _INTERVAL, however quiet
                self._pending = threading.Timer(wait, self._write_pending)
                self._pending.daemon = True
                self._pending.start()

    def _write_pending(self) -> None:
        with self._lock:
            self._pending = None
            self.write()

    def write(self) -> None:
        summary = self._settled
        for counts in self._active.values():
            summary = _plus(summary, counts)
        several = len(self._active) > 1
        lines = tuple(
            (f"map {number} #{index}" if several else f"#{index}", text)
            for number, counts in enumerate(self._active.values(), 1)
            for index, text in counts.calls
        )
        summary = dataclasses.replace(summary, lines=lines)
        with contextlib.suppress(OSError):  # the counts are a view; the call goes on without them
            self._folder.write_call_file(self._index, _FILE, json.dumps(asdict(summary)).encode())
        self._written = time.monotonic()


def _plus(calls: InnerCalls, counts: Counts) -> InnerCalls:
    return InnerCalls(
        maps=calls.maps + 1,
        active=calls.active + (not counts.finished),
        queued=calls.queued + counts.queued,
        running=calls.running + counts.running,
        done=calls.done + counts.done,
        failed=calls.failed + counts.failed,
        cancelled=calls.cancelled + counts.cancelled,
        cached=calls.cached + counts.cached,
    )


@contextlib.contextmanager
def recording(folder: RunFolder, index: int) -> Iterator[None]:
    """Keep the counts of the calls made inside the block in call `index`'s folder."""
    recorder = _Recorder(folder, index)
    try:
        with listening(recorder):
            yield
    finally:
        with recorder._lock:
            if recorder._pending is not None:
                recorder._pending.cancel()
            if recorder._active or recorder._settled.maps:
                recorder.write()


def read_inner_calls(folder: RunFolder, index: int) -> InnerCalls | None:
    """What call `index` of the run has made through an apparatus, or None if it made no call."""
    data = folder.read_call_json(index, _FILE)
    if data is None:
        return None
    lines = tuple((label, text) for label, text in data.pop("lines", ()))
    return InnerCalls(**data, lines=lines)
