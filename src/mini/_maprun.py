"""`MapRun`: one map in progress, with the semantics every backend shares, written once.

Zipping is the API's job (`mini.apparatus`); here: lazy bounded input, ordering, retries, cache look-ups,
progress and cancellation, over the one primitive a backend supplies (`mini.dispatch.Dispatch`).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from mini._batching import batching_dispatch, check_batchable
from mini._observe import CallObserver
from mini.backend import Backend
from mini.cache.lookup import MapCache, open_map_cache
from mini.dispatch import CallEvent, Dispatch
from mini.errors import ArgumentError, OptionError
from mini.options import Options
from mini.progress import Progress
from mini.serialization import ArgumentEncoder, Call, Outcome, decode_error, dump_function, loads

# Inputs encoded in one go at most: a backend's workers get going before a large window is full.
_FEED_AT_ONCE = 1024


def values(batch: list[tuple[bool, Any]], return_exceptions: bool) -> Iterable[Any]:
    """A batch's results; a failure is raised, or yielded in its place with `return_exceptions`."""
    found = [value for ok, value in batch if ok or return_exceptions]
    # Without a failure to raise, a list: iterating it costs the caller next to nothing per result.
    return found if len(found) == len(batch) else _until_failure(batch)


def _until_failure(batch: list[tuple[bool, Any]]) -> Iterator[Any]:
    for ok, value in batch:
        if not ok:
            raise value
        yield value


# Calls settled from the cache and not yet consumed, at most, before a dispatch is open to say its capacity.
_CACHED_WINDOW = 1024


