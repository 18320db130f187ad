"""What a detached call said while it ran (its reports, where it ran, its printed lines), kept with the run.

Each call's events are lines of JSON in `calls/<index>/events.jsonl`, appended and never rewritten:

    {"kind": "started", "time": 1763913662.1, "host": "vm-3", "cpus": 8, "gpus": ["NVIDIA H100"]}
    {"kind": "report", "time": 1763913670.4, "metrics": {"step": 100, "loss": 0.31}, "coalesced": 0}
    {"kind": "output", "stream": "stdout", "text": "epoch 2 ..."}

A detached experiment (`mini run --detach`) is one call whose main(app) makes the calls that report: its
file keeps their reports and starts, each line naming the call it belongs to by its map (numbered in the
order the maps first reported) and its index there (`"map": 1, "index": 3`, `"attempt": 1`).

A local call's own process appends them (`CallEventFile`, its `mini.runtime.EventSink`), so they are kept
whatever happens to the launcher. A backend that buffers them elsewhere (Modal) has its monitor copy them
here (`Monitor.collect_events`), tagging each line with the chunk it came from (`source`, `seq`) and closing
a source with an `end` line once everything it sent is here. A reader follows the file from where it last
stopped (`EventReader`) and folds it into reports, lines and placement (`CallHistory`); a line cut short by
a process killed mid-write is never read.

>>> history = CallHistory(index=0)
>>> history.feed(EventReader(folder.call_dir(0) / EVENTS).read())
>>> [report.metrics for report in history.reports]
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mini.reports import Placement, Report, describe

if TYPE_CHECKING:
    from mini.runs.handles import Run
    from mini.runs.state import CallState

EVENTS = "events.jsonl"
FLUSH_SECONDS = 0.2
# Reports gathered between two writes before further ones are coalesced into the latest (its count kept): a
# tight loop of reports costs the call little and the disk a bounded amount.
MAX_PENDING_REPORTS = 1000
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps with options makes one per call


class CallEventFile:
    """The `mini.runtime.EventSink` of a detached local call: its events, appended to its events file by a
    thread every `FLUSH_SECONDS` and on `close`, so that reporting never waits for the disk.

    >>> events = CallEventFile(folder.call_dir(3) / EVENTS)
    >>> run_call(fn, call, context=CallContext(3, LOCAL, events=events)); events.close()
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._reports = 0
        self._maps: dict[int, int] = {}  # a map's id in this process -> its number in the file
        self._placed: dict[tuple[int, int], Placement] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._flush_forever, name="mini-run-events", daemon=True)
        self._thread.start()

    def emit(self, index: int | None, kind: str, data: Any) -> None:
        event = to_line(kind, data)
        if event is None:
            return
        with self._lock:
            if kind == "report":
                if self._reports >= MAX_PENDING_REPORTS and _coalesce(self._pending, event):
                    return
                self._reports += 1
            self._pending.append(event)

    def item(self, index: int | None, data: bytes) -> None:
        raise TypeError("a detached call is not a generator: its values have nowhere to go")

    def inner_report(self, map_id: int, report: Report) -> None:
        """A report of one of the calls this call makes (a `mini._observe` listener): kept with the call
        it belongs to, after where that call runs when that is new."""
        key = self._maps.setdefault(map_id, len(self._maps) + 1), report.index
        with self._lock:
            if report.placement is not None and self._placed.get(key) != report.placement:
                self._placed[key] = report.placement
                line = to_line("started", report.placement)
                assert line is not None
                self._pending.append({**line, "map": key[0], "index": key[1]})
            event = {
                "kind": "report",
                "map": key[0],
                "index": key[1],
                "time": report.time,
                "metrics": report.metrics,
                "coalesced": report.coalesced,
                "attempt": report.attempt,
            }
            if self._reports >= MAX_PENDING_REPORTS and _coalesce(self._pending, event):
                return
            self._reports += 1
            self._pending.append(event)

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                pending, self._pending = self._pending, []
                self._reports = 0
            if pending:
                try:
                    append(self._path, pending)
                except OSError as error:  # reports never fail a call: say so once in the call's log
                    print(f"mini: {len(pending)} reports of this call were lost ({error})", flush=True)

    def close(self) -> None:
        """Write what is pending and stop the writer thread."""
        self._closed.set()
        self._thread.join()
        self.flush()

    def _flush_forever(self) -> None:
        while not self._closed.wait(FLUSH_SECONDS):
            self.flush()


def to_line(kind: str, data: Any) -> dict[str, Any] | None:
    """The JSON line of one `mini.runtime.EventSink` event (None for a kind a run does not keep)."""
    if kind == "report":
        when, metrics, coalesced = data
        return {"kind": "report", "time": when, "metrics": metrics, "coalesced": coalesced}
    if kind == "started":
        return {
            "kind": "started",
            "time": data.started,
            "host": data.host,
            "cpus": data.cpus,
            "gpus": [*data.gpus],
        }
    if kind == "output":
        stream, text = data
        return {"kind": "output", "stream": stream, "text": text}
    return None


def _coalesce(pending: list[dict[str, Any]], event: dict[str, Any]) -> bool:
    for position in range(len(pending) - 1, -1, -1):
        earlier = pending[position]
        if earlier["kind"] == "report" and _call_of(earlier) == _call_of(event):
            pending[position] = {
                **event,
                "metrics": {**earlier["metrics"], **event["metrics"]},
                "coalesced": earlier["coalesced"] + 1 + event["coalesced"],
            }
            return True
    return False


