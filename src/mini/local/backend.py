"""`LocalBackend`: calls run on this machine, in threads, worker processes or isolated worker processes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mini import _loop
from mini.backend import Backend, Capabilities
from mini.errors import OptionError
from mini.local.processes import ProcessPool, WorkerCommand, open_process_dispatch
from mini.local.threads import ThreadPool, open_thread_dispatch

if TYPE_CHECKING:
    from mini.dispatch import Dispatch
    from mini.options import Options
    from mini.runs.launcher import Launcher

Mode = Literal["thread", "process", "isolated"]
MODES: tuple[str, ...] = ("thread", "process", "isolated")


class LocalBackend(Backend):
    """The workers shared by a `LocalApparatus` and its `.w()` variants, started on first use.

    >>> backend = LocalBackend("sweep", workers=2, mode="process")
    >>> app = Apparatus("sweep", backend)
    """

    kind: ClassVar[str] = "local"

    def __init__(self, name: str, workers: int = 1, mode: Mode = "thread") -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise OptionError(f"workers={workers!r} must be a whole number >= 1.")
        if mode not in MODES:
            raise OptionError(f"mode={mode!r} is not one of {', '.join(map(repr, MODES))}.")
        self.name = name
        self.workers = workers
        self.mode = mode
        threads = mode == "thread"
        # Threads wait only on mini Signals and share the caller's memory; worker processes are another
        # address space. Every local mode moves large buffers out-of-band.
        self.capabilities = Capabilities(buffers=True, own_memory=not threads, caller_thread=threads)
        self._threads: ThreadPool | None = None
        self._processes: ProcessPool | None = None

    async def open_dispatch(
        self, fn: Callable[..., Any], fn_blob: bytes, options: Options, *, ordered: bool
    ) -> Dispatch:
        # Ordering is the base's job here; outcomes are handed over as they complete.
        if self.mode == "thread":
            return open_thread_dispatch(self._thread_pool(), fn_blob, options)
        return open_process_dispatch(await self._process_pool(), fn_blob, options)

    def launcher(self, name: str, options: Options) -> Launcher:
        # Detached calls must outlive this process, so each gets its own process whatever the mode;
        # `isolated` keeps its environment.
        from mini.runs.local_launcher import LocalLauncher

        command = WorkerCommand(sys.executable)
        if self.mode == "isolated":
            from mini.image.materialise import prepare_isolated

            python, sources = prepare_isolated()
            command = WorkerCommand(Path(python), [sources])
        return LocalLauncher(command, self.workers, options, self.mode)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.close()
        pool, self._processes = self._processes, None
        if pool is not None:
            _loop.close(pool.aclose())

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "mode": self.mode}

    def _thread_pool(self) -> ThreadPool:
        if self._threads is None:
            self._threads = ThreadPool(self.workers, self.name)
        return self._threads

    async def _process_pool(self) -> ProcessPool:
        if self._processes is None:
            command = await self._command()
            if self._processes is None:
                self._processes = ProcessPool(self.workers, command)
        return self._processes

    async def _command(self) -> WorkerCommand:
        if self.mode != "isolated":
            return WorkerCommand(sys.executable)
        from mini.image.materialise import prepare_isolated

        python, sources = await asyncio.get_running_loop().run_in_executor(None, prepare_isolated)
        return WorkerCommand(Path(python), [sources])
