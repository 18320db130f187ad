"""A third backend, written against `mini.backend` alone, to show that the interface is all a backend needs:
each call runs in a fresh Python process of its own. The behaviour suite runs on it unchanged.

    app = Apparatus("suite", SubprocessBackend(workers=2))

Timeouts and cancellation kill the call's process; a process that dies without answering fails its call with
`WorkerCrashed`; retries, ordering and everything else come from the base. Its volumes are folders of the
project's `.mini/volumes/`, and each call is told where they are (`CallContext.volumes`), as a backend whose
calls see volumes somewhere else than the caller would tell them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from mini.backend import Backend, Capabilities
from mini.dispatch import Dispatch
from mini.errors import CallTimeoutError, WorkerCrashed
from mini.options import Options
from mini.project import find_project_root, state_path, volume_folder
from mini.serialization import Call, Outcome
from mini.volumes import FolderStore, VolumeStore

# The child: read (function, payload, the volumes folder) from stdin, say it is ready (a call's timeout counts
# from then, as a container's does on Modal), run it with mini's own call runner, and write the outcome to the
# descriptor it was given as stdout. The user's prints go to stderr so that they cannot corrupt it.
_CHILD = """
import os, pickle, sys
answer = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
from mini.runtime import CallContext
from mini.serialization import Call, Outcome, encode_error, loads, run_call
fn_blob, index, payload, volumes = pickle.load(sys.stdin.buffer)
try:
    fn = loads(fn_blob)
except Exception as exc:
    outcome = Outcome(index, False, encode_error(exc))
else:
    answer.write(b"R")
    answer.flush()
    outcome = run_call(fn, Call(index, payload), context=CallContext(index, "subprocess", volumes=volumes))
answer.write(pickle.dumps((outcome.ok, outcome.data)))
answer.flush()
"""


class SubprocessBackend(Backend):
    kind: ClassVar[str] = "subprocess"
    capabilities = Capabilities(own_memory=True)

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers

    async def open_dispatch(
        self, fn: Callable[..., Any], fn_blob: bytes, options: Options, *, ordered: bool
    ) -> Dispatch:
        return _SubprocessDispatch(fn_blob, options, self.workers, state_path(find_project_root(), "volumes"))

    def volume_store(self, name: str) -> VolumeStore:
        return FolderStore(name, volume_folder(find_project_root(), name), backend=self.kind)

    def close(self) -> None:
        """Nothing outlives a map: each dispatch stops its own processes."""

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers}


class _SubprocessDispatch(Dispatch):
    def __init__(self, fn_blob: bytes, options: Options, workers: int, volumes: Path) -> None:
        self._fn_blob = fn_blob
        self._volumes = volumes
        self._timeout = options.timeout
        self._env = {
            **os.environ,
            **(options.env or {}),
            "PYTHONPATH": os.pathsep.join(p or "." for p in sys.path),
        }
        self._workers = workers
        self._queue: deque[Call] = deque()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._ready: list[Outcome] = []
        self._arrived = asyncio.Event()

    def capacity(self) -> int:
        # Submitted and not yet consumed, as the process pool allows: room for a later input that an earlier
        # one waits for.
        return 4 * self._workers

    def running(self) -> int:
        return len(self._running)

    def submit(self, calls: Sequence[Call]) -> None:
        self._queue.extend(calls)
        self._start_some()

    def _start_some(self) -> None:
        while self._queue and len(self._running) < self._workers:
            call = self._queue.popleft()
            self._running[call.index] = asyncio.ensure_future(self._run(call))

    async def _run(self, call: Call) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self._env,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(pickle.dumps((self._fn_blob, call.index, call.payload, self._volumes)))
            process.stdin.close()
            ready = await process.stdout.read(1)
            answer = ready if ready != b"R" else b""
            answer += await asyncio.wait_for(process.stdout.read(), self._timeout)
            outcome = self._outcome(call, answer, await process.wait())
        except asyncio.TimeoutError:
            outcome = Outcome(
                call.index, False, CallTimeoutError(f"call #{call.index} ran over {self._timeout:g}s")
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        del self._running[call.index]
        self._ready.append(outcome)
        self._arrived.set()
        self._start_some()

    @staticmethod
    def _outcome(call: Call, answer: bytes, code: int | None) -> Outcome:
        if not answer:
            return Outcome(
                call.index,
                False,
                WorkerCrashed(f"call #{call.index} ended with its process (exit code {code})"),
            )
        ok, data = pickle.loads(answer)
        return Outcome(call.index, ok, data)

    async def outcomes(self) -> list[Outcome]:
        while not self._ready:
            self._arrived.clear()
            await self._arrived.wait()
        ready, self._ready = self._ready, []
        return ready

    async def aclose(self) -> None:
        self._queue.clear()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