class MapRun:
    """One map in progress, driven from mini's private loop: feeds inputs lazily within the backend's
    capacity, settles cached calls without dispatching them, retries, reorders, and hands back batches of
    `(ok, value_or_exception)`. With a cache, the dispatch is opened for the first call it does not hold."""

    def __init__(
        self,
        backend: Backend,
        options: Options,
        label: str,
        fn: Callable[..., Any],
        arg_tuples: Iterator[Any],
        kwargs: Mapping[str, Any] | None,
        *,
        ordered: bool,
        progress: bool | None,
        total: int | None = None,
        lend_buffers: bool = False,
    ) -> None:
        check_runnable(fn)
        self._backend = backend
        self._options = options
        self._label = label
        self._fn = fn
        self._inputs = arg_tuples
        self._kwargs = dict(kwargs or {})
        self._ordered = ordered
        self._progress_enabled = progress
        self._total = total
        self._progress: Progress | None = None
        self._observer = CallObserver(options.on_report)
        self._batched = bool(options.max_batch_size) and not backend.capabilities.batching
        if options.max_batch_size:
            check_batchable(fn, self._kwargs)
        # A batch carries its inputs' pickles whole: no buffers beside them.
        out_of_band = backend.capabilities.buffers and not self._batched
        self._encoder = ArgumentEncoder(fn, out_of_band=out_of_band, lend=lend_buffers)
        self._dispatch: Dispatch | None = None
        self._cache: MapCache | None = None
        self._cached = 0
        self._counter = itertools.count()
        self._exhausted = False
        self._finished = False
        self._submitted = 0
        self._consumed = 0
        self._failed = 0
        self._done = 0
        self._next_index = 0
        self._buffer: dict[int, tuple[bool, Any]] = {}
        self._payloads: dict[int, Any] = {}
        self._attempts: dict[int, int] = {}
        self._closed = False
        self._retries = 0 if backend.capabilities.retries else (options.retries or 0)

    async def next_batch(self) -> list[tuple[bool, Any]] | None:
        """The next results in output order, or None when the map is finished."""
        if self._progress is None:
            self._cache = open_map_cache(self._options, self._label, self._fn, self._kwargs)
            if self._cache is None:
                await self._open_dispatch()
            self._progress = Progress(self._label, self._progress_enabled, self._total)
        while True:
            await self._feed()
            if self._consumed == self._submitted + self._cached and self._exhausted:
                self._show(finished=True)
                return None
            ready = self._take_ready()
            if ready:
                # Their room goes to new inputs now: the backend keeps busy while the caller handles these.
                await self._feed()
                await self._observer.caught_up()  # the reports of these calls reach on_report first
                return ready
            assert self._dispatch is not None  # nothing ready: some call was dispatched
            settled: list[Outcome] = []
            for arrived in await self._dispatch.outcomes():
                if isinstance(arrived, CallEvent):
                    self._observer.observe(arrived, self._attempts.get(arrived.index, 0) + 1)
                else:
                    settled.append(arrived)
            if self._cache is not None:  # kept as they arrive, before the caller sees (and may change) them
                self._cache.keep(settled)
                self._cache.flush()
            for outcome in settled:
                self._settle(outcome)
            self._show()

    async def _open_dispatch(self) -> None:
        fn_blob = dump_function(self._fn)
        if self._batched:
            self._dispatch = await batching_dispatch(self._backend, self._fn, fn_blob, self._options)
        else:
            self._dispatch = await self._backend.open_dispatch(
                self._fn, fn_blob, self._options, ordered=self._ordered
            )

    async def _feed(self) -> None:
        calls: list[Call] = []
        cache = self._cache
        room = min(self._room(), _FEED_AT_ONCE)
        if cache is None and room > 0 and not self._exhausted:  # the common case, in one go
            encode, kwargs = self._encoder.encode, self._kwargs
            taken = zip(itertools.islice(self._inputs, room), self._counter, strict=False)
            calls = [encode(index, tuple(item), kwargs) for item, index in taken]
            self._exhausted = len(calls) < room
            room = 0
            if self._retries:
                for call in calls:
                    self._payloads[call.index] = call.copy()
        while room > 0 and not self._exhausted:
            try:
                item = next(self._inputs)
            except StopIteration:
                self._exhausted = True
                break
            args = tuple(item)
            index = next(self._counter)
            room -= 1
            if cache is None:
                call = self._encoder.encode(index, args, self._kwargs)
            else:
                hit, found = cache.look_up(index, args, self._encoder)
                if hit:
                    self._buffer[index] = (True, found)
                    self._cached += 1
                    continue
                call = found
                if self._dispatch is None:  # the first call to run: now the backend says how many fit
                    await self._open_dispatch()
                    room = self._room() - len(calls) - 1
            if self._retries:
                self._payloads[index] = call.copy()
            calls.append(call)
        if calls:
            assert self._dispatch is not None
            self._submitted += len(calls)
            self._dispatch.submit(calls)
        if self._exhausted and not self._finished and self._dispatch is not None:
            self._finished = True
            self._dispatch.finish()

    def _room(self) -> int:
        """How many more calls may be taken in: settled from the cache or dispatched, not yet consumed."""
        capacity = _CACHED_WINDOW if self._dispatch is None else self._dispatch.capacity()
        return capacity - (self._submitted + self._cached - self._consumed)

    def _settle(self, outcome: Outcome) -> None:
        index = outcome.index
        self._observer.settled(index)
        if outcome.ok:
            value = loads(outcome.data, buffers=outcome.buffers)  # type: ignore[arg-type]
            self._done += 1
            if not self._retries:  # the common case, without the bookkeeping below
                self._buffer[index] = (True, value)
                return
        else:
            attempt = self._attempts.get(index, 0)
            if attempt < self._retries:
                self._attempts[index] = attempt + 1
                assert self._dispatch is not None
                self._dispatch.submit([self._payloads[index].copy()])
                return
            value = decode_error(outcome.data)
            self._failed += 1
        if self._retries:
            self._payloads.pop(index, None)
            self._attempts.pop(index, None)
        self._buffer[index] = (outcome.ok, value)

    def _take_ready(self) -> list[tuple[bool, Any]]:
        if not self._ordered:
            ready = list(self._buffer.values())
            self._buffer.clear()
        else:
            ready = []
            while self._next_index in self._buffer:
                ready.append(self._buffer.pop(self._next_index))
                self._next_index += 1
        self._consumed += len(ready)
        return ready

    def _show(self, finished: bool = False) -> None:
        if self._progress is not None and self._progress.watched:
            self._progress.update(
                submitted=self._submitted,
                running=0 if self._dispatch is None else self._dispatch.running(),
                done=self._done,
                failed=self._failed,
                cached=self._cached,
                finished=finished,
                calls=() if finished else self._observer.running(),
            )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._dispatch is not None:
                await self._dispatch.aclose()
        finally:
            self._observer.close()
            if self._cache is not None:
                self._cache.close()
            if self._progress is not None:
                self._progress.close()


