"""Process mode: calls run in worker processes (spawned, never forked), reused across calls and maps.

A worker that dies fails only the call it was running; the pool starts a replacement and the map goes on.
Tiny calls are batched adaptively so that dispatch overhead does not dominate; a batch whose worker died
is re-run one call at a time so that only the culprit fails.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import itertools
import math
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from mini.dispatch import Dispatch
from mini.errors import CallTimeoutError, WorkerCrashed
from mini.local import _framing
from mini.local._isolation import isolated_environment
from mini.options import Options
from mini.serialization import Call, Outcome, fresh_buffer

# A batch of tiny calls should take about this long, so per-message costs stay small next to the work.
_BATCH_SECONDS = 0.02
_MAX_BATCH = 512
_SOCKET_BUFFER = 1 << 20
# How many functions a worker keeps loaded. The pool alone decides which (`_Worker.plan_load`) and tells the
# worker what to drop, so the two sides cannot disagree about which functions a worker holds.
FUNCTIONS_PER_WORKER = 16
_ECHO_CHUNK = 1 << 16
_ECHO_DRAIN = 1.0  # seconds to wait for a dead worker's last output; a process it started may hold its pipes
_keys = itertools.count(1)


class WorkerCommand:
    """How to start a worker: which interpreter, and what it may import."""

    def __init__(self, python: str | Path = sys.executable, pythonpath: Sequence[str | Path] | None = None):
        self.python = str(python)
        self.isolated = pythonpath is not None
        self.pythonpath = [str(p) for p in pythonpath] if pythonpath is not None else _inherited_path()

    def environment(self) -> dict[str, str]:
        """The worker's environment variables: this process's, or for an isolated worker only what a
        container would have (see `mini.local._isolation`)."""
        if self.isolated:
            return isolated_environment(self.python, self.pythonpath)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(self.pythonpath)
        return env


def _inherited_path() -> list[str]:
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process, sock: socket.socket, workdir: str | None) -> None:
        self.process = process
        self._sock = sock
        self._workdir = workdir
        self._loop = asyncio.get_running_loop()
        self._busy = False
        self._killed = False
        self._loaded: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self._echoes = [_echo(process.stdout, "stdout"), _echo(process.stderr, "stderr")]

    @classmethod
    async def start(cls, command: WorkerCommand) -> _Worker:
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):
            # Fewer, larger chunks for big buffers: a 100 MB array crosses in about 25% less time.
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        # An isolated worker starts in a fresh empty folder, as a container does: not in your checkout.
        workdir = tempfile.mkdtemp(prefix="mini-worker-") if command.isolated else None
        try:
            process = await asyncio.create_subprocess_exec(
                command.python,
                "-m",
                "mini.local._worker",
                str(theirs.fileno()),
                *(["--isolated"] if command.isolated else []),
                pass_fds=[theirs.fileno()],
                env={**command.environment(), "PYTHONUNBUFFERED": "1"},  # its prints show as they happen
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except BaseException:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = cls(process, ours, workdir)
        try:
            hello = await worker._receive()
        except BaseException:
            # Cancelled while it started (its pool is closing): it must not live on to find no one there.
            worker.kill()
            raise
        if hello is None or hello[0] != "ready":
            worker.kill()
            detail = hello[1] if hello else f"{await worker.exit_status()}; its stderr is above"
            raise WorkerCrashed(
                f"a worker process could not start with {command.python} ({detail}). "
                "Check that this interpreter can import mini and cloudpickle."
            )
        return worker

    def plan_load(self, key: int) -> tuple[bool, list[int]]:
        """For a batch of function `key`: whether to send the function with it, and which functions the
        worker must drop first (least recently used) to stay within `FUNCTIONS_PER_WORKER`.

        Recorded as sent at once: a worker that then fails to take the batch is discarded, never reused.
        """
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return False, []
        dropped = []
        while len(self._loaded) >= FUNCTIONS_PER_WORKER:
            dropped.append(self._loaded.popitem(last=False)[0])
        self._loaded[key] = None
        return True, dropped

    async def exchange(self, message: object) -> tuple[list[tuple[int, bool, bytes, list]], float] | None:
        """Send a batch and wait for its reply; None if the worker died first."""
        with self._in_use():
            try:
                for frame in _framing.frames(message):
                    await self._loop.sock_sendall(self._sock, frame)
            except OSError:
                return None
            return await self._receive()

    async def _receive(self):
        # Raw socket operations rather than streams: a 100 MB buffer is read straight into the memory its
        # array will own, and sent without being copied into a transport's buffer first.
        with self._in_use():
            try:
                header = await self._read(bytearray(_framing.HEADER.size))
                rest = await self._read(bytearray(_framing.rest_size(header)))
                buffers = [await self._read(fresh_buffer(n)) for n in _framing.buffer_sizes(header, rest)]
            except (OSError, EOFError):
                return None
            return _framing.decode(header, rest, buffers)

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        # A socket closed while the loop waits on it would leave that wait pending forever, so `kill` only
        # shuts it down (the wait sees the end) and the socket is closed once nothing waits on it.
        outer, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = outer
            if self._killed and not outer:
                self._sock.close()

    async def _read(self, buffer):
        view = memoryview(buffer).cast("B")
        filled, size = 0, view.nbytes
        while filled < size:
            got = await self._loop.sock_recv_into(self._sock, view[filled:])
            if got == 0:
                raise EOFError
            filled += got
        return buffer

    def kill(self) -> None:
        self._killed = True
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if not self._busy:
            self._sock.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    async def echoed(self) -> None:
        """Wait (briefly) until everything the worker printed has been passed on."""
        await asyncio.wait(self._echoes, timeout=_ECHO_DRAIN)

    async def exit_status(self) -> str:
        code = await self.process.wait()
        await self.echoed()  # so that its stderr is above whatever is said about its death
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (SIGKILL is what the OOM killer sends)" if name == "SIGKILL" else ""
            return f"killed by {name}{hint}"
        return f"exit code {code}"


def _echo(stream: asyncio.StreamReader | None, name: str) -> asyncio.Task[None]:
    """Pass what a worker prints on to this process's own `sys.stdout` or `sys.stderr` as it comes, so it
    goes where this process's output goes: above a progress bar, into a notebook's cell."""

    async def copy() -> None:
        assert stream is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while chunk := await stream.read(_ECHO_CHUNK):
            target = getattr(sys, name)
            with contextlib.suppress(AttributeError, OSError, ValueError):  # no stream, or a closed one
                target.write(decoder.decode(chunk))
                target.flush()

    return asyncio.ensure_future(copy())


class ProcessPool:
    """Worker processes shared by every map of one `LocalApparatus` and its `.w()` variants."""

    def __init__(self, workers: int, command: WorkerCommand) -> None:
        self.workers = workers
        self._command = command
        self._dispatches: deque[_ProcessDispatch] = deque()
        self._work = asyncio.Event()
        self._drivers: list[asyncio.Task[None]] = []
        self._busy: dict[int, tuple[_Worker, _ProcessDispatch]] = {}

    def wake(self, dispatch: _ProcessDispatch) -> None:
        if dispatch not in self._dispatches:
            self._dispatches.append(dispatch)
        self._work.set()
        if not self._drivers:
            self._drivers = [asyncio.create_task(self._drive(slot)) for slot in range(self.workers)]

    async def forget(self, dispatch: _ProcessDispatch) -> None:
        """Drop a closed map's queued calls and kill the workers running its calls."""
        with contextlib.suppress(ValueError):
            self._dispatches.remove(dispatch)
        killed = [worker for worker, owner in list(self._busy.values()) if owner is dispatch]
        for worker in killed:
            worker.kill()
        await asyncio.gather(*(worker.process.wait() for worker in killed))

    async def _next_batch(self) -> tuple[_ProcessDispatch, list[Call]]:
        while True:
            for _ in range(len(self._dispatches)):
                dispatch = self._dispatches[0]
                self._dispatches.rotate(-1)
                batch = dispatch.take_batch()
                if batch:
                    return dispatch, batch
                if not dispatch.has_queued():
                    self._dispatches.remove(dispatch)
                    break
            else:
                self._work.clear()
                await self._work.wait()

    async def _drive(self, slot: int) -> None:
        worker: _Worker | None = None
        try:
            while True:
                dispatch, batch = await self._next_batch()
                if worker is None:
                    try:
                        worker = await _Worker.start(self._command)
                    except WorkerCrashed as error:
                        dispatch.fail(batch, error)
                        continue
                self._busy[slot] = (worker, dispatch)
                try:
                    worker = await dispatch.run_batch(worker, batch)
                finally:
                    self._busy.pop(slot, None)
        finally:
            if worker is not None:
                worker.kill()
                await worker.echoed()

    async def aclose(self) -> None:
        drivers, self._drivers = self._drivers, []
        for task in drivers:
            task.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        self._dispatches.clear()


