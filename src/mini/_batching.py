"""Dynamic batching, for backends that do not batch themselves: `app.w(max_batch_size=N, batch_wait_ms=T)`.

Callers pass single inputs (`run`, `map`, concurrent `arun`s alike); a batch is formed from every map of the
same function and options when it holds N inputs or its oldest input has waited T ms, and runs as one call
of `Batched(fn)`: the function gets a list per positional parameter and returns a list, whose items go back
to each input's own caller. A backend that batches natively (Modal) gets single inputs instead.

    dispatch = await batching_dispatch(backend, fn, fn_blob, options)   # a Dispatch like any other
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from mini.backend import Backend
from mini.dispatch import CallEvent, Dispatch
from mini.errors import BatchError, OptionError
from mini.options import Options
from mini.serialization import ArgumentEncoder, Call, Outcome, dump_function, dump_result, encode_error, loads


class Batched:
    """What runs where the calls run: one call per batch, on the pickled `(args, kwargs)` of each input."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, payloads: list[bytes]) -> list[bytes]:
        inputs = [loads(payload)[0] for payload in payloads]
        return call_batch(self.fn, [list(column) for column in zip(*inputs, strict=True)], len(inputs))


def call_batch(fn: Callable[..., Any], columns: list[list[Any]], size: int) -> list[bytes]:
    """`fn(*columns)` for a batch of `size` inputs (one list per parameter): each input's result, pickled.

    >>> call_batch(double_all, [[1, 2, 3]], 3)    # [dumps(2), dumps(4), dumps(6)]
    """
    try:
        results = fn(*columns)
    except Exception as exc:
        _note(exc, f"raised by a batch of {size} inputs: every input of the batch fails with it")
        raise
    if not isinstance(results, (list, tuple)) or len(results) != size:
        got = f"{len(results)} results" if isinstance(results, (list, tuple)) else type(results).__name__
        raise BatchError(
            f"{getattr(fn, '__qualname__', fn)} was given a batch of {size} inputs and returned {got}: a "
            "batched function returns a list with one result per input, in order."
        )
    return [dump_result(result) for result in results]


def parameter_names(fn: Callable[..., Any]) -> list[str]:
    """The positional parameters a batched function takes one list each of."""
    return list(inspect.signature(fn).parameters)


