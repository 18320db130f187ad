"""`Apparatus`: the API experiment code is written against, the same on every backend.

An apparatus is a name, a `Backend` (where calls run, see `mini.backend`) and options. The semantics of a
map (lazy bounded input, ordering, retries, cancellation) live in `mini._maprun`; here are the user's API
and the bridge from its sync form to the async core.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from mini import _loop
from mini._maprun import MapRun, StreamRun, values
from mini.backend import Backend
from mini.errors import ArgumentError
from mini.options import Options

if TYPE_CHECKING:
    from mini.runs import Job, Run
    from mini.volumes import Volume

P = ParamSpec("P")
R = TypeVar("R")

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self


class Apparatus:
    """Where experiment code runs. Write against this; pick the backend when you run.

    >>> with LocalApparatus("demo", workers=2) as app:
    ...     squares = list(app.map(pow, range(4), [2] * 4))

    `LocalApparatus` and `ModalApparatus` build one for their backend; any `mini.backend.Backend` can be
    given directly: `Apparatus("debug", MyBackend())`.
    """

    def __init__(self, name: str, backend: Backend, options: Options | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ArgumentError(f"an apparatus needs a non-empty name, got {name!r}")
        if not isinstance(backend, Backend):
            raise ArgumentError(f"backend must be a mini.backend.Backend, got {type(backend).__name__}")
        self.name = name
        self.backend = backend
        self.options = options or Options()
        backend.check(self.options)

    # ----- options and lifecycle ---------------------------------------------------------------------

    def w(self, **options: Any) -> Self:
        """A variant of this apparatus with options applied; the receiver is unchanged.

        >>> fast = app.w(timeout=60, retries=2)
        >>> gpu = ModalApparatus("exp").w(gpu="A100")

        Known options: gpu, cpu, memory, timeout, retries, env, secrets, volumes, image, max_containers,
        region, startup_timeout, progress, cache (`cache="spirals-v1"`: calls found in the result cache are
        not run again). An unknown name raises `OptionError`.
        """
        variant = copy.copy(self)
        variant.options = self.options.merged(options)
        self.backend.check(variant.options)
        return variant

    def volume(self, name: str) -> Volume:
        """A named file store that outlives calls, made on first use; every call of this apparatus and of
        its `.w()` variants sees it at `.path` (see `mini.Volume`). A bad name is an `OptionError`.

        >>> ckpt = app.volume("checkpoints")
        >>> app.run(train, cfg, ckpt)          # train writes under ckpt.path
        >>> ckpt.listdir("")
        """
        from mini.volumes import Volume, check_name

        return Volume(name, self.backend.volume_store(check_name(name)))

    def close(self) -> None:
        """Stop workers and release resources (of this apparatus and its variants, which share them). The
        apparatus can be used again afterwards."""
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        settings = {**self.options.as_dict(), **self.backend.describe()}
        shown = "".join(f", {key}={value!r}" for key, value in settings.items())
        return f"{type(self).__name__}({self.name!r}{shown})"

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
        capabilities = self.backend.capabilities
        # The caller waits for the call to end, so where callees cannot write to its memory, argument
        # buffers can be sent from there rather than from a snapshot (one copy of a large array fewer).
        lend = capabilities.own_memory
        # A batched call waits for others, from other threads: it needs mini's loop.
        if capabilities.caller_thread and not self.options.max_batch_size:
            try:
                return _loop.drive(self._run_one(fn, args, kwargs, lend_buffers=lend))
            except _loop.NeedsLoop:
                pass  # nothing to run it on from here right now: mini's loop will find something
        return _loop.wait(self._run_one(fn, args, kwargs, lend_buffers=lend))

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

    # ----- generators -------------------------------------------------------------------------------

    def stream(self, fn: Callable[..., Iterator[R]], *args: Any, **kwargs: Any) -> Iterator[R]:
        """Call a generator function and yield its values as it produces them, where it runs.

        >>> for token in app.stream(generate, prompt="Once upon a time"):
        ...     print(token, end="")

        Leaving the loop early stops the generator (at its next `yield`). An `async def` generator works
        too; `astream` is the async twin.
        """
        run = StreamRun(self.backend, self.options, self.name, fn, args, kwargs)
        try:
            while (found := _loop.wait(run.next_values())) is not None:
                yield from found
        finally:
            _loop.close(run.aclose())

    async def astream(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Like `stream`, as an async iterator.

        >>> async for token in app.astream(generate, prompt="Once upon a time"):
        ...     print(token, end="")
        """
        run = StreamRun(self.backend, self.options, self.name, fn, args, kwargs)
        try:
            while (found := await _loop.wrap(run.next_values())) is not None:
                for value in found:
                    yield value
        finally:
            await _loop.wrap(run.aclose())

    # ----- detached runs -----------------------------------------------------------------------------

    def spawn(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Start one call that outlives this process; returns its handle at once.

        >>> job = app.spawn(train, lr=1e-3)
        >>> Job.open(job.id).result()        # later, from any process on this checkout
        """
        launcher = self.backend.launcher(self.name, self.options)
        return launcher.start(self.name, fn, [args], kwargs, kind="spawn")[0]

    def spawn_map(
        self, fn: Callable[..., R], *iterables: Iterable[Any], kwargs: Mapping[str, Any] | None = None
    ) -> Run[R]:
        """Start `fn` over the zipped iterables as detached calls, like `map`; returns the run at once.

        >>> run = app.spawn_map(train, [1e-3, 1e-4], kwargs={"steps": 100})
        >>> Run.open(run.id).results()       # later; `mini status`/`mini results RUN` from a shell
        """
        _need_iterables("spawn_map", iterables)
        launcher = self.backend.launcher(self.name, self.options)
        return launcher.start(self.name, fn, zip(*iterables, strict=False), kwargs, kind="spawn_map")

    # ----- shared machinery --------------------------------------------------------------------------

    async def _run_one(
        self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any], lend_buffers: bool = False
    ) -> R:
        run = MapRun(
            self.backend,
            self.options,
            self.name,
            fn,
            iter([args]),
            kwargs,
            ordered=True,
            progress=False,
            total=1,
            lend_buffers=lend_buffers,
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
        run = self._map_run(fn, arg_tuples, kwargs, ordered, total)
        try:
            while (batch := _loop.wait(run.next_batch())) is not None:
                yield from values(batch, return_exceptions)
        finally:
            # `close`, not `wait`: a generator left unfinished may be finalised on mini's loop thread.
            _loop.close(run.aclose())

    async def _iterate_async(
        self,
        fn: Callable[..., R],
        arg_tuples: Iterator[Any],
        kwargs: Mapping[str, Any] | None,
        ordered: bool,
        return_exceptions: bool,
        total: int | None,
    ) -> AsyncIterator[R]:
        run = self._map_run(fn, arg_tuples, kwargs, ordered, total)
        try:
            while (batch := await _loop.wrap(run.next_batch())) is not None:
                for value in values(batch, return_exceptions):
                    yield value
        finally:
            await _loop.wrap(run.aclose())

    def _map_run(
        self,
        fn: Callable[..., Any],
        arg_tuples: Iterator[Any],
        kwargs: Mapping[str, Any] | None,
        ordered: bool,
        total: int | None,
    ) -> MapRun:
        options = self.options
        return MapRun(
            self.backend,
            options,
            self.name,
            fn,
            arg_tuples,
            kwargs,
            ordered=ordered,
            progress=options.progress,
            total=total,
        )


def _length(*iterables: Iterable[Any]) -> int | None:
    """How many calls a map will make, when every iterable knows its `len()` (a generator does not)."""
    try:
        return min(len(iterable) for iterable in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


def _need_iterables(verb: str, iterables: tuple[Any, ...]) -> None:
    if not iterables:
        raise ArgumentError(f"{verb}() needs at least one iterable of arguments, like the builtin map()")