class StreamRun:
    """One call of a generator function in progress: the values it yields, in order, as they come (its
    reports and lines go where a map's go). Retries do not apply: values already read cannot be taken back.
    """

    def __init__(
        self,
        backend: Backend,
        options: Options,
        label: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        if not yields(fn):
            raise ArgumentError(
                f"{getattr(fn, '__qualname__', fn)} is not a generator function (it has no `yield`): "
                "run it with app.run(fn, ...) instead of stream."
            )
        if options.cache:
            # Refused rather than passed over, so that no one believes a stream's values are kept.
            raise OptionError(
                "app.stream does not use the result cache: a generator's values are handed over as it yields "
                "them, and a loop may stop early, so there is no one result to keep. Stream from a variant "
                "without it: app.w(cache=False).stream(...)."
            )
        self._backend = backend
        self._options = options
        self._label = label
        self._fn = fn
        self._call = ArgumentEncoder(fn, out_of_band=backend.capabilities.buffers).encode(
            0, args, dict(kwargs)
        )
        self._dispatch: Dispatch | None = None
        self._observer = CallObserver(options.on_report)
        self._ended = False
        self._error: BaseException | None = None

    async def next_values(self) -> list[Any] | None:
        """The values yielded since the last look (at least one), or None once the generator has returned;
        raises what the generator raised."""
        if self._dispatch is None:
            fn_blob = dump_function(self._fn)
            self._dispatch = await self._backend.open_dispatch(self._fn, fn_blob, self._options, ordered=True)
            self._dispatch.submit([self._call])
            self._dispatch.finish()
        while not self._ended:
            found: list[Any] = []
            for arrived in await self._dispatch.outcomes():
                if type(arrived) is not CallEvent:
                    self._ended = True
                    outcome: Outcome = arrived  # type: ignore[assignment]
                    if not outcome.ok:
                        self._error = decode_error(outcome.data)
                elif arrived.kind == "item":
                    found.append(loads(arrived.data))
                else:
                    self._observer.observe(arrived)
            await self._observer.caught_up()
            if found:
                self._dispatch.consumed(0, len(found))
                return found  # the values before an error come first
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return None

    async def aclose(self) -> None:
        try:
            if self._dispatch is not None:
                await self._dispatch.aclose()
        finally:
            self._observer.close()


def check_runnable(fn: Callable[..., Any]) -> None:
    """Refuse what `run`, `map` and `spawn` cannot call: a non-callable, or a generator function (whose
    values only `stream` can read)."""
    if not callable(fn):
        raise ArgumentError(f"the function to run must be callable, got {type(fn).__name__}")
    if yields(fn):
        raise ArgumentError(
            f"{getattr(fn, '__qualname__', fn)} is a generator function: its values are read with "
            "app.stream(fn, ...) (or astream), not run, map or spawn."
        )


def yields(fn: Callable[..., Any]) -> bool:
    """Whether calling `fn` gives a generator (sync or async), seen through partials and decorators."""
    if type(fn) is types.FunctionType and "__wrapped__" not in fn.__dict__:  # the common case, quickly
        return bool(fn.__code__.co_flags & _YIELDS)
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(fn)
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


_YIELDS = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
