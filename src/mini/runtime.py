"""The callee's side: what code running inside a call can ask about the call it is in, and how a call's
events (its reports, its printed lines, a generator's values) leave it.

Every backend's worker or container entry runs a call with a `CallContext` (`run_call(..., context=...)`
sets it for the call's duration); `mini.report`, `Volume.path` and the like look it up with `current()`,
which is None outside a call. The context is a `contextvars` variable, so threads and asyncio tasks each
see their own call.

    outcome = run_call(fn, call, context=CallContext(index=3, backend="local", events=sink))

The backend supplies the `EventSink`: it must never block the callee for a report or a line (it buffers,
coalesces or drops), and it may block a generator until its consumer wants more (`item`).

Only the stdlib is imported here: worker processes load it before the user's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

LOCAL = "local"
MODAL = "modal"

T = TypeVar("T")


class StreamStopped(Exception):
    """The consumer of a generator call has stopped reading: the generator is closed at its next yield."""


class EventSink(Protocol):
    """Where a backend takes a running call's events."""

    def emit(self, index: int | None, kind: str, data: Any) -> None:
        """Pass on `data` of kind "report", "output" or "started"; never blocks, never raises."""

    def item(self, index: int | None, data: bytes) -> None:
        """Pass on one value (pickled) a generator call yielded; may wait until the consumer wants more,
        and raises `StreamStopped` once it wants no more."""


@dataclass(slots=True)
class CallContext:
    """Where a call is running: its position in the map (None where the backend does not tell the callee,
    as on Modal, whose caller knows each input by its id), the backend's kind ("local", "modal"), and
    where its events go (None: nowhere, e.g. a detached call that keeps no reports).

    `volumes` is the folder where this call sees its backend's volumes (`volumes / NAME`), for a backend
    whose calls see them somewhere other than the caller does (on Modal, where mini mounts them). None
    where a volume's own folder is valid in the call as it is for the caller (the local backends).

    Read it, never change it: a worker makes one per call, and a frozen dataclass costs several times as
    much to build."""

    index: int | None
    backend: str
    events: EventSink | None = None
    volumes: Path | None = None


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("mini_call", default=None)


def current() -> CallContext | None:
    """The call this code runs in, or None outside any call."""
    return _current.get()


@contextlib.contextmanager
def calling(context: CallContext) -> Iterator[CallContext]:
    """Run the block as the call `context` describes."""
    token = enter(context)
    try:
        yield context
    finally:
        leave(token)


def enter(context: CallContext) -> contextvars.Token[CallContext | None]:
    """From here on (in this thread or task), code runs as the call `context` describes, until `leave`: for
    an entry that is itself a coroutine, whose awaits a `with calling(...)` block cannot span."""
    return _current.set(context)


def leave(token: contextvars.Token[CallContext | None]) -> None:
    _current.reset(token)


# ----- the worker's event loop, for `async def` functions ----------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def worker_loop() -> asyncio.AbstractEventLoop:
    """The event loop every `async def` call of this process runs on (one per worker, started on first use),
    so that module-level async clients made by one call keep working in the next."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="mini-calls", daemon=True).start()
        return _loop


def wait_for(awaitable: Awaitable[T]) -> T:
    """Run `awaitable` on the worker's loop, in the context of the calling thread's call, and wait for it."""
    context = contextvars.copy_context()

    async def inside() -> T:
        return await awaitable

    future = asyncio.run_coroutine_threadsafe(_in(context, inside), worker_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _in(context: contextvars.Context, make: Any) -> Any:
    # A task copies the context current when it is created: create it inside the call's context.
    return await context.run(asyncio.ensure_future, make())
