"""`LocalApparatus`: run calls on this machine, the default backend (no account, no network)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mini import _loop
from mini.apparatus import Apparatus
from mini.dispatch import Dispatch
from mini.errors import OptionError
from mini.local.processes import ProcessPool, WorkerCommand, open_process_dispatch
from mini.local.threads import ThreadPool, open_thread_dispatch
from mini.options import Options

if TYPE_CHECKING:
    from mini.runs import Launcher

Mode = Literal["thread", "process", "isolated"]
MODES: tuple[str, ...] = ("thread", "process", "isolated")


class LocalApparatus(Apparatus):
    """Runs calls here: in threads (default), worker processes, or isolated worker processes.

    >>> with LocalApparatus("sweep", workers=2, mode="process") as app:
    ...     losses = list(app.map(train, configs))

    - `thread`: a thread pool in this process; fast to start and debuggable. A call that kills its
      process (`os._exit`, a segfault, the OOM killer) kills the caller with it, with no output: use
      `process` for such code.
    - `process`: spawned worker processes, reused across calls; a crashed worker fails only its call, with
      `WorkerCrashed`.
    - `isolated`: like `process`, but workers run in a virtual environment built from the project's image
      spec (locked pins only) with only the shipped `src/` packages importable, only the environment
      variables a container would get (`env=`, plus home, locale, temporary folder, network and GPU
      settings), in a fresh empty working directory. A missing dependency, an unshipped module, a variable
      of your shell or a file of your checkout fails here as it would remotely.

    Honours the options `timeout`, `retries` and `env`; other options are recorded and ignored.
    """

    def __init__(self, name: str = "local", workers: int = 1, mode: Mode = "thread", **options: Any) -> None:
        super().__init__(name, Options().merged(options))
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise OptionError(f"workers={workers!r} must be a whole number >= 1.")
        if mode not in MODES:
            raise OptionError(f"mode={mode!r} is not one of {', '.join(map(repr, MODES))}.")
        self.workers = workers
        self.mode = mode
        self._pools = _Pools(name, workers, mode)

    async def _open_dispatch(self, fn: Callable[..., Any], fn_blob: bytes, *, ordered: bool) -> Dispatch:
        # Ordering is the base's job here; outcomes are handed over as they complete.
        if self.mode == "thread":
            return open_thread_dispatch(self._pools.threads(), fn_blob, self.options)
        pool = await self._pools.processes()
        return open_process_dispatch(pool, fn_blob, self.options)

    def _takes_buffers(self) -> bool:
        return True

    def _dispatch_on_caller_thread(self) -> bool:
        return self.mode == "thread"

    def _callees_own_memory(self) -> bool:
        return self.mode != "thread"

    def close(self) -> None:
        self._pools.close()

    def _detached_launcher(self) -> Launcher:
        # Detached calls must outlive this process, so each gets its own process whatever the mode;
        # `isolated` keeps its environment.
        from mini.runs.local_launcher import LocalLauncher

        command = WorkerCommand(sys.executable)
        if self.mode == "isolated":
            from mini.image.materialise import prepare_isolated

            python, sources = prepare_isolated()
            command = WorkerCommand(Path(python), [sources])
        return LocalLauncher(command, self.workers, self.options, self.mode)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, workers={self.workers}, mode={self.mode!r})"


class _Pools:
    """The workers shared by an apparatus and its `.w()` variants, started on first use."""

    def __init__(self, name: str, workers: int, mode: str) -> None:
        self._name = name
        self._workers = workers
        self._mode = mode
        self._threads: ThreadPool | None = None
        self._processes: ProcessPool | None = None

    def threads(self) -> ThreadPool:
        if self._threads is None:
            self._threads = ThreadPool(self._workers, self._name)
        return self._threads

    async def processes(self) -> ProcessPool:
        if self._processes is None:
            command = await self._command()
            if self._processes is None:
                self._processes = ProcessPool(self._workers, command)
        return self._processes

    async def _command(self) -> WorkerCommand:
        if self._mode != "isolated":
            return WorkerCommand(sys.executable)
        from mini.image.materialise import prepare_isolated

        python, sources = await asyncio.get_running_loop().run_in_executor(None, prepare_isolated)
        return WorkerCommand(Path(python), [sources])

    def close(self) -> None:
        if self._threads is not None:
            self._threads.close()
        pool, self._processes = self._processes, None
        if pool is not None:
            _loop.close(pool.aclose())
