"""A third backend, written against `mini.backend` alone, to show that the interface is all a backend needs:
calls run in fresh Python processes of their own (one call per process, or `concurrent_inputs` calls in
threads of one process). The behaviour suite runs on it unchanged.

    app = Apparatus("suite", SubprocessBackend(workers=2))

Timeouts and cancellation kill a call's process (once no other call runs in it); a process that dies
without answering fails its calls with `WorkerCrashed`; what calls report, print and yield travels as
events. Retries, ordering and everything else come from the base. Its volumes are folders of the project's
`.mini/volumes/`, and each call is told where they are (`CallContext.volumes`), as a backend whose calls
see volumes somewhere else than the caller would tell them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from mini.backend import Backend, Capabilities
from mini.dispatch import CallEvent, Dispatch
from mini.errors import CallTimeoutError, WorkerCrashed
from mini.options import Options
from mini.project import find_project_root, state_path, volume_folder
from mini.serialization import Call, Outcome
from mini.volumes import FolderStore, VolumeStore

# The child: read (function, calls, the volumes folder) from stdin, run each call with mini's own call runner
# (in a thread each when there are several), and write length-prefixed frames to the descriptor it was given
# as stdout: "ready" once loaded (a call's timeout counts from then, as a container's does on Modal), events
# while calls run, and each call's outcome. The user's prints go to stderr so that they cannot corrupt it.
_CHILD = """
import os, pickle, struct, sys, threading
answer = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
lock = threading.Lock()

def send(frame):
    data = pickle.dumps(frame)
    with lock:
        answer.write(struct.pack(">I", len(data)) + data)
        answer.flush()

class Sink:
    def emit(self, index, kind, data):
        send(("event", index, kind, data))
    def item(self, index, data):
        send(("event", index, "item", data))

class Lines:
    # sys.stdout of the child: a call's printed lines become its events.
    def __init__(self, name):
        self.name = name
    def write(self, text):
        context = current()
        if context is None:
            return sys.__stderr__.write(text)
        for line in text.splitlines():
            context.events.emit(context.index, "output", (self.name, line))
        return len(text)
    def flush(self):
        pass

from mini.reports import placement_here
from mini.runtime import CallContext, current
sys.stdout, sys.stderr = Lines("stdout"), Lines("stderr")
from mini.serialization import Call, Outcome, encode_error, loads, run_call
fn_blob, calls, volumes = pickle.load(sys.stdin.buffer)
try:
    fn = loads(fn_blob)
except Exception as exc:
    for index, _ in calls:
        send(("outcome", index, False, encode_error(exc)))
    sys.exit(0)
send(("ready",))

def run(index, payload):
    send(("event", index, "started", placement_here()))
    context = CallContext(index, "subprocess", Sink(), volumes=volumes)
    outcome = run_call(fn, Call(index, payload), context=context)
    send(("outcome", index, outcome.ok, outcome.data))

threads = [threading.Thread(target=run, args=call) for call in calls]
for thread in threads:
    thread.start()
    if len(calls) == 1:
        thread.join()
for thread in threads:
    thread.join()
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
        self._per_process = options.concurrent_inputs or 1
        path = os.pathsep.join(p or "." for p in sys.path)
        self._env = {**os.environ, **(options.env or {}), "PYTHONPATH": path}
        self._workers = workers
        self._queue: deque[Call] = deque()
        self._running: dict[int, asyncio.Task[None]] = {}  # a process's task, by its first call
        self._inside: dict[int, int] = {}  # call -> the process running it (by first call)
        self._ready: list[Outcome | CallEvent] = []
        self._arrived = asyncio.Event()

    def capacity(self) -> int:
        # Submitted and not yet consumed, as the process pool allows: room for a later input that an earlier
        # one waits for.
        return 4 * self._workers * self._per_process

    def running(self) -> int:
        return len(self._inside)

    def submit(self, calls: Sequence[Call]) -> None:
        self._queue.extend(calls)
        self._start_some()

    def _start_some(self) -> None:
        while self._queue and len(self._running) < self._workers:
            group = [self._queue.popleft() for _ in range(min(self._per_process, len(self._queue)))]
            for call in group:
                self._inside[call.index] = group[0].index
            self._running[group[0].index] = asyncio.ensure_future(self._run(group))

    async def _run(self, group: list[Call]) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self._env,
            limit=1 << 26,
        )
        assert process.stdin is not None and process.stdout is not None
        waiting = {call.index for call in group}
        try:
            calls = [(call.index, call.payload) for call in group]
            process.stdin.write(pickle.dumps((self._fn_blob, calls, self._volumes)))
            process.stdin.close()
            deadline: float | None = None
            while waiting:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
                try:
                    frame = await asyncio.wait_for(_read_frame(process.stdout), remaining)
                except asyncio.TimeoutError:
                    for index in sorted(waiting):
                        self._deliver(
                            Outcome(
                                index, False, CallTimeoutError(f"call #{index} ran over {self._timeout:g}s")
                            )
                        )
                    return
                if frame is None:
                    code = await process.wait()
                    for index in sorted(waiting):
                        died = WorkerCrashed(
                            f"call #{index} ended with its process (exit code {code}) before answering"
                        )
                        self._deliver(Outcome(index, False, died))
                    return
                if frame[0] == "ready":
                    deadline = None if self._timeout is None else time.monotonic() + self._timeout
                elif frame[0] == "event":
                    _, index, kind, data = frame
                    self._deliver(CallEvent(index, kind, data))
                else:
                    _, index, ok, data = frame
                    waiting.discard(index)
                    self._deliver(Outcome(index, ok, data))
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            for call in group:
                self._inside.pop(call.index, None)
            self._running.pop(group[0].index, None)
            self._start_some()

    def _deliver(self, arrived: Outcome | CallEvent) -> None:
        self._ready.append(arrived)
        self._arrived.set()

    async def outcomes(self) -> list[Outcome | CallEvent]:
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


async def _read_frame(stream: asyncio.StreamReader) -> Any:
    try:
        (size,) = struct.unpack(">I", await stream.readexactly(4))
        return pickle.loads(await stream.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
