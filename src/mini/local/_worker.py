"""A worker process: `python -m mini.local._worker FD [--isolated]` runs the calls its pool sends over FD.

It imports only the stdlib before it can report, so that a broken environment (an isolated one missing a
dependency) is reported to the parent with its traceback instead of dying silently.

Messages in (from the pool): `("run", batch, key, fn_blob, dropped, env, concurrent, calls)`, and
`("credit", batch, index, n)` (a stream's consumer wants `n` more values). Messages out:
`("ready", version, placement)` once, then `("reply", batch, results, elapsed, events)` per batch and
`("events", events)` for what running calls report, print and yield meanwhile, each event
`(batch, index, kind, data)`. A batch runs on the main thread, one call after another; a batch of a
`concurrent` pool runs in a thread of its own, so that several run at once.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from mini.local import _framing
from mini.local._environ import applied
from mini.local._isolation import explain

_FLUSH_SECONDS = 0.05  # how long a report or a printed line may wait before it is sent
_STREAM_WINDOW = 16  # values a generator may yield ahead of its consumer
_MAX_PENDING_REPORTS = 1000  # per call, before further reports are coalesced into the latest


class _Unloadable:
    """A function that could not be unpickled here; every call to it fails with the same error."""

    def __init__(self, error: bytes) -> None:
        self.error = error


def _die_with_parent() -> None:
    # Linux: if the parent is killed outright, the kernel kills this worker too.
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def main() -> None:
    # `python -m` puts the working directory first on sys.path; workers import only what PYTHONPATH names,
    # so an isolated worker cannot pick up unshipped modules that happen to sit in the directory.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    sock = socket.socket(fileno=int(sys.argv[1]))
    # Ctrl-C reaches the whole foreground process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    # The pool may close its end (it is shutting down, or gone): then there is no one left to answer, and a
    # traceback here would only bury the error the user is reading.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        _serve(sock, isolated="--isolated" in sys.argv[2:])


def _calling(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _explaining(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, with a note on the errors an isolated worker raises because it is not your shell or checkout."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (KeyError, FileNotFoundError) as exc:
            explain(exc)
            raise

    return call


class _Channel:
    """The worker's side of the socket: sends whole messages from any thread, and holds the events of
    running calls until they are sent (every `_FLUSH_SECONDS`, and with each reply, before it).

    A call is announced ("started", with its start time) only once it has run for a flush interval or
    has something to say: a batch of tiny calls costs no event at all.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._events: list[tuple[int, int | None, str, Any]] = []
        self._reports: dict[tuple[int, int | None], int] = {}
        self._running: dict[tuple[int, int | None], float] = {}
        self._announced: set[tuple[int, int | None]] = set()
        self._credit: dict[tuple[int, int | None], int] = {}
        self._credit_changed = threading.Condition(self._lock)
        self._closed = False

    def send(self, message: Any) -> None:
        with self._lock:
            _framing.send(self._sock, message)

    def begin(self, batch: int, index: int | None) -> None:
        with self._lock:
            self._running[(batch, index)] = time.time()

    def end(self, batch: int, index: int | None) -> None:
        key = (batch, index)
        with self._lock:
            del self._running[key]
            self._announced.discard(key)
            self._credit.pop(key, None)

    def reply(self, batch: int, results: list[Any], elapsed: float) -> None:
        with self._lock:
            _framing.send(self._sock, ("reply", batch, results, elapsed, self._take()))

    def emit(self, batch: int, index: int | None, kind: str, data: Any) -> None:
        key = (batch, index)
        with self._lock:
            self._announce(key)
            if kind == "report":
                pending = self._reports.get(key, 0)
                if pending >= _MAX_PENDING_REPORTS:
                    self._coalesce(key, data)
                    return
                self._reports[key] = pending + 1
            self._events.append((batch, index, kind, data))

    def _announce(self, key: tuple[int, int | None]) -> None:
        if key not in self._announced and key in self._running:
            self._announced.add(key)
            self._events.append((*key, "started", self._running[key]))

    def _coalesce(self, key: tuple[int, int | None], data: Any) -> None:
        # The latest values win, merged into this call's last report still waiting to be sent.
        for position in range(len(self._events) - 1, -1, -1):
            batch, index, kind, (_, metrics, coalesced) = self._events[position]
            if kind == "report" and (batch, index) == key:
                merged = (data[0], {**metrics, **data[1]}, coalesced + 1 + data[2])
                self._events[position] = (batch, index, kind, merged)
                return

    def _take(self) -> list[tuple[int, int | None, str, Any]]:
        events, self._events = self._events, []
        self._reports.clear()
        return events

    def flush(self) -> None:
        with self._lock:
            for key in list(self._running):
                self._announce(key)
            if self._events and not self._closed:
                _framing.send(self._sock, ("events", self._take()))

    def item(self, batch: int, index: int | None, data: bytes) -> None:
        key = (batch, index)
        with self._lock:
            while self._credit.setdefault(key, _STREAM_WINDOW) <= 0:
                if self._closed:
                    from mini.runtime import StreamStopped

                    raise StreamStopped
                self._credit_changed.wait()
            self._credit[key] -= 1
            self._announce(key)
            # Values go out at once, after the events that came before them.
            _framing.send(self._sock, ("events", [*self._take(), (batch, index, "item", data)]))

    def give_credit(self, batch: int, index: int | None, count: int) -> None:
        with self._lock:
            key = (batch, index)
            self._credit[key] = self._credit.setdefault(key, _STREAM_WINDOW) + count
            self._credit_changed.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._credit_changed.notify_all()


