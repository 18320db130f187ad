"""mini's side of a Modal container: where the events of running inputs go.

A call's reports, printed lines and start (`mini.runtime.EventSink`) go through a channel, by a thread that
sends what gathered every interval, and at the end of each input (before its output, so that the caller can
hold an output until its events are in). Sends are made one at a time, so a call's events arrive in order.
Two channels, both keyed by function call:
- a map's inputs put them on the session's ephemeral queue (`QueueChannel`), one partition per function
  call; the caller reads the partition of its map and knows each input by its id;
- a detached run's calls write them into the run's named Dict (`RunChannel`), which outlives the launcher,
  where any process on the checkout can read them later (`mini.modal_backend.runs`).

An input is announced ("started", with where it runs) only once it has run for a flush interval or has
something to say, so that tiny inputs cost no queue traffic.
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
from typing import Any

from mini.reports import placement_here

FLUSH_SECONDS = 0.1
_MAX_PENDING_REPORTS = 1000  # per input, before further reports are coalesced into the latest


def _current_input() -> tuple[str | None, str | None]:
    """The input this thread (or task) runs in the container, and its function call (modal's public API)."""
    import modal

    return modal.current_input_id(), modal.current_function_call_id()


def packed(events: list[tuple[str, str, Any]], limit: int = 1 << 19) -> list[bytes]:
    """`events` as pickles of at most about `limit` bytes each (Modal takes items of up to 1 MiB), to be
    read back with `unpacked`. One pickle of many events, not many objects: modal's own serialisation
    calls back into Python for every object it pickles, which for a tight loop of reports costs the call
    more than the reports themselves."""
    blob = pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL)
    if len(blob) <= limit or len(events) == 1:
        return [blob]
    half = len(events) // 2
    return packed(events[:half], limit) + packed(events[half:], limit)


def unpacked(blob: bytes) -> list[Any]:
    """The `(input id, kind, data)` events of one `packed` pickle."""
    events: list[Any] = pickle.loads(blob)
    return events


class QueueChannel:
    """A map's events: on the session's ephemeral queue, one partition per function call, each item a
    `packed` list of events."""

    interval = FLUSH_SECONDS

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def send(self, partition: str, events: list[tuple[str, str, Any]]) -> None:
        self.queue.put_many(packed(events), partition=partition)


class RunChannel:
    """A detached run's events: in the run's named `modal.Dict`, one entry per send under
    `"<function call id>/<n>"`, n counting from 0 with no gap (each writer claims the next free n with
    `put(skip_if_exists=True)`, so a retry in another container carries on after the first attempt's).
    Values are `packed` lists of `(input id, kind, data)` in plain Python types, which need none of mini's
    classes to read.

    Sent every `interval`: a detached call runs for minutes, and each send is one entry its readers fetch.
    """

    interval = 1.0

    def __init__(self, name: str) -> None:
        self.name = name
        self._dict: Any = None
        self._next: dict[str, int] = {}

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.name,)

    def send(self, partition: str, events: list[tuple[str, str, Any]]) -> None:
        import modal

        if self._dict is None:
            # Created if missing: the launcher made it, but a reader may have released it since, before a
            # retry of the run started this call.
            self._dict = modal.Dict.from_name(self.name, create_if_missing=True)
        plain_events = [(input_id, kind, plain(kind, data)) for input_id, kind, data in events]
        for entry in packed(plain_events):
            n = self._next.get(partition, 0)
            while not self._dict.put(f"{partition}/{n}", entry, skip_if_exists=True):
                n += 1
            self._next[partition] = n + 1


def plain(kind: str, data: Any) -> Any:
    """An event's data in plain types: a placement as `(started, host, cpus, [gpus])`."""
    if kind == "started":
        return (data.started, data.host, data.cpus, list(data.gpus))
    return data


