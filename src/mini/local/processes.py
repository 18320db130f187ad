"""Process mode: calls run in worker processes (spawned, never forked), reused across calls and maps.

A worker that dies fails only the call it was running; the pool starts a replacement and the map goes on.
Tiny calls are batched adaptively so that dispatch overhead does not dominate; a batch whose worker died
is re-run one call at a time so that only the culprit fails.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mini.dispatch import CallEvent, Dispatch
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
_batches = itertools.count(1)


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
    """One worker process and its socket. A reader task takes every message the worker sends: replies go to
    the batch waiting for them, events to the dispatch whose call sent them."""

    def __init__(self, process: asyncio.subprocess.Process, sock: socket.socket, workdir: str | None) -> None:
        self.process = process
        self.placement: Any = None  # where its calls run: told in its hello
        self._sock = sock
        self._workdir = workdir
        self._loop = asyncio.get_running_loop()
        self._sending = asyncio.Lock()
        self._waiting: dict[int, tuple[asyncio.Future[Any], Any]] = {}  # batch -> (its reply, its dispatch)
        self._loaded: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self._echoes = [_echo(process.stdout, "stdout"), _echo(process.stderr, "stderr")]
        self._reader: asyncio.Future[None] | None = None
        self.running_at_end = 0  # batches it was running when its socket closed (it died, or was killed)

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
        # Made at once, so that what it prints is passed on (to its end) even if it never says hello.
        worker = cls(process, ours, workdir)
        try:
            hello = await _receive(worker._loop, ours)
        except BaseException:
            # Cancelled while it started (its pool is closing): it must not live on to find no one there, and
            # it is reaped here, so that neither it nor its echoes outlive the loop.
            worker.kill()
            with contextlib.suppress(BaseException):
                await worker.exit_status()
            raise
        if hello is None or hello[0] != "ready":
            worker.kill()
            detail = hello[1] if hello else f"{await worker.exit_status()}; its stderr is above"
            raise WorkerCrashed(
                f"a worker process could not start with {command.python} ({detail}). "
                "Check that this interpreter can import mini and cloudpickle."
            )
        worker.placement = hello[2]
        worker._reader = asyncio.ensure_future(worker._read_all())
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

    async def exchange(self, batch: int, message: object, owner: Any) -> tuple[list[Any], float] | None:
        """Send a batch and wait for its reply, its calls' events going to `owner.take_events`; None if
        the worker died first."""
        reply: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[batch] = (reply, owner)
        try:
            if not await self.send(message):
                return None
            return await reply
        finally:
            self._waiting.pop(batch, None)

    async def send(self, message: object) -> bool:
        """Send one message whole; False if the worker is gone."""
        async with self._sending:
            try:
                for frame in _framing.frames(message):
                    await self._loop.sock_sendall(self._sock, frame)
            except OSError:
                return False
        return True

    async def _read_all(self) -> None:
        try:
            while (message := await _receive(self._loop, self._sock)) is not None:
                if message[0] == "reply":
                    _, batch, results, elapsed, events = message
                    waiting = self._waiting.get(batch)
                    if waiting is not None:
                        reply, owner = waiting
                        owner.take_events(events, self.placement)
                        if not reply.done():
                            reply.set_result((results, elapsed))
                else:
                    self._route(message[1])
        finally:
            self._sock.close()
            self.running_at_end = len(self._waiting)
            for reply, _ in self._waiting.values():
                if not reply.done():
                    reply.set_result(None)

    def _route(self, events: list[tuple[int, int, str, Any]]) -> None:
        by_batch: dict[int, list[tuple[int, int, str, Any]]] = {}
        for event in events:
            by_batch.setdefault(event[0], []).append(event)
        for batch, mine in by_batch.items():
            owner = self._waiting.get(batch, (None, None))[1]
            if owner is not None:
                owner.take_events(mine, self.placement)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        # Shut down, not closed, while the reader waits on it: it sees the end, and closes the socket.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._reader is None:
            self._sock.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    async def echoed(self) -> None:
        """Wait (briefly) until everything the worker printed has been passed on."""
        await asyncio.wait(self._echoes, timeout=_ECHO_DRAIN)

    async def exit_status(self) -> str:
        status = await _exit_status(self.process)
        await self.echoed()  # so that its stderr is above whatever is said about its death
        return status


async def _exit_status(process: asyncio.subprocess.Process) -> str:
    code = await process.wait()
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (SIGKILL is what the OOM killer sends)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Any:
    """The next message from a worker, or None at its end. Raw socket operations rather than streams: a
    100 MB buffer is read straight into the memory its array will own."""
    try:
        header = await _read(loop, sock, bytearray(_framing.HEADER.size))
        rest = await _read(loop, sock, bytearray(_framing.rest_size(header)))
        buffers = [await _read(loop, sock, fresh_buffer(n)) for n in _framing.buffer_sizes(header, rest)]
    except (OSError, EOFError):
        return None
    return _framing.decode(header, rest, buffers)


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket, buffer: Any) -> Any:
    view = memoryview(buffer).cast("B")
    filled, size = 0, view.nbytes
    while filled < size:
        got = await loop.sock_recv_into(sock, view[filled:])
        if got == 0:
            raise EOFError
        filled += got
    return buffer


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
    """Worker processes shared by every map of one `LocalApparatus` and its `.w()` variants that runs
    `concurrent` inputs per worker at once (a pool per setting: a worker never mixes the two kinds).

    One driver per input a worker may run at once takes batches from the maps that have calls queued;
    the drivers of a concurrent pool share the pool's worker processes.
    """

    def __init__(self, workers: int, command: WorkerCommand, concurrent: int = 1) -> None:
        self.workers = workers
        self.concurrent = concurrent
        self._command = command
        self._dispatches: deque[_ProcessDispatch] = deque()
        self._work = asyncio.Event()
        self._drivers: list[asyncio.Task[None]] = []
        self._busy: dict[int, tuple[_Worker, _ProcessDispatch]] = {}
        self._processes: list[_Worker | None] = [None] * workers
        self._starting = [asyncio.Lock() for _ in range(workers)]

    def wake(self, dispatch: _ProcessDispatch) -> None:
        if dispatch not in self._dispatches:
            self._dispatches.append(dispatch)
        self._work.set()
        if not self._drivers:
            slots = range(self.workers * self.concurrent)
            self._drivers = [asyncio.create_task(self._drive(slot)) for slot in slots]

    async def forget(self, dispatch: _ProcessDispatch) -> None:
        """Drop a closed map's queued calls and kill the workers running its calls."""
        with contextlib.suppress(ValueError):
            self._dispatches.remove(dispatch)
        killed = {id(worker): worker for worker, owner in list(self._busy.values()) if owner is dispatch}
        for worker in killed.values():
            self._discard(worker)
        await asyncio.gather(*(worker.process.wait() for worker in killed.values()))

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        for position, running in enumerate(self._processes):
            if running is worker:
                self._processes[position] = None

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

    async def _worker(self, position: int) -> _Worker:
        async with self._starting[position]:
            worker = self._processes[position]
            if worker is None or worker.process.returncode is not None:
                worker = self._processes[position] = await _Worker.start(self._command)
            return worker

    async def _drive(self, slot: int) -> None:
        position = slot % self.workers
        try:
            while True:
                dispatch, batch = await self._next_batch()
                if self.concurrent > 1 and dispatch.is_solo(batch):
                    await self._run_alone(slot, dispatch, batch)
                    continue
                try:
                    worker = await self._worker(position)
                except WorkerCrashed as error:
                    dispatch.fail(batch, error)
                    continue
                self._busy[slot] = (worker, dispatch)
                try:
                    if not await dispatch.run_batch(worker, batch):
                        self._discard(worker)
                finally:
                    self._busy.pop(slot, None)
        finally:
            ending = self._processes[position]
            if ending is not None and slot < self.workers:  # the first driver of a worker ends it
                self._processes[position] = None
                ending.kill()
                await ending.echoed()

    async def _run_alone(self, slot: int, dispatch: _ProcessDispatch, batch: list[Call]) -> None:
        # A suspect of a crash on a concurrent pool runs on a worker of its own, so that if it kills its
        # process no other input goes with it.
        try:
            worker = await _Worker.start(self._command)
        except WorkerCrashed as error:
            dispatch.fail(batch, error)
            return
        self._busy[slot] = (worker, dispatch)
        try:
            await dispatch.run_batch(worker, batch)
        finally:
            self._busy.pop(slot, None)
            worker.kill()
            await worker.process.wait()
            await worker.echoed()

    async def aclose(self) -> None:
        drivers, self._drivers = self._drivers, []
        for task in drivers:
            task.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        for worker in self._processes:
            if worker is not None:
                worker.kill()
        self._processes = [None] * self.workers
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
        self._ready: list[Outcome | CallEvent] = []
        self._arrived = asyncio.Event()
        self._seconds_per_call: float | None = None
        self._running = 0
        self._settled: set[int] = set()  # of a concurrent pool, settled (by a timeout) before they answered
        self._streams: dict[int, tuple[_Worker, int]] = {}  # call -> (worker, batch) of a generator's call
        self._closed = False

    def _target_batch(self) -> int:
        if self._timeout is not None or self._seconds_per_call is None or self._pool.concurrent > 1:
            return 1
        return max(1, min(int(_BATCH_SECONDS / max(self._seconds_per_call, 1e-7)), _MAX_BATCH))

    def _batch_size(self) -> int:
        # Leave work for every worker rather than handing one worker the whole queue.
        return max(1, min(self._target_batch(), math.ceil(len(self._queue) / self._pool.workers)))

    def capacity(self) -> int:
        slots = self._pool.workers * self._pool.concurrent
        return max(4 * slots, 3 * slots * self._target_batch())

    def running(self) -> int:
        return self._running

    def has_queued(self) -> bool:
        return bool(self._queue) and not self._closed

    def submit(self, calls: Sequence[Call]) -> None:
        self._queue.extend(calls)
        self._pool.wake(self)

    def is_solo(self, batch: list[Call]) -> bool:
        """Whether `batch` is a suspect of a crash, to be run alone."""
        return len(batch) == 1 and batch[0].index in self._solo

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

    async def run_batch(self, worker: _Worker, batch: list[Call]) -> bool:
        """Run `batch` on `worker`; return whether the worker is still usable."""
        if self._closed:  # closed while the worker was starting
            return True
        send_function, dropped = worker.plan_load(self._key)
        number = next(_batches)
        message = (
            "run",
            number,
            self._key,
            self._fn_blob if send_function else None,
            dropped,
            self._env,
            self._pool.concurrent > 1,
            [(c.index, c.payload, _out_of_band(c.buffers)) for c in batch],
        )
        for call in batch:
            self._streams[call.index] = (worker, number)
        self._running += len(batch)
        try:
            try:
                exchange = worker.exchange(number, message, self)
                reply = await (
                    exchange if self._timeout is None else asyncio.wait_for(exchange, self._timeout)
                )
            except asyncio.TimeoutError:
                self._deliver([Outcome(batch[0].index, False, self._timeout_error(batch[0]))])
                if self._pool.concurrent > 1:
                    # Other inputs run on this worker: it goes on, and this call's late answer is ignored.
                    self._settled.add(batch[0].index)
                    return True
                worker.kill()
                await worker.process.wait()
                return False
        finally:
            self._running -= len(batch)
            for call in batch:
                self._streams.pop(call.index, None)
        if reply is None:
            await self._worker_died(worker, batch)
            return False
        if self._solo:
            self._solo.difference_update(call.index for call in batch)
        results, elapsed = reply
        per_call = elapsed / len(batch)
        previous = self._seconds_per_call
        self._seconds_per_call = per_call if previous is None else 0.7 * previous + 0.3 * per_call
        self._deliver([Outcome(index, ok, data, buffers) for index, ok, data, buffers in results])
        return True

    def take_events(self, events: list[tuple[int, int, str, Any]], placement: Any) -> None:
        """Events the worker sent for this map's calls (see `mini.local._worker`)."""
        arrived: list[Outcome | CallEvent] = []
        for _, index, kind, data in events:
            if kind == "started":
                data = dataclasses.replace(placement, started=data)
            arrived.append(CallEvent(index, kind, data))  # type: ignore[arg-type]
        self._deliver(arrived)

    def consumed(self, index: int, items: int) -> None:
        stream = self._streams.get(index)
        if stream is not None:
            worker, number = stream
            asyncio.ensure_future(worker.send(("credit", number, index, items)))

    async def _worker_died(self, worker: _Worker, batch: list[Call]) -> None:
        status = await worker.exit_status()
        worker.kill()
        if self._closed:
            return
        shared = worker.running_at_end > 1 and not self._solo.issuperset(call.index for call in batch)
        if len(batch) > 1 or shared:
            # We cannot tell which call of the batch, or of the inputs running at once, killed it: re-run
            # each alone (on a concurrent pool, on a worker of its own), so that only the culprit fails.
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
        if self._pool.concurrent > 1:
            return CallTimeoutError(
                f"call #{call.index} ran over its timeout of {self._timeout:g}s. Its worker runs other "
                "inputs at once, so it was not killed: the call's result, if it comes, is dropped."
            )
        return CallTimeoutError(
            f"call #{call.index} ran over its timeout of {self._timeout:g}s; its worker process was killed."
        )

    def _deliver(self, arrived: Sequence[Outcome | CallEvent]) -> None:
        if self._closed or not arrived:
            return
        if self._settled:
            arrived = [item for item in arrived if item.index not in self._settled]
        self._ready.extend(arrived)
        self._arrived.set()

    async def outcomes(self) -> list[Outcome | CallEvent]:
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
