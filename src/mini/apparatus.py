"""`Apparatus`: the API experiment code is written against, with its semantics written once.

A backend supplies one primitive, `_open_dispatch` (see `mini.dispatch`); zipping, lazy bounded input,
ordering, retries, `return_exceptions`, cancellation and the sync bridge all live here.
"""

from __future__ import annotations

import copy
import itertools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from mini import _loop
from mini.dispatch import Dispatch
from mini.errors import ArgumentError
from mini.options import Options
from mini.progress import Progress
from mini.serialization import ArgumentEncoder, Outcome, decode_error, dump_function, loads

if TYPE_CHECKING:
    from mini.runs import Job, Launcher, Run

P = ParamSpec("P")
R = TypeVar("R")

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self  # type: ignore[assignment]


class Apparatus(ABC):
    """Where experiment code runs. Write against this; pick the backend when you run.

    >>> with LocalApparatus("demo", workers=2) as app:
    ...     squares = list(app.map(pow, range(4), [2] * 4))
    """

    def __init__(self, name: str, options: Options | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ArgumentError(f"an apparatus needs a non-empty name, got {name!r}")
        self.name = name
        self.options = options or Options()

    # ----- what a backend supplies -------------------------------------------------------------------

    @abstractmethod
    async def _open_dispatch(self, fn: Callable[..., Any], fn_blob: bytes, *, ordered: bool) -> Dispatch:
        """Start one map of `fn` (pickled once as `fn_blob`) under `self.options`."""

    @abstractmethod
    def close(self) -> None:
        """Stop workers and release resources. The apparatus can be used again afterwards."""

    def _retries_handled_by_backend(self) -> bool:
        return False

    def _dispatch_on_caller_thread(self) -> bool:
        """Whether `run` may drive this backend's core on the caller's thread (`mini._loop.drive`), two
        thread hops fewer than through mini's loop: only for a dispatch that waits on nothing but
        `mini._loop.Signal`s."""
        return False

    def _takes_buffers(self) -> bool:
        """Whether this backend's dispatch carries `Call.buffers` (large buffers pickled out-of-band)."""
        return False

    def _callees_own_memory(self) -> bool:
        """Whether calls run in another address space, so a callee can never write to the caller's memory."""
        return False

    def _detached_launcher(self) -> Launcher:
        """The `mini.runs.Launcher` that starts this backend's detached calls (`spawn`, `spawn_map`)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot launch detached runs; use LocalApparatus or ModalApparatus."
        )

    # ----- options and lifecycle ---------------------------------------------------------------------

    def w(self, **options: Any) -> Self:
        """A variant of this apparatus with options applied; the receiver is unchanged.

        >>> fast = app.w(timeout=60, retries=2)
        >>> gpu = ModalApparatus("exp").w(gpu="A100")

        Known options: gpu, cpu, memory, timeout, retries, env, secrets, volumes, image, max_containers,
        region, startup_timeout, progress. An unknown name raises `OptionError`.
        """
        variant = copy.copy(self)
        variant.options = self.options.merged(options)
        variant._check_options()
        return variant

    def _check_options(self) -> None:  # noqa: B027 - optional hook, most backends accept everything
        """Backend-specific validation of `self.options`; raise `OptionError` for what it cannot accept."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        set_options = ", ".join(f"{k}={v!r}" for k, v in self.options.as_dict().items())
        return f"{type(self).__name__}({self.name!r}{', ' if set_options else ''}{set_options})"

    # ----- the async core ----------------------------------------------------------------------------

    async def arun(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one call and return its result; raises what `fn` raised.

        >>> loss = await app.arun(train, lr=1e-3)
        """
        return await _loop.wrap(self._run_one(fn, args, kwargs))

    async def amap(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        kwargs: Mapping[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[R]:
        """Map `fn` over the zipped iterables, like the builtin `map`; async iterator of results.

        >>> async for loss in app.amap(train, learning_rates):
        ...     print(loss)
        """
        _need_iterables("amap", iterables)
        async for item in self._iterate_async(
            fn, zip(*iterables, strict=False), kwargs, order_outputs, return_exceptions, _length(*iterables)
        ):
            yield item

    async def astarmap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        kwargs: Mapping[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[R]:
        """Like `amap`, but each item of `iterable` is a tuple of positional arguments."""
        async for item in self._iterate_async(
            fn, iter(iterable), kwargs, order_outputs, return_exceptions, _length(iterable)
        ):
            yield item

    # ----- the sync bridge ---------------------------------------------------------------------------

    def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one call and return its result; raises what `fn` raised.

        >>> app.run(train, lr=1e-3)
        0.0421
        """
        if self._dispatch_on_caller_thread():
            return _loop.drive(self._run_one(fn, args, kwargs))
        # The caller waits for the call to end, so where callees cannot write to its memory, argument
        # buffers can be sent from there rather than from a snapshot (one copy of a large array fewer).
        return _loop.wait(self._run_one(fn, args, kwargs, lend_buffers=self._callees_own_memory()))

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        kwargs: Mapping[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[R]:
        """Map `fn` over the zipped iterables, like the builtin `map`, stopping at the shortest.

        Inputs are read lazily with a bounded number in flight. Results come in input order unless
        `order_outputs=False`. A failing call raises its exception (with the remote traceback as its cause)
        and cancels the rest; with `return_exceptions=True` the exception is yielded in its place.
        Leaving the loop early stops outstanding work.

        >>> for loss in app.map(train, [1e-3, 1e-4], kwargs={"steps": 100}):
        ...     print(loss)
        """
        _need_iterables("map", iterables)
        return self._iterate_sync(
            fn, zip(*iterables, strict=False), kwargs, order_outputs, return_exceptions, _length(*iterables)
        )

    def starmap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        kwargs: Mapping[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[R]:
        """Like `map`, but each item of `iterable` is a tuple of positional arguments.

        >>> list(app.starmap(pow, [(2, 3), (3, 2)]))
        [8, 9]
        """
        return self._iterate_sync(
            fn, iter(iterable), kwargs, order_outputs, return_exceptions, _length(iterable)
        )

    # ----- detached runs -----------------------------------------------------------------------------

    def spawn(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Start one call that outlives this process; returns its handle at once.

        >>> job = app.spawn(train, lr=1e-3)
        >>> Job.open(job.id).result()        # later, from any process on this checkout
        """
        from mini.runs.launch import launch

        return launch(self, fn, [args], kwargs, kind="spawn")[0]

    def spawn_map(
        self, fn: Callable[..., R], *iterables: Iterable[Any], kwargs: Mapping[str, Any] | None = None
    ) -> Run[R]:
        """Start `fn` over the zipped iterables as detached calls, like `map`; returns the run at once.

        >>> run = app.spawn_map(train, [1e-3, 1e-4], kwargs={"steps": 100})
        >>> Run.open(run.id).results()       # later; `mini status`/`mini results RUN` from a shell
        """
        from mini.runs.launch import launch

        _need_iterables("spawn_map", iterables)
        return launch(self, fn, zip(*iterables, strict=False), kwargs, kind="spawn_map")

    # ----- shared machinery --------------------------------------------------------------------------

    async def _run_one(
        self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any], lend_buffers: bool = False
    ) -> R:
        run = _MapRun(
            self, fn, iter([args]), kwargs, ordered=True, progress=False, total=1, lend_buffers=lend_buffers
        )
        try:
            batch = await run.next_batch()
        finally:
            await run.aclose()
        assert batch is not None and len(batch) == 1
        ok, value = batch[0]
        if not ok:
            raise value
        return value

    def _iterate_sync(
        self,
        fn: Callable[..., R],
        arg_tuples: Iterator[Any],
        kwargs: Mapping[str, Any] | None,
        ordered: bool,
        return_exceptions: bool,
        total: int | None,
    ) -> Iterator[R]:
        run = _MapRun(
            self, fn, arg_tuples, kwargs, ordered=ordered, progress=self.options.progress, total=total
        )
        try:
            while (batch := _loop.wait(run.next_batch())) is not None:
                yield from _values(batch, return_exceptions)
        finally:
            _loop.wait(run.aclose())

    async def _iterate_async(
        self,
        fn: Callable[..., R],
        arg_tuples: Iterator[Any],
        kwargs: Mapping[str, Any] | None,
        ordered: bool,
        return_exceptions: bool,
        total: int | None,
    ) -> AsyncIterator[R]:
        run = _MapRun(
            self, fn, arg_tuples, kwargs, ordered=ordered, progress=self.options.progress, total=total
        )
        try:
            while (batch := await _loop.wrap(run.next_batch())) is not None:
                for value in _values(batch, return_exceptions):
                    yield value
        finally:
            await _loop.wrap(run.aclose())


def _values(batch: list[tuple[bool, Any]], return_exceptions: bool) -> Iterator[Any]:
    """A batch's results; a failure is raised, or yielded in its place with `return_exceptions`."""
    for ok, value in batch:
        if not ok and not return_exceptions:
            raise value
        yield value


def _length(*iterables: Iterable[Any]) -> int | None:
    """How many calls a map will make, when every iterable knows its `len()` (a generator does not)."""
    try:
        return min(len(iterable) for iterable in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


def _need_iterables(verb: str, iterables: tuple[Any, ...]) -> None:
    if not iterables:
        raise ArgumentError(f"{verb}() needs at least one iterable of arguments, like the builtin map()")


class _MapRun:
    """One map in progress, driven from mini's private loop: feeds inputs lazily within the backend's
    capacity, retries, reorders, and hands back batches of `(ok, value_or_exception)`."""

    def __init__(
        self,
        apparatus: Apparatus,
        fn: Callable[..., Any],
        arg_tuples: Iterator[Any],
        kwargs: Mapping[str, Any] | None,
        *,
        ordered: bool,
        progress: bool | None,
        total: int | None = None,
        lend_buffers: bool = False,
    ) -> None:
        if not callable(fn):
            raise ArgumentError(f"the function to run must be callable, got {type(fn).__name__}")
        self._apparatus = apparatus
        self._fn = fn
        self._inputs = arg_tuples
        self._kwargs = dict(kwargs or {})
        self._ordered = ordered
        self._progress_enabled = progress
        self._total = total
        self._progress: Progress | None = None
        self._encoder = ArgumentEncoder(fn, out_of_band=apparatus._takes_buffers(), lend=lend_buffers)
        self._dispatch: Dispatch | None = None
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
        retries = apparatus.options.retries
        self._retries = 0 if apparatus._retries_handled_by_backend() else (retries or 0)

    async def next_batch(self) -> list[tuple[bool, Any]] | None:
        """The next results in output order, or None when the map is finished."""
        if self._dispatch is None:
            self._dispatch = await self._apparatus._open_dispatch(
                self._fn, dump_function(self._fn), ordered=self._ordered
            )
            self._progress = Progress(self._apparatus.name, self._progress_enabled, self._total)
        while True:
            self._feed()
            if self._consumed == self._submitted and self._exhausted:
                self._show(finished=True)
                return None
            ready = self._take_ready()
            if ready:
                return ready
            for outcome in await self._dispatch.outcomes():
                self._settle(outcome)
            self._show()

    def _feed(self) -> None:
        assert self._dispatch is not None
        room = self._dispatch.capacity() - (self._submitted - self._consumed)
        calls = []
        while room > 0 and not self._exhausted:
            try:
                item = next(self._inputs)
            except StopIteration:
                self._exhausted = True
                break
            args = tuple(item)
            index = next(self._counter)
            call = self._encoder.encode(index, args, self._kwargs)
            if self._retries:
                self._payloads[index] = call.copy()
            calls.append(call)
            room -= 1
        if calls:
            self._submitted += len(calls)
            self._dispatch.submit(calls)
        if self._exhausted and not self._finished:
            self._finished = True
            self._dispatch.finish()

    def _settle(self, outcome: Outcome) -> None:
        index = outcome.index
        if outcome.ok:
            value = loads(outcome.data, buffers=outcome.buffers)  # type: ignore[arg-type]
            self._done += 1
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
        if self._progress is not None and self._dispatch is not None:
            self._progress.update(
                submitted=self._submitted,
                running=self._dispatch.running(),
                done=self._done,
                failed=self._failed,
                finished=finished,
            )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._dispatch is not None:
                await self._dispatch.aclose()
        finally:
            if self._progress is not None:
                self._progress.close()