def _call_of(event: dict[str, Any]) -> tuple[int | None, int | None]:
    return event.get("map"), event.get("index")


def append(path: Path, events: Iterable[dict[str, Any]]) -> None:
    """Append `events` to the events file `path` in one write (O_APPEND: never interleaved with another
    writer's lines)."""
    data = "".join(_ENCODER.encode(event) + "\n" for event in events).encode()
    if not data:
        return
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(handle, data)
    finally:
        os.close(handle)


class EventReader:
    """Follows one events file: each `read` returns the complete lines written since the last one. When the
    file is replaced (`mini retry` moves a call's last attempt aside), `restarted` is set and reading starts
    over from the new file's first line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.restarted = False
        self._offset = 0
        self._inode: int | None = None

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as file:
                inode = os.fstat(file.fileno()).st_ino
                if self._inode is not None and inode != self._inode:
                    self._offset, self.restarted = 0, True
                self._inode = inode
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            if self._inode is not None:  # moved aside, and nothing written since
                self._offset, self._inode, self.restarted = 0, None, True
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a last line still being written waits for the next read
        self._offset += len(complete)
        events = []
        for line in complete.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # cut short by a writer killed mid-line, then appended after: skipped
                continue
        return events


class FollowedCall:
    """One call's `CallHistory`, kept up to date from its events file by `update` (started afresh when the
    file is replaced)."""

    def __init__(self, path: Path, index: int) -> None:
        self._reader = EventReader(path)
        self._index = index
        self.history = CallHistory(index)

    def update(self) -> CallHistory:
        events = self._reader.read()
        if self._reader.restarted:
            self._reader.restarted = False
            self.history = CallHistory(self._index)
        self.history.feed(events)
        return self.history


class CallHistory:
    """One call's events folded into what readers ask for: its reports in order, its printed lines, where
    its latest attempt runs, and the copies a monitor has made of each source (`copied`, `ended`).

    `series` holds the reports by the call that sent them, `(None, index)` for this call's own and
    `(map, index)` for those of the calls a detached experiment's main(app) made."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.reports: list[Report] = []
        self.series: dict[tuple[int | None, int], list[Report]] = {}
        self.lines: list[tuple[str, str]] = []  # (stream, text)
        self.placement: Placement | None = None
        self.attempt = 0  # attempts that have started (each starts with a "started" event)
        self.copied: dict[str, int] = {}  # source -> chunks copied
        self.ended: set[str] = set()
        self._inner_placements: dict[tuple[int, int], Placement] = {}

    @property
    def latest(self) -> Report | None:
        return self.reports[-1] if self.reports else None

    def feed(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            kind = event.get("kind")
            source = event.get("source")
            if source is not None and "seq" in event:
                self.copied[source] = max(self.copied.get(source, 0), event["seq"] + 1)
            inner = (event["map"], event["index"]) if "map" in event else None
            if kind == "report":
                if inner is None:
                    key: tuple[int | None, int] = (None, self.index)
                    report = Report(
                        self.index,
                        event["metrics"],
                        event["time"],
                        max(self.attempt, 1),
                        self.placement,
                        event.get("coalesced", 0),
                    )
                else:
                    key = inner
                    report = Report(
                        inner[1],
                        event["metrics"],
                        event["time"],
                        event.get("attempt", 1),
                        self._inner_placements.get(inner),
                        event.get("coalesced", 0),
                    )
                self.reports.append(report)
                self.series.setdefault(key, []).append(report)
            elif kind == "started":
                placement = Placement(event["time"], event["host"], event["cpus"], tuple(event["gpus"]))
                if inner is None:
                    self.attempt += 1
                    self.placement = placement
                else:
                    self._inner_placements[inner] = placement
            elif kind == "output":
                self.lines.append((event["stream"], event["text"]))
            elif kind == "end" and source is not None:
                self.ended.add(source)


def history(path: Path, index: int) -> CallHistory:
    """Everything in the events file `path` of call `index`, read once."""
    folded = CallHistory(index)
    folded.feed(EventReader(path).read())
    return folded


class RunEvents:
    """Follows what a run's calls say while they run, each call's events file from where it was last read:
    what `mini watch` shows.

    >>> following = RunEvents(run)
    >>> following.running(run.states())      # [("#3", "step=100 loss=0.31 · 8 CPUs · vm · 2m10s")]
    """

    def __init__(self, run: Run[Any]) -> None:
        self._run = run
        self._calls: dict[int, FollowedCall] = {}

    def refresh(self, states: Sequence[CallState]) -> list[tuple[int, CallHistory]]:
        """Bring the calls that have not settled up to date and return them with what they have said; once
        every call has settled, bring them all up to date (their last events), and return none."""
        calls = self._run.record.calls
        running = [call.index for call, state in zip(calls, states, strict=True) if not state.settled]
        wanted = running or [call.index for call in calls]
        self._run.collect_events(wanted)
        followed = []
        for index in wanted:
            if index not in self._calls:
                self._calls[index] = FollowedCall(self._run.folder.events_path(index), index)
            followed.append((index, self._calls[index].update()))
        return followed if running else []

    def running(self, states: Sequence[CallState]) -> list[tuple[str, str]]:
        """A line per running call that has started or reported (`mini.progress.rich_bar`'s `calls`)."""
        return [
            (f"#{index}", describe(history.latest, history.placement))
            for index, history in self.refresh(states)
            if history.latest is not None or history.placement is not None
        ]
