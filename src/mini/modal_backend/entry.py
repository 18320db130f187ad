"""The generic entries Modal functions run: a user call (or a generator, or a batch), its result pickled by
mini, in the container.

Modal unpickles each input's arguments itself: mini sends its own pickle of `(args, kwargs)` as the input,
so they are pickled once, not twice. An entry returns mini's pickle of the result (bytes, which Modal's
pickle wraps at the cost of a copy) so that results and errors keep mini's semantics on every backend.
When the input had events (reports, printed lines: see `mini.modal_backend.container`), the result is
`(events, bytes)`, so that the caller can wait for that many events before it hands the result on.

The volumes mini mounts for the function (`mini.modal_backend.volumes`) travel in the closure as
`modal.Volume` objects: each call reloads them first and commits them after (`synced`).

This module is shipped with mini's sources and imported by reference in the container; it imports `modal`
only where a container needs it, so that it stays cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from mini.errors import MiniError
from mini.modal_backend.volumes import MOUNTED
from mini.runtime import MODAL, CallContext, calling, enter, leave
from mini.serialization import Outcome, dump_result, encode_error, encode_result, invoke, loads

_functions: dict[bytes, Callable[..., Any]] = {}
_events: Any = None  # this container's ContainerEvents, made on the first input that has a queue
_outputs: list[Any] = []


class CallFailed(Exception):
    """A user call raised; carries mini's encoding of the error, with its traceback, and how many events the
    input had sent."""

    def __init__(self, error: bytes, events: int = 0) -> None:
        super().__init__("the call raised (mini's encoded error travels with this exception)")
        self.error = error
        self.events = events

    def __reduce__(self) -> tuple[type, tuple[bytes, int]]:
        return type(self), (self.error, self.events)


def _load(fn_blob: bytes) -> Callable[..., Any]:
    fn = _functions.get(fn_blob)
    if fn is None:
        try:
            fn = _functions[fn_blob] = loads(fn_blob)
        except Exception as exc:  # e.g. its module is not shipped: the call's error, as mini encodes it
            raise CallFailed(encode_error(exc)) from None
    return fn


def _sink(queue: Any) -> Any:
    """The container's event sink (made once per container, with its prints captured per input), begun
    for the input this thread or task runs."""
    global _events
    if queue is None:
        return None
    if _events is None:
        from mini.modal_backend.container import CallOutput, ContainerEvents

        _events = ContainerEvents(queue)
        _outputs[:] = [CallOutput("stdout", sys.stdout, _events), CallOutput("stderr", sys.stderr, _events)]
        sys.stdout, sys.stderr = _outputs
    _events.begin()
    return _events


def _ended(sink: Any) -> int:
    if sink is None:
        return 0
    for output in _outputs:
        output.end_of_input()
    return sink.end()


async def _aended(sink: Any) -> int:
    # Sending the input's last events blocks: not on the container's event loop, which runs other inputs.
    return await asyncio.to_thread(_ended, sink) if sink is not None else 0


def run(
    fn_blob: bytes,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: Any = None,
    volumes: Sequence[Any] = (),
) -> Any:
    """Run the pickled function on arguments Modal unpickled, between a reload and a commit of `volumes`;
    return the pickled result (with the input's event count when it had events) or raise `CallFailed`."""
    fn = _load(fn_blob)
    sink = _sink(queue)
    # The position in the map is the output's `idx`, known to the caller; the entry does not need it.
    try:
        with synced(volumes):
            outcome = invoke(fn, -1, args, kwargs, context=CallContext(None, MODAL, sink, volumes=MOUNTED))
    except MiniError as exc:  # a volume's reload or commit failed
        outcome = Outcome(-1, False, encode_error(exc))
    events = _ended(sink)
    if not outcome.ok:  # raised, not returned, so Modal's retry policy sees the failure
        raise CallFailed(outcome.data, events)  # type: ignore[arg-type]
    return (events, outcome.data) if events else outcome.data


def stream(
    fn_blob: bytes,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: Any = None,
    volumes: Sequence[Any] = (),
) -> Iterator[bytes]:
    """Run the pickled generator function; yield each value it yields, pickled by mini."""
    fn = _load(fn_blob)
    sink = _sink(queue)
    context = CallContext(None, MODAL, sink, volumes=MOUNTED)
    try:
        with synced(volumes):
            yield from _values(fn, args, kwargs, context)
    except Exception as exc:
        raise CallFailed(encode_error(exc), _ended(sink)) from None
    _ended(sink)


def _values(fn: Callable[..., Any], args: Any, kwargs: Any, context: CallContext) -> Iterator[bytes]:
    with calling(context):
        produced = fn(*args, **kwargs)
    while True:
        try:
            with calling(context):
                value = next(produced)
        except StopIteration:
            return
        yield dump_result(value)


# `async def` functions and async generators get entries of their own kind, which Modal's container runtime
# runs on its own event loop (the container's one loop: with `concurrent_inputs`, inputs are its tasks).


async def arun(
    fn_blob: bytes,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: Any = None,
    volumes: Sequence[Any] = (),
) -> Any:
    """`run`, for an `async def` function."""
    fn = _load(fn_blob)
    sink = _sink(queue)
    token = enter(CallContext(None, MODAL, sink, volumes=MOUNTED))
    try:
        async with _asynced(volumes):
            result = await fn(*args, **kwargs)
    except Exception as exc:
        raise CallFailed(encode_error(exc), await _aended(sink)) from None
    finally:
        leave(token)
    outcome = encode_result(-1, result)
    events = await _aended(sink)
    if not outcome.ok:
        raise CallFailed(outcome.data, events)  # type: ignore[arg-type]
    return (events, outcome.data) if events else outcome.data


async def astream(
    fn_blob: bytes,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: Any = None,
    volumes: Sequence[Any] = (),
) -> AsyncIterator[bytes]:
    """`stream`, for an async generator function."""
    fn = _load(fn_blob)
    sink = _sink(queue)
    token = enter(CallContext(None, MODAL, sink, volumes=MOUNTED))
    try:
        async with _asynced(volumes):
            async for value in fn(*args, **kwargs):
                yield dump_result(value)
    except Exception as exc:
        raise CallFailed(encode_error(exc), await _aended(sink)) from None
    finally:
        leave(token)
    await _aended(sink)


@contextlib.asynccontextmanager
async def _asynced(volumes: Sequence[Any]) -> AsyncIterator[None]:
    # `synced`, with its reload and commit (blocking calls) off the container's event loop.
    manager = synced(volumes)
    await asyncio.to_thread(manager.__enter__)
    try:
        yield
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


def run_batch(
    fn_blob: bytes, columns: list[list[Any]], queue: Any = None, volumes: Sequence[Any] = ()
) -> list[bytes]:
    """Run the pickled batched function on one batch Modal formed (a list per parameter)."""
    from mini._batching import call_batch

    fn = _load(fn_blob)
    sink = _sink(queue)
    size = len(columns[0]) if columns else 0
    try:
        with synced(volumes), calling(CallContext(None, MODAL, sink, volumes=MOUNTED)):
            return call_batch(fn, columns, size)
    except Exception as exc:
        raise CallFailed(encode_error(exc)) from None
    finally:
        _ended(sink)


def bind(
    fn_blob: bytes,
    *,
    kind: str = "call",
    queue: Any = None,
    parameters: list[str] | None = None,
    is_async: bool = False,
    volumes: Sequence[Any] = (),
) -> Any:
    """The function registered with Modal: the user's pickled function travels once, in this closure, with
    the queue its events go to and the `modal.Volume`s mini mounts for it. `kind`: "call", "stream" (a
    generator) or "batch" (with the user function's `parameters`, which Modal's batching passes by name);
    `is_async`: the user function is `async def` (or an async generator)."""
    volumes = tuple(volumes)
    if kind == "stream" and is_async:

        async def mini_astream(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
            async for value in astream(fn_blob, args, kwargs, queue, volumes):
                yield value

        return mini_astream
    if kind == "stream":

        def mini_stream(*args: Any, **kwargs: Any) -> Iterator[bytes]:
            yield from stream(fn_blob, args, kwargs, queue, volumes)

        return mini_stream
    if kind == "batch":
        names = list(parameters or ())

        def mini_batch(**columns: Any) -> list[bytes]:
            return run_batch(fn_blob, [columns[name] for name in names], queue, volumes)

        mini_batch.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
        )
        return mini_batch
    if is_async:

        async def mini_aentry(*args: Any, **kwargs: Any) -> Any:
            return await arun(fn_blob, args, kwargs, queue, volumes)

        return mini_aentry

    def mini_entry(*args: Any, **kwargs: Any) -> Any:
        return run(fn_blob, args, kwargs, queue, volumes)

    return mini_entry


# Calls running in this container now: more than one only under input concurrency.
_running = 0
_running_lock = threading.Lock()


@contextlib.contextmanager
def synced(volumes: Sequence[Any]) -> Iterator[None]:
    """Reload `volumes` before a call, so that it sees what earlier calls committed, and commit them once it
    has returned or raised, so that the caller and later calls see what it wrote (a failed call's partial
    writes included) as soon as its outcome is back.

    Under input concurrency only a call that starts alone reloads: a reload fails while a file of the
    volume is open, and would change the files under a call still running. A call that starts beside others
    sees the container's copy as it is (with what the others wrote, and what was committed up to the last
    reload). A failed reload or commit is a `MiniError`, the call's error.
    """
    global _running
    if not volumes:
        yield
        return
    with _running_lock:
        alone = _running == 0
        _running += 1
    try:
        if alone:
            for volume in volumes:
                _sync(volume.reload, "reload", volume)
        yield
    finally:
        with _running_lock:
            _running -= 1
        for volume in volumes:
            _sync(volume.commit, "commit", volume)


def _sync(operation: Callable[[], Any], verb: str, volume: Any) -> None:
    try:
        operation()
    except Exception as exc:
        name = getattr(volume, "name", None) or "a volume"
        hint = (
            " A file of the volume is still open in this container: close the files a call opens on a "
            "volume before it returns."
            if verb == "reload" and "open files" in str(exc)
            else ""
        )
        raise MiniError(f"mini could not {verb} {name} around this call: {exc}.{hint}") from exc
