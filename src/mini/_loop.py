"""The private event loop every apparatus runs its async core on.

Running the core on one loop in a daemon thread lets the sync API work anywhere, including inside a
running loop (a notebook cell), and keeps backend resources (pipes, sockets) bound to a single loop
whichever thread or loop the user calls from.

A single blocking `run` can have the same core driven on the caller's thread instead (`drive`), by a
dispatch that waits only by blocking (`Blocking`): on a `Signal` its worker threads set (thread mode: a call
then crosses threads twice, not four times), or on its own blocking work (process mode, on a worker lent to
that thread: the call crosses no thread of this process). A dispatch that cannot do that right now raises
`NeedsLoop`, and the run goes through the loop after all.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_driving = threading.local()


def loop() -> asyncio.AbstractEventLoop:
    """The private loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="mini-loop", daemon=True)
            _thread.start()
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


class Job(Generic[T]):
    """A coroutine running on the private loop.

    Its future resolves only once the coroutine has really finished, so a cancelled job has completed its
    cleanup (stopping workers) by the time `cancel_and_wait` returns.
    """

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.future: Future[T] = Future()
        self._done = threading.Event()
        self._loop = loop()
        self._task: asyncio.Task[T] | None = None
        self._loop.call_soon_threadsafe(self._start, coro)

    def _start(self, coro: Coroutine[Any, Any, T]) -> None:
        if self.future.cancelled():
            coro.close()
            self._done.set()
            return
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(self._finish)

    def _finish(self, task: asyncio.Task[T]) -> None:
        self._done.set()
        if self.future.done():  # cancelled from the caller's side (e.g. through asyncio.wrap_future)
            return
        if task.cancelled():
            self.future.cancel()
        elif (error := task.exception()) is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(task.result())

    def cancel_and_wait(self) -> None:
        self._loop.call_soon_threadsafe(self._cancel)
        self._done.wait()

    def _cancel(self) -> None:
        if self._task is None:
            self.future.cancel()
            self._done.set()
        else:
            self._task.cancel()


def wait(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the private loop and block until it ends; Ctrl-C cancels it and waits for cleanup."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("mini's blocking API cannot be called from mini's own event loop thread")
    job = Job(coro)
    try:
        return job.future.result()
    except KeyboardInterrupt:
        job.cancel_and_wait()
        raise


def close(coro: Coroutine[Any, Any, None]) -> None:
    """Run a backend's cleanup: wait for it from any other thread; from the loop's own thread (a close()
    inside a mapped call's cleanup) schedule it instead, since blocking there would deadlock."""
    if in_loop_thread():
        asyncio.ensure_future(coro)
    else:
        wait(coro)


async def wrap(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` on the private loop from the caller's loop; cancelling the caller cancels it."""
    if in_loop_thread():
        return await coro
    job = Job(coro)
    try:
        return await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        await asyncio.get_running_loop().run_in_executor(None, job.cancel_and_wait)
        raise


class NeedsLoop(Exception):
    """Raised by a core driven on the caller's thread that cannot go on there (a backend with nothing to
    run it on right now): its caller runs it on mini's loop instead, with `wait`.

    >>> try:
    ...     return drive(core())
    ... except NeedsLoop:
    ...     return wait(core())
    """


def driving() -> bool:
    """Whether this thread is driving a core (`drive`): what it creates must wait only by blocking."""
    return getattr(_driving, "active", False)


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end on this thread, blocking while it waits on a `Blocking` (a `Signal`, or work
    done on this thread); Ctrl-C cancels it and lets it clean up. Only for cores that await nothing else.

    >>> drive(apparatus._run_one(fn, args, kwargs))
    """
    if in_loop_thread():
        coro.close()
        raise RuntimeError("mini's blocking API cannot be called from mini's own event loop thread")
    outer = getattr(_driving, "active", False)
    _driving.active = True
    try:
        waited = coro.send(None)
        while True:
            try:
                _block(coro, waited)
            except KeyboardInterrupt:
                _cancel(coro)
                raise
            waited = coro.send(None)
    except StopIteration as stop:
        return stop.value
    finally:
        _driving.active = outer


def _block(coro: Coroutine[Any, Any, Any], waited: object) -> None:
    if not isinstance(waited, Blocking):
        coro.close()
        raise RuntimeError(f"a core driven on the caller's thread awaited {waited!r}, not a mini Signal")
    waited.block()


def _cancel(coro: Coroutine[Any, Any, Any]) -> None:
    # As a cancelled task would: the core's cleanup (stopping its calls) runs before Ctrl-C propagates.
    try:
        waited = coro.throw(asyncio.CancelledError())
        while True:
            _block(coro, waited)
            waited = coro.send(None)
    except (StopIteration, asyncio.CancelledError):
        return


class Blocking:
    """What a core driven on the caller's thread may await: `drive` calls `block()`, which returns once the
    core can go on. Given `work`, `block()` runs it: the core's waiting is then done on the caller's thread
    (a blocking read, say).

    >>> turn = Blocking(read_one_answer)   # created and awaited under `drive` only
    >>> await turn
    """

    def __init__(self, work: Callable[[], None] | None = None) -> None:
        self._work = work

    def block(self) -> None:
        assert self._work is not None
        self._work()

    def __await__(self) -> Generator[Any, None, None]:
        yield self


class Signal(Blocking):
    """A wake-up that any thread can `set`, awaited by a core on the private loop or under `drive`.

    >>> signal = Signal()          # in the core, on whichever side runs it
    >>> signal.set()               # from a worker thread
    >>> await signal               # in the core; then signal.clear()
    """

    def __init__(self) -> None:
        self._blocking = getattr(_driving, "active", False)
        if self._blocking:
            # A queue of wake-up tokens: cheaper than a threading.Event, and as interruptible by Ctrl-C.
            self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
            self._deadlines: list[float] = []
            self._deadlines_lock = threading.Lock()
        else:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()

    def set(self) -> None:
        """Wake the core; callable from any thread."""
        if self._blocking:
            self._tokens.put(None)
        else:
            self._loop.call_soon_threadsafe(self._event.set)

    def set_later(self, seconds: float) -> None:
        """Wake the core after `seconds`; callable from any thread."""
        if self._blocking:
            with self._deadlines_lock:
                self._deadlines.append(time.monotonic() + seconds)
            self._tokens.put(None)  # the core then waits again, this deadline included
        else:
            self._loop.call_soon_threadsafe(self._loop.call_later, seconds, self._event.set)

    def clear(self) -> None:
        """Forget past wake-ups; only the core calls this."""
        if not self._blocking:
            self._event.clear()
            return
        with contextlib.suppress(queue.Empty):
            while True:
                self._tokens.get_nowait()

    def block(self) -> None:
        """Under `drive`: wait on this thread until set or until the earliest deadline passes."""
        with self._deadlines_lock:
            earliest = min(self._deadlines, default=None)
        if earliest is None:
            self._tokens.get()
            return
        try:
            self._tokens.get(timeout=max(0.0, earliest - time.monotonic()))
        except queue.Empty:
            with self._deadlines_lock:
                self._deadlines.remove(earliest)

    def __await__(self) -> Generator[Any, None, None]:
        if self._blocking:
            yield self
        else:
            yield from self._event.wait().__await__()


async def _cancel_everything() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _shutdown() -> None:
    # At interpreter exit: let running maps stop their workers, then stop the loop.
    global _loop
    with _lock:
        running, _loop = _loop, None
    if running is None or running.is_closed():
        return
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(_cancel_everything(), running).result(timeout=10)
    running.call_soon_threadsafe(running.stop)


atexit.register(_shutdown)