class ContainerEvents:
    """The event sink of every input of this container (one per container and channel)."""

    def __init__(self, channel: Any) -> None:
        # A bare modal.Queue is a map's channel.
        self._channel = channel if hasattr(channel, "send") else QueueChannel(channel)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[str, list[tuple[str, str, Any]]] = {}  # partition -> (input, kind, data)
        self._sent: dict[str, int] = {}  # input -> events sent or pending
        self._reports: dict[str, int] = {}
        self._running: dict[str, tuple[str, float]] = {}  # input -> (partition, start)
        self._announced: set[str] = set()
        threading.Thread(target=self._flush_forever, name="mini-events", daemon=True).start()

    # ----- mini.runtime.EventSink ---------------------------------------------------------------------

    def emit(self, index: int | None, kind: str, data: Any) -> None:
        input_id, partition = _current_input()
        if input_id is None or partition is None:
            return
        with self._lock:
            self._announce(input_id)
            if kind == "report":
                pending = self._reports.get(input_id, 0)
                if pending >= _MAX_PENDING_REPORTS and self._coalesce(partition, input_id, data):
                    return
                self._reports[input_id] = pending + 1
            self._add(partition, input_id, kind, data)

    def item(self, index: int | None, data: bytes) -> None:
        raise TypeError("a generator's values travel by Modal's own generator protocol, not as events")

    # ----- the entry's hooks --------------------------------------------------------------------------

    def begin(self) -> None:
        input_id, partition = _current_input()
        if input_id is not None and partition is not None:
            with self._lock:
                self._running[input_id] = (partition, time.time())

    def end(self) -> int:
        """The input that runs in this thread ends: send its events now; return how many it had."""
        input_id, _ = _current_input()
        if input_id is None:
            return 0
        with self._lock:
            self._running.pop(input_id, None)
            self._announced.discard(input_id)
            self._reports.pop(input_id, None)
            count = self._sent.pop(input_id, 0)
        if count:
            self.flush()
        return count

    # ----- sending ------------------------------------------------------------------------------------

    def _add(self, partition: str, input_id: str, kind: str, data: Any) -> None:
        self._pending.setdefault(partition, []).append((input_id, kind, data))
        self._sent[input_id] = self._sent.get(input_id, 0) + 1

    def _announce(self, input_id: str) -> None:
        if input_id not in self._announced and input_id in self._running:
            self._announced.add(input_id)
            partition, started = self._running[input_id]
            placement = placement_here()
            self._add(partition, input_id, "started", type(placement)(started, *_rest(placement)))

    def _coalesce(self, partition: str, input_id: str, data: Any) -> bool:
        events = self._pending.get(partition, [])
        for position in range(len(events) - 1, -1, -1):
            owner, kind, (_, metrics, coalesced) = events[position]
            if owner == input_id and kind == "report":
                events[position] = (owner, kind, (data[0], {**metrics, **data[1]}, coalesced + 1 + data[2]))
                return True
        return False

    def flush(self) -> None:
        # One send at a time, in the order the events were taken: an input's end waits for a send under way.
        with self._send_lock:
            with self._lock:
                for input_id in list(self._running):
                    self._announce(input_id)
                pending, self._pending = self._pending, {}
                self._reports.clear()
            for partition, events in pending.items():
                try:
                    self._channel.send(partition, events)
                except Exception as error:  # reports never fail a call: say so once in the container's log
                    print(
                        f"mini: {len(events)} events of this container were lost ({error})",
                        file=sys.__stderr__,
                    )

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self._channel.interval)
            self.flush()


def _rest(placement: Any) -> tuple[Any, ...]:
    return placement.host, placement.cpus, placement.gpus


class CallOutput:
    """`sys.stdout` or `sys.stderr` in the container: each line an input prints also becomes an event of
    that input (the caller shows it with the input's index); everything still goes to the container's own
    stream, where Modal's logs take it."""

    def __init__(self, name: str, real: Any, events: ContainerEvents) -> None:
        self._name = name
        self._real = real
        self._events = events
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        written = self._real.write(text)
        input_id, _ = _current_input()
        if input_id is None:
            return written
        with self._lock:
            pending = self._partial.pop(input_id, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                self._partial[input_id] = rest
        for line in lines:
            self._events.emit(None, "output", (self._name, line))
        return written

    def end_of_input(self) -> None:
        input_id, _ = _current_input()
        with self._lock:
            rest = self._partial.pop(input_id, "") if input_id is not None else ""
        if rest:
            self._events.emit(None, "output", (self._name, rest))

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