def check_batchable(fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Refuse what batching cannot carry: keyword arguments, or a function that needs them."""
    if kwargs:
        raise OptionError(
            f"a batched function takes its inputs as positional arguments only, one list per parameter; "
            f"got keyword arguments {', '.join(sorted(kwargs))}. Pass them positionally."
        )
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    named = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if named:
        raise OptionError(
            f"{getattr(fn, '__qualname__', fn)} cannot be batched: parameters {', '.join(named)} are not "
            "plain positional ones. A batched function takes one list per positional parameter (as on Modal)."
        )


_batchers: weakref.WeakKeyDictionary[Backend, dict[tuple[bytes, Any], _Batcher]] = weakref.WeakKeyDictionary()


async def batching_dispatch(
    backend: Backend, fn: Callable[..., Any], fn_blob: bytes, options: Options
) -> Dispatch:
    """A dispatch whose calls are batched with those of every other map of `fn` under `options`."""
    shared = _batchers.setdefault(backend, {})
    key = (fn_blob, tuple(sorted((k, repr(v)) for k, v in options.where_calls_run().items())))
    batcher = shared.get(key)
    if batcher is None:
        batcher = shared[key] = _Batcher(backend, fn, options, lambda: shared.pop(key, None))
    return batcher.join()


class _Batcher:
    def __init__(
        self, backend: Backend, fn: Callable[..., Any], options: Options, forget: Callable[[], Any]
    ) -> None:
        self._backend = backend
        self._wrapper = Batched(fn)
        self._options = options
        self._forget = forget
        self._size = options.max_batch_size or 1
        self._wait = (options.batch_wait_ms or 0) / 1000
        self._queue: deque[tuple[_Member, Call]] = deque()
        self._members: dict[int, list[tuple[_Member, int]]] = {}  # batch -> its inputs' (member, index)
        self._batches = itertools.count()
        self._encoder = ArgumentEncoder(self._wrapper)
        self._inner: Dispatch | None = None
        self._unsent: list[Call] = []  # batches formed while the inner dispatch opens
        self._pump: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._joined: set[_Member] = set()

    def join(self) -> _Member:
        member = _Member(self)
        self._joined.add(member)
        return member

    def capacity(self) -> int:
        return 4 * self._size

    def running(self, member: _Member) -> int:
        return sum(1 for batch in self._members.values() for owner, _ in batch if owner is member)

    def submit(self, member: _Member, calls: Sequence[Call]) -> None:
        self._queue.extend((member, call) for call in calls)
        self._form(full_only=True)
        if self._queue and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._wait, self._linger_over)

    def _linger_over(self) -> None:
        self._timer = None
        self._form(full_only=False)

    def _form(self, *, full_only: bool) -> None:
        while len(self._queue) >= self._size or (self._queue and not full_only):
            taken = [self._queue.popleft() for _ in range(min(self._size, len(self._queue)))]
            batch = next(self._batches)
            self._members[batch] = [(member, call.index) for member, call in taken]
            payloads = [call.payload for _, call in taken]
            self._send(self._encoder.encode(batch, (payloads,), {}))
        if not self._queue and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send(self, call: Call) -> None:
        if self._inner is not None:
            self._inner.submit([call])
            return
        self._unsent.append(call)
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        blob = dump_function(self._wrapper)
        try:
            inner = await self._backend.open_dispatch(self._wrapper, blob, self._options, ordered=False)
        except Exception as error:  # the backend could not start: every input so far fails with it
            for batch in list(self._members):
                self._fail(batch, error)
            return
        self._inner = inner
        unsent, self._unsent = self._unsent, []
        inner.submit(unsent)
        while True:
            for arrived in await self._inner.outcomes():
                if type(arrived) is CallEvent:
                    for member, index in self._members.get(arrived.index, ()):
                        member.take(CallEvent(index, arrived.kind, arrived.data))
                else:
                    self._split(arrived)  # type: ignore[arg-type]

    def _split(self, outcome: Outcome) -> None:
        if not outcome.ok:
            self._fail(outcome.index, outcome.data)
            return
        results = loads(outcome.data, buffers=outcome.buffers)  # type: ignore[arg-type]
        for (member, index), data in zip(self._members.pop(outcome.index), results, strict=True):
            member.take(Outcome(index, True, data))

    def _fail(self, batch: int, error: bytes | BaseException) -> None:
        for member, index in self._members.pop(batch, ()):
            member.take(Outcome(index, False, error if isinstance(error, bytes) else encode_error(error)))

    async def leave(self, member: _Member) -> None:
        # Its inputs already in a batch stay there (the batch runs for the others); its queued ones go.
        self._joined.discard(member)
        self._queue = deque(item for item in self._queue if item[0] is not member)
        if self._joined:
            return
        self._forget()
        if self._timer is not None:
            self._timer.cancel()
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        if self._inner is not None:
            await self._inner.aclose()


class _Member(Dispatch):
    """One map's view of a shared batcher."""

    def __init__(self, batcher: _Batcher) -> None:
        self._batcher = batcher
        self._ready: list[Outcome | CallEvent] = []
        self._arrived = asyncio.Event()
        self._closed = False

    def capacity(self) -> int:
        return self._batcher.capacity()

    def running(self) -> int:
        return self._batcher.running(self)

    def submit(self, calls: Sequence[Call]) -> None:
        self._batcher.submit(self, calls)

    def take(self, arrived: Outcome | CallEvent) -> None:
        if not self._closed:
            self._ready.append(arrived)
            self._arrived.set()

    async def outcomes(self) -> list[Outcome | CallEvent]:
        while not self._ready:
            self._arrived.clear()
            await self._arrived.wait()
        ready, self._ready = self._ready, []
        return ready

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._batcher.leave(self)


def _note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(note)
