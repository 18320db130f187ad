"""Runners: mini's `LocalApparatus` in each mode and the pools a user would pick instead, behind one face.

Every runner has 2 workers, is started and warmed before anything is timed, and stays open for the whole
run so that measurements of different runners can be interleaved.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import cloudpickle
from joblib import Parallel, delayed

from bench import tasks
from mini import LocalApparatus

WORKERS = 2


class Runner(ABC):
    """Runs one call or a map on some pool; `close()` stops it.

    >>> runner = MiniRunner("process")
    >>> runner.run(pow, 2, 3), runner.map(abs, [-1, -2])
    (8, [1, 2])
    """

    name: str

    @abstractmethod
    def run(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    @abstractmethod
    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]: ...

    @abstractmethod
    def close(self) -> None: ...


class MiniRunner(Runner):
    def __init__(self, mode: str) -> None:
        self.name = f"mini {mode}"
        self._app = LocalApparatus("bench", workers=WORKERS, mode=mode)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._app.run(fn, *args)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        return list(self._app.map(fn, items))

    def close(self) -> None:
        self._app.close()


class SerialRunner(Runner):
    """Calls the function here, one call after another: the baseline for speedups and transport costs."""

    name = "serial"

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        return [fn(item) for item in items]

    def close(self) -> None:
        pass


class _ExecutorRunner(Runner):
    def __init__(self, name: str, executor: Executor) -> None:
        self.name = name
        self._executor = executor

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executor.submit(fn, *args).result()

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        # chunksize 1, the default: the baseline for what adaptive batching must beat by 30x.
        return list(self._executor.map(fn, items, chunksize=1))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def thread_pool() -> Runner:
    return _ExecutorRunner(f"ThreadPool({WORKERS})", ThreadPoolExecutor(WORKERS))


def process_pool() -> Runner:
    # Spawned like mini's workers: forking a process that already runs mini's loop thread is unsafe.
    context = multiprocessing.get_context("spawn")
    return _ExecutorRunner(f"ProcessPool({WORKERS})", ProcessPoolExecutor(WORKERS, mp_context=context))


class JoblibRunner(Runner):
    """joblib's loky backend, one `Parallel` kept open so its workers are reused (joblib's fast path)."""

    def __init__(self) -> None:
        self.name = f"joblib loky({WORKERS})"
        self._parallel = Parallel(n_jobs=WORKERS, backend="loky")
        self._parallel.__enter__()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._parallel([delayed(fn)(*args)])[0]

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        return self._parallel(delayed(fn)(item) for item in items)

    def close(self) -> None:
        self._parallel.__exit__(None, None, None)


def open_all() -> list[Runner]:
    """Every runner, started and warmed (both workers of each pool up)."""
    runners = [MiniRunner("thread"), MiniRunner("process"), thread_pool(), process_pool(), JoblibRunner()]
    for runner in runners:
        runner.map(tasks.spin, [100_000] * 4 * WORKERS)
        runner.run(tasks.noop, 0)
    return runners


class IsolatedRunner(MiniRunner):
    """mini in isolated mode. Its workers import only shipped sources, so the benchmark's functions travel
    by value, as a notebook's would (only while this runner runs: the others keep them by reference)."""

    def __init__(self) -> None:
        super().__init__("isolated")

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with _by_value(tasks):
            return super().run(fn, *args)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        with _by_value(tasks):
            return super().map(fn, items)


@contextlib.contextmanager
def _by_value(module: Any) -> Iterator[None]:
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def open_isolated() -> Runner:
    """mini in isolated mode (its environment built, or found cached), started and warmed."""
    runner = IsolatedRunner()
    runner.map(tasks.spin, [100_000] * 4 * WORKERS)
    return runner