class _Sink:
    """The `mini.runtime.EventSink` of the calls of one batch."""

    def __init__(self, channel: _Channel, batch: int) -> None:
        self._channel = channel
        self._batch = batch

    def emit(self, index: int | None, kind: str, data: Any) -> None:
        self._channel.emit(self._batch, index, kind, data)

    def item(self, index: int | None, data: bytes) -> None:
        self._channel.item(self._batch, index, data)


class _CallOutput:
    """`sys.stdout` or `sys.stderr` of the worker: a call's lines become events of that call (shown by the
    caller with the call's index), anything printed outside a call goes to the real stream."""

    def __init__(self, name: str, real: Any) -> None:
        self._name = name
        self._real = real
        self._partial: dict[int, str] = {}

    def write(self, text: str) -> int:
        from mini.runtime import current

        context = current()
        if context is None or context.events is None:
            return self._real.write(text)
        key = id(context)
        pending = self._partial.pop(key, "") + text
        *lines, rest = pending.split("\n")
        for line in lines:
            context.events.emit(context.index, "output", (self._name, line))
        if rest:
            self._partial[key] = rest
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def end_of_call(self, context: Any) -> None:
        rest = self._partial.pop(id(context), "")
        if rest and context.events is not None:
            context.events.emit(context.index, "output", (self._name, rest))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _serve(sock: socket.socket, isolated: bool) -> None:
    try:
        from mini.reports import placement_here
        from mini.runtime import LOCAL, CallContext
        from mini.serialization import Call, encode_error, fresh_buffer, loads, run_call
    except BaseException:
        _framing.send(sock, ("failed", traceback.format_exc()))
        sys.exit(1)
    channel = _Channel(sock)
    channel.send(("ready", sys.version_info[:2], placement_here()))
    outputs = [_CallOutput("stdout", sys.stdout), _CallOutput("stderr", sys.stderr)]
    sys.stdout, sys.stderr = outputs
    prepare = _explaining if isolated else _calling
    inbox = _start_reader(sock, channel, fresh_buffer)
    _start_flusher(channel)

    def run_batch(batch: int, fn: Any, env: Any, calls: list[Any]) -> None:
        started = time.perf_counter()
        sink = _Sink(channel, batch)
        results = []
        with applied(env):
            for index, payload, buffers in calls:
                context = CallContext(index, LOCAL, events=sink)
                channel.begin(batch, index)
                outcome = run_call(fn, Call(index, payload, buffers), out_of_band=True, context=context)
                for output in outputs:
                    output.end_of_call(context)
                channel.end(batch, index)
                data = [pickle.PickleBuffer(b) for b in outcome.buffers] if outcome.buffers else ()
                results.append((outcome.index, outcome.ok, outcome.data, data))
        channel.reply(batch, results, time.perf_counter() - started)

    # Which functions stay loaded is the pool's decision alone: it says what to drop and when to resend.
    functions: dict[int, object] = {}
    while (message := inbox.get()) is not None:
        _, batch, key, fn_blob, dropped, env, concurrent, calls = message
        for old in dropped:
            del functions[old]
        if fn_blob is not None:
            try:
                functions[key] = prepare(loads(fn_blob))
            except BaseException as exc:  # e.g. the function's module is not importable here
                functions[key] = _Unloadable(encode_error(exc))
        fn = functions[key]
        if isinstance(fn, _Unloadable):
            channel.reply(batch, [(index, False, fn.error, ()) for index, _, _ in calls], 0.0)
        elif concurrent:
            threading.Thread(target=run_batch, args=(batch, fn, env, calls), daemon=True).start()
        else:
            run_batch(batch, fn, env, calls)


def _start_reader(sock: socket.socket, channel: _Channel, allocate: Any) -> Any:
    """Read the pool's messages in a thread of their own, so that credit reaches a generator while it runs;
    batches go to the returned queue (None once the pool has gone)."""
    import queue

    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def read() -> None:
        try:
            while (message := _framing.receive(sock, allocate)) is not None:
                if message[0] == "credit":
                    channel.give_credit(*message[1:])
                else:
                    inbox.put(message)
        finally:
            channel.close()
            inbox.put(None)

    threading.Thread(target=read, name="mini-worker-reader", daemon=True).start()
    return inbox


def _start_flusher(channel: _Channel) -> None:
    def flush() -> None:
        with contextlib.suppress(OSError):
            while True:
                time.sleep(_FLUSH_SECONDS)
                channel.flush()

    threading.Thread(target=flush, name="mini-worker-events", daemon=True).start()


if __name__ == "__main__":
    main()
