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
    from mini.volumes import VolumeStore

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
        # Threads share the caller's memory, worker processes are another address space; a single run can
        # be driven from the caller's thread in every mode (a process-mode one on a worker lent to it).
        # Every local mode moves large buffers out-of-band.
        self.capabilities = Capabilities(buffers=True, own_memory=not threads, caller_thread=True)
        # One pool per `concurrent_inputs` setting, so that a worker never mixes the two kinds of work.
        self._threads: dict[int, ThreadPool] = {}
        self._processes: dict[int, ProcessPool] = {}

    def check(self, options: Options) -> None:
        if options.volumes:
            raise OptionError(
                "volumes= mounts Modal volumes, which the local backend cannot provide. Use "
                "app.volume(NAME), the portable volume: a folder under .mini/volumes/ here, a Modal Volume "
                "on Modal, at NAME.path in every call."
            )

    def volume_store(self, name: str) -> VolumeStore:
        # Workers share this machine's filesystem, so the folder's own path is right in every call.
        from mini.project import find_project_root, volume_folder
        from mini.volumes import FolderStore

        return FolderStore(name, volume_folder(find_project_root(), name))

    async def open_dispatch(
        self, fn: Callable[..., Any], fn_blob: bytes, options: Options, *, ordered: bool
    ) -> Dispatch:
        # Ordering is the base's job here; outcomes are handed over as they complete.
        concurrent = options.concurrent_inputs or 1
        if self.mode == "thread":
            return open_thread_dispatch(self._thread_pool(concurrent), fn_blob, options)
        if _loop.driving() and concurrent not in self._processes:
            raise _loop.NeedsLoop  # its workers are started on mini's loop, by a first map or run
        return open_process_dispatch(await self._process_pool(concurrent), fn_blob, options)

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
        threads, self._threads = self._threads, {}
        for pool in threads.values():
            pool.close()
        processes, self._processes = self._processes, {}
        for process_pool in processes.values():
            _loop.close(process_pool.aclose())

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "mode": self.mode}

    def _thread_pool(self, concurrent: int) -> ThreadPool:
        # Thread mode has no worker processes: `concurrent_inputs` gives each worker that many threads.
        if concurrent not in self._threads:
            self._threads[concurrent] = ThreadPool(self.workers * concurrent, self.name)
        return self._threads[concurrent]

    async def _process_pool(self, concurrent: int) -> ProcessPool:
        if concurrent not in self._processes:
            command = await self._command()
            if concurrent not in self._processes:
                self._processes[concurrent] = ProcessPool(self.workers, command, concurrent)
        return self._processes[concurrent]

    async def _command(self) -> WorkerCommand:
        if self.mode != "isolated":
            return WorkerCommand(sys.executable)
        from mini.image.materialise import prepare_isolated

        python, sources = await asyncio.get_running_loop().run_in_executor(None, prepare_isolated)
        return WorkerCommand(Path(python), [sources])
