"""mini's side of a Modal container: where the events of running inputs go.

A call's reports, printed lines and start (`mini.runtime.EventSink`) are put on a Modal queue, one
partition per function call, by a thread that sends what gathered every `FLUSH_SECONDS`, and at the end of
each input (before its output, so that the caller can hold an output until its events are in). The caller
reads the partition of its map and knows each input by its id.

An input is announced ("started", with where it runs) only once it has run for a flush interval or has
something to say, so that tiny inputs cost no queue traffic.
"""

from __future__ import annotations

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


class ContainerEvents:
    """The event sink of every input of this container (one per container and queue)."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._lock = threading.Lock()
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
        with self._lock:
            for input_id in list(self._running):
                self._announce(input_id)
            pending, self._pending = self._pending, {}
            self._reports.clear()
        for partition, events in pending.items():
            try:
                self._queue.put_many(events, partition=partition)
            except Exception as error:  # reports never fail a call: say so once in the container's log
                print(
                    f"mini: {len(events)} events of this container were lost ({error})", file=sys.__stderr__
                )

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
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
