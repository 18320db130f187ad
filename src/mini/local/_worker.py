"""A worker process: `python -m mini.local._worker FD [--isolated]` runs the calls its pool sends over FD.

It imports only the stdlib before it can report, so that a broken environment (an isolated one missing a
dependency) is reported to the parent with its traceback instead of dying silently.

Messages in (from the pool): `("run", batch, key, fn_blob, dropped, env, concurrent, calls, released,
retired)`, `("credit", batch, index, n)` (a stream's consumer wants `n` more values) and
`("segments", announced)` (shared-memory segments, their descriptors attached). Messages out:
`("ready", version, placement, shared)` once, then `("reply", batch, results, elapsed, events, released,
retired)` per batch (after a `("segments", announced)` of its own when results need new segments) and
`("events", events)` for what running calls report, print and yield meanwhile, each event
`(batch, index, kind, data)`. A buffer in `calls` or `results` is either in the message or a descriptor
of its place in shared memory; `released` and `retired` say which of the other side's segments this side
no longer uses or has closed (see `mini.local._shared_memory`).

The main thread reads the socket and runs a batch itself, one call after another (a generator's call
reads its credit there); a batch of a `concurrent` pool runs in a thread of its own, so that several run
at once while the main thread goes on reading.
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

from mini.local import _framing, _shared_memory
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
    """The worker's side of the socket: sends whole messages from any thread, reads them on the main
    thread, holds the events of running calls until they are sent (every `_FLUSH_SECONDS`, and with each
    reply, before it), and the shared memory both ways.

    A call is announced ("started", with its start time) only once it has run for a flush interval or
    has something to say: a batch of tiny calls costs no event at all.
    """

    def __init__(self, sock: socket.socket, allocate: _framing.Allocate) -> None:
        self._sock = sock
        self._reader = _framing.Reader(sock, allocate)
        self._lock = threading.Lock()
        self._events: list[tuple[int, int | None, str, Any]] = []
        self._reports: dict[tuple[int, int | None], int] = {}
        self._running: dict[int, tuple[int | None, float]] = {}  # batch -> (its call running now, since)
        self._announced: set[tuple[int, int | None]] = set()
        self._credit: dict[tuple[int, int | None], int] = {}
        self._credit_changed = threading.Condition(self._lock)
        self._inline: int | None = None  # the thread running a batch instead of reading, if any
        self._batches: list[Any] = []  # read while a batch ran inline, for the main loop
        self._closed = False
        self.shared = _shared_memory.AVAILABLE
        self._inbox = _shared_memory.Inbox()  # the pool's segments: arguments
        self._outbox = _shared_memory.Outbox()  # ours: results
        self._outbox_lock = threading.Lock()

    def send(self, message: Any) -> None:
        with self._lock:
            _framing.send(self._sock, message)

    def next_batch(self) -> Any:
        """The next "run" message (handling what comes before it), or None once the pool has gone."""
        while not self._batches:
            if not self._take_one():
                return None
        return self._batches.pop(0)

    def _take_one(self) -> bool:
        message = self._reader.receive()
        if message is None:
            self.close()
            return False
        kind = message[0]
        if kind == "run":
            self._batches.append(message)
        elif kind == "credit":
            self.give_credit(*message[1:])
        elif kind == "segments":
            self._inbox.add(message[1], self._reader.take_fds(len(message[1])))
        return True

    def inline(self, thread: int | None) -> None:
        """`thread` runs a batch now (None: it is done), so it reads what its generator waits for itself."""
        self._inline = thread

    def arguments(self, buffers: Any) -> Any:
        """A call's argument buffers as the memory its arrays are built on."""
        if not buffers:
            return buffers
        return [self._inbox.view(*b) if type(b) is tuple else b for b in buffers]

    def result_buffers(self, buffers: Any) -> Any:
        """A result's buffers as they travel: large ones copied into shared memory, the rest in the reply."""
        if not buffers:
            return ()
        travel: list[Any] = []
        for raw in buffers:
            if self.shared and raw.nbytes >= _shared_memory.SHARED_BYTES:
                with self._outbox_lock:
                    travel.append(self._outbox.place(raw))
            else:
                travel.append(pickle.PickleBuffer(raw))
        return travel

    def settle_shared(self, released: list[int], retired: list[int]) -> None:
        """The pool no longer uses our segments `released`, and has closed its segments `retired`."""
        if released:
            with self._outbox_lock:
                self._outbox.released(released)
        if retired:
            self._inbox.retire(retired)

    def begin(self, batch: int, index: int | None) -> None:
        # A batch runs its calls one after another. One dict operation: atomic without the lock (`flush`
        # copies the items under it); a call announced after it ended is still announced before the reply
        # that brings its outcome, which is all the pool needs.
        self._running[batch] = (index, time.time())

    def reply(self, batch: int, results: list[Any], elapsed: float) -> None:
        with self._lock:
            self._running.pop(batch, None)
            if self._announced:
                self._announced = {key for key in self._announced if key[0] != batch}
            if self._credit:
                self._credit = {key: n for key, n in self._credit.items() if key[0] != batch}
            with self._outbox_lock:
                announcements = self._outbox.announcements(_framing.FDS_PER_MESSAGE)
                retired = self._outbox.take_retired()
            for announcement, fds in announcements:
                _framing.send(self._sock, announcement, fds)
                with self._outbox_lock:
                    self._outbox.sent(fds)
            released = self._inbox.take_released()
            _framing.send(self._sock, ("reply", batch, results, elapsed, self._take(), released, retired))

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
        if key in self._announced:
            return
        running = self._running.get(key[0])
        if running is not None and running[0] == key[1]:
            self._announced.add(key)
            self._events.append((*key, "started", running[1]))

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
            for batch, (index, _) in list(self._running.items()):
                self._announce((batch, index))
            if self._events and not self._closed:
                _framing.send(self._sock, ("events", self._take()))

    def item(self, batch: int, index: int | None, data: bytes) -> None:
        key = (batch, index)
        with self._lock:
            while self._credit.setdefault(key, _STREAM_WINDOW) <= 0:
                if self._closed:
                    from mini.runtime import StreamStopped

                    raise StreamStopped
                if self._inline == threading.get_ident():
                    # No one else reads while this thread runs the batch: read the credit here.
                    self._lock.release()
                    try:
                        self._take_one()
                    finally:
                        self._lock.acquire()
                else:
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
    caller with the call's index), anything printed outside a call goes to the real stream. A line a call
    leaves unfinished waits in `partial`, shared by both streams, until the call ends (`end_of_call`)."""

    def __init__(self, name: str, real: Any, partial: dict[tuple[str, int], str]) -> None:
        self._name = name
        self._real = real
        self._partial = partial

    def write(self, text: str) -> int:
        from mini.runtime import current

        context = current()
        if context is None or context.events is None:
            return self._real.write(text)
        key = (self._name, id(context))
        pending = self._partial.pop(key, "") + text
        *lines, rest = pending.split("\n")
        for line in lines:
            context.events.emit(context.index, "output", (self._name, line))
        if rest:
            self._partial[key] = rest
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _end_of_call(partial: dict[tuple[str, int], str], context: Any) -> None:
    """What the call printed without ending the line goes out as its last line, on each stream."""
    for name in ("stdout", "stderr"):
        rest = partial.pop((name, id(context)), "")
        if rest and context.events is not None:
            context.events.emit(context.index, "output", (name, rest))


def _serve(sock: socket.socket, isolated: bool) -> None:
    try:
        from mini.reports import placement_here
        from mini.runtime import LOCAL, CallContext
        from mini.serialization import Call, encode_error, fresh_buffer, invoke, loads, run_call
    except BaseException:
        _framing.send(sock, ("failed", traceback.format_exc()))
        sys.exit(1)
    channel = _Channel(sock, fresh_buffer)
    channel.send(("ready", sys.version_info[:2], placement_here(), channel.shared))
    partial: dict[tuple[str, int], str] = {}
    sys.stdout = _CallOutput("stdout", sys.stdout, partial)
    sys.stderr = _CallOutput("stderr", sys.stderr, partial)
    prepare = _explaining if isolated else _calling
    _start_flusher(channel)

    def run_batch(batch: int, fn: Any, env: Any, calls: list[Any]) -> None:
        started = time.perf_counter()
        sink = _Sink(channel, batch)
        results = []
        with applied(env):
            for index, payload, buffers in calls:
                context = CallContext(index, LOCAL, sink)
                channel.begin(batch, index)
                if type(payload) is tuple:  # plain arguments (see `Call.plain`)
                    args, kwargs = payload
                    outcome = invoke(fn, index, args, kwargs, True, False, context)
                elif buffers:
                    call = Call(index, payload, channel.arguments(buffers))
                    outcome = run_call(fn, call, out_of_band=True, context=context)
                    del call  # its argument buffers: their shared memory is released once the call is done
                else:
                    outcome = run_call(fn, Call(index, payload), out_of_band=True, context=context)
                if partial:
                    _end_of_call(partial, context)
                buffers = channel.result_buffers(outcome.buffers) if outcome.buffers else ()
                results.append((index, outcome.ok, outcome.data, buffers))
                del outcome  # a result that is its argument holds the argument's shared memory
        channel.reply(batch, results, time.perf_counter() - started)

    # Which functions stay loaded is the pool's decision alone: it says what to drop and when to resend.
    functions: dict[int, object] = {}
    while (message := channel.next_batch()) is not None:
        _, batch, key, fn_blob, dropped, env, concurrent, calls, released, retired = message
        channel.settle_shared(released, retired)
        for old in dropped:
            del functions[old]
        if fn_blob is not None:
            try:
                functions[key] = prepare(loads(fn_blob))
            except BaseException as exc:  # e.g. the function's module is not importable here
                functions[key] = _Unloadable(encode_error(exc))
        fn = functions[key]
        del message
        if isinstance(fn, _Unloadable):
            channel.reply(batch, [(index, False, fn.error, ()) for index, _, _ in calls], 0.0)
        elif concurrent:
            threading.Thread(target=run_batch, args=(batch, fn, env, calls), daemon=True).start()
        else:
            channel.inline(threading.get_ident())
            try:
                run_batch(batch, fn, env, calls)
            finally:
                channel.inline(None)
        del calls


def _start_flusher(channel: _Channel) -> None:
    def flush() -> None:
        with contextlib.suppress(OSError):
            while True:
                time.sleep(_FLUSH_SECONDS)
                channel.flush()

    threading.Thread(target=flush, name="mini-worker-events", daemon=True).start()


if __name__ == "__main__":
    main()