class _ProcessDispatch(Dispatch):
    def __init__(self, pool: ProcessPool, fn_blob: bytes, options: Options) -> None:
        self._pool = pool
        self._key = next(_keys)
        self._fn_blob = fn_blob
        self._env = dict(options.env) if options.env else None
        self._timeout = options.timeout
        self._queue: deque[Call] = deque()
        self._solo: set[int] = set()  # re-run alone after a batch's worker died
        self._ready: list[Outcome] = []
        self._arrived = asyncio.Event()
        self._seconds_per_call: float | None = None
        self._running = 0
        self._closed = False

    def _target_batch(self) -> int:
        if self._timeout is not None or self._seconds_per_call is None:
            return 1
        return max(1, min(int(_BATCH_SECONDS / max(self._seconds_per_call, 1e-7)), _MAX_BATCH))

    def _batch_size(self) -> int:
        # Leave work for every worker rather than handing one worker the whole queue.
        return max(1, min(self._target_batch(), math.ceil(len(self._queue) / self._pool.workers)))

    def capacity(self) -> int:
        return max(4 * self._pool.workers, 3 * self._pool.workers * self._target_batch())

    def running(self) -> int:
        return self._running

    def has_queued(self) -> bool:
        return bool(self._queue) and not self._closed

    def submit(self, calls: Sequence[Call]) -> None:
        self._queue.extend(calls)
        self._pool.wake(self)

    def take_batch(self) -> list[Call]:
        if self._closed or not self._queue:
            return []
        if self._queue[0].index in self._solo:
            return [self._queue.popleft()]
        batch: list[Call] = []
        for _ in range(self._batch_size()):
            if not self._queue or self._queue[0].index in self._solo:
                break
            batch.append(self._queue.popleft())
        return batch

    async def run_batch(self, worker: _Worker, batch: list[Call]) -> _Worker | None:
        """Run `batch` on `worker`; return the worker if it is still usable."""
        if self._closed:  # closed while the worker was starting
            return worker
        send_function, dropped = worker.plan_load(self._key)
        message = (
            self._key,
            self._fn_blob if send_function else None,
            dropped,
            self._env,
            [(c.index, c.payload, _out_of_band(c.buffers)) for c in batch],
        )
        self._running += len(batch)
        try:
            if self._timeout is None:
                reply = await worker.exchange(message)
            else:
                try:
                    reply = await asyncio.wait_for(worker.exchange(message), self._timeout)
                except asyncio.TimeoutError:
                    worker.kill()
                    await worker.process.wait()
                    self._deliver([Outcome(batch[0].index, False, self._timeout_error(batch[0]))])
                    return None
        finally:
            self._running -= len(batch)
        if reply is None:
            await self._worker_died(worker, batch)
            return None
        if self._solo:
            self._solo.difference_update(call.index for call in batch)
        results, elapsed = reply
        per_call = elapsed / len(batch)
        previous = self._seconds_per_call
        self._seconds_per_call = per_call if previous is None else 0.7 * previous + 0.3 * per_call
        self._deliver([Outcome(index, ok, data, buffers) for index, ok, data, buffers in results])
        return worker

    async def _worker_died(self, worker: _Worker, batch: list[Call]) -> None:
        status = await worker.exit_status()
        worker.kill()
        if self._closed:
            return
        if len(batch) > 1:
            # We cannot tell which call of the batch killed it: re-run them one at a time.
            self._solo.update(call.index for call in batch)
            self._queue.extendleft(reversed(batch))
            self._pool.wake(self)
            return
        call = batch[0]
        self._solo.discard(call.index)
        error = WorkerCrashed(
            f"the worker process running call #{call.index} died ({status}) before returning a result. "
            "The pool has replaced it; other calls are unaffected."
        )
        self._deliver([Outcome(call.index, False, error)])

    def fail(self, batch: list[Call], error: BaseException) -> None:
        self._deliver([Outcome(call.index, False, error) for call in batch])

    def _timeout_error(self, call: Call) -> CallTimeoutError:
        return CallTimeoutError(
            f"call #{call.index} ran over its timeout of {self._timeout:g}s; its worker process was killed."
        )

    def _deliver(self, outcomes: list[Outcome]) -> None:
        if self._closed:
            return
        self._ready.extend(outcomes)
        self._arrived.set()

    async def outcomes(self) -> list[Outcome]:
        while not self._ready:
            self._arrived.clear()
            await self._arrived.wait()
        ready, self._ready = self._ready, []
        return ready

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        await self._pool.forget(self)


def _out_of_band(buffers: Sequence[object]) -> list[pickle.PickleBuffer] | tuple[()]:
    return [pickle.PickleBuffer(b) for b in buffers] if buffers else ()  # type: ignore[arg-type]


def open_process_dispatch(pool: ProcessPool, fn_blob: bytes, options: Options) -> Dispatch:
    return _ProcessDispatch(pool, fn_blob, options)
