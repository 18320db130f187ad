"""Process mode: calls run in worker processes (spawned, never forked), reused across calls and maps.

A worker that dies fails only the call it was running; the pool starts a replacement and the map goes on.
Tiny calls are batched adaptively so that dispatch overhead does not dominate; a batch whose worker died
is re-run one call at a time so that only the culprit fails.

Maps are run by the pool's drivers on mini's loop. A single blocking `run` that finds a worker idle
borrows it instead (`ProcessPool.lend`) and talks to it from the caller's own thread (`_LentDispatch`,
driven by `mini._loop.drive`): the call then crosses no thread of this process, which is what makes a
warm `run` as quick as `ProcessPoolExecutor`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from mini import _loop
from mini.dispatch import CallEvent, Dispatch
from mini.errors import CallTimeoutError, WorkerCrashed
from mini.local._worker_process import FUNCTIONS_PER_WORKER, Overdue, WorkerCommand, WorkerProcess
from mini.options import Options
from mini.serialization import Call, Outcome

__all__ = ["FUNCTIONS_PER_WORKER", "ProcessPool", "WorkerCommand", "open_process_dispatch"]

# A batch of tiny calls should take about this long, so per-message costs stay small next to the work.
_BATCH_SECONDS = 0.02
_MAX_BATCH = 512
# Batches a worker that runs one at a time may hold at once: one running, one waiting behind it.
_WINDOW = 2
_keys = itertools.count(1)
_batches = itertools.count(1)


class ProcessPool:
    """Worker processes shared by every map of one `LocalApparatus` and its `.w()` variants that runs
    `concurrent` inputs per worker at once (a pool per setting: a worker never mixes the two kinds).

    One driver per input a worker may run at once takes batches from the maps that have calls queued;
    the drivers of a concurrent pool share the pool's worker processes. A worker of a pool running one
    input at a time can be lent to a caller's thread for a single call (`lend`), between the batches of
    its driver; a driver that wants it back waits, and the worker is not lent again meanwhile.
    """

    def __init__(self, workers: int, command: WorkerCommand, concurrent: int = 1) -> None:
        self.workers = workers
        self.concurrent = concurrent
        self.loop = asyncio.get_running_loop()
        self._command = command
        self._dispatches: deque[_ProcessDispatch] = deque()
        self._work = asyncio.Event()
        self._drivers: list[asyncio.Task[None]] = []
        self._busy: dict[int, tuple[WorkerProcess, _ProcessDispatch]] = {}
        self._processes: list[WorkerProcess | None] = [None] * workers
        self._starting = [asyncio.Lock() for _ in range(workers)]
        # Who holds each position's worker: its driver, a caller's thread, or neither. Threads meet here.
        self._lock = threading.Lock()
        self._driving = [False] * workers
        self._lent = [False] * workers
        self._wanted = [False] * workers  # its driver waits for it to come back
        self._returned = [asyncio.Event() for _ in range(workers)]
        self._recent: list[int] = []  # positions last lent, latest last: its worker is warm

    def wake(self, dispatch: _ProcessDispatch) -> None:
        if dispatch not in self._dispatches:
            self._dispatches.append(dispatch)
        self._work.set()
        if not self._drivers:
            slots = range(self.workers * self.concurrent)
            self._drivers = [asyncio.create_task(self._drive(slot)) for slot in slots]

    async def forget(self, dispatch: _ProcessDispatch) -> None:
        """Drop a closed map's queued calls and kill the workers running its calls."""
        if dispatch in self._dispatches:
            self._dispatches.remove(dispatch)
        killed = {id(worker): worker for worker, owner in list(self._busy.values()) if owner is dispatch}
        for worker in killed.values():
            self.discard(worker)
        await asyncio.gather(*(worker.process.wait() for worker in killed.values()))

    def discard(self, worker: WorkerProcess) -> None:
        worker.kill()
        for position, running in enumerate(self._processes):
            if running is worker:
                self._processes[position] = None

    async def discard_and_wait(self, worker: WorkerProcess) -> None:
        self.discard(worker)
        await worker.process.wait()

    # ----- lending a worker to a caller's thread ------------------------------------------------------

    def lend(self) -> int | None:
        """A position whose worker is started, alive and idle, now held for the calling thread (any thread);
        None if there is none. Give it back with `give_back`."""
        if self.concurrent > 1:
            return None
        with self._lock:
            order = [*reversed(self._recent), *range(self.workers)]
            for position in dict.fromkeys(order):
                worker = self._processes[position]
                free = not (self._driving[position] or self._lent[position] or self._wanted[position])
                if free and worker is not None and worker.usable():
                    self._lent[position] = True
                    self._recent = [*(p for p in self._recent if p != position), position][-self.workers :]
                    return position
        return None

    def give_back(self, position: int) -> None:
        with self._lock:
            self._lent[position] = False
            wanted = self._wanted[position]
        if wanted:
            self.loop.call_soon_threadsafe(self._returned[position].set)

    def lent_worker(self, position: int) -> WorkerProcess:
        """The worker at a lent position, started anew if it has died (blocking the calling thread while
        mini's loop starts it); raises `WorkerCrashed` if it cannot start."""
        worker = self._processes[position]
        if worker is not None and not worker.ended():  # `lend` has just seen that it is usable
            return worker
        return asyncio.run_coroutine_threadsafe(self._worker(position), self.loop).result()

    async def _hold(self, position: int) -> None:
        # A driver's turn with its worker: after the caller's thread it was lent to, if any.
        if self.concurrent > 1:
            return
        while True:
            with self._lock:
                if not self._lent[position]:
                    self._driving[position] = True
                    self._wanted[position] = False
                    return
                self._wanted[position] = True
                self._returned[position].clear()
            await self._returned[position].wait()

    def _release(self, position: int) -> None:
        if self.concurrent == 1:
            with self._lock:
                self._driving[position] = False

    # ----- the drivers --------------------------------------------------------------------------------

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

    async def _worker(self, position: int) -> WorkerProcess:
        async with self._starting[position]:
            worker = self._processes[position]
            if worker is None or not worker.usable():
                if worker is not None:
                    self.discard(worker)
                worker = await WorkerProcess.start(self._command, exclusive=self.concurrent == 1)
                self._processes[position] = worker
            return worker

    async def _drive(self, slot: int) -> None:
        position = slot % self.workers
        try:
            while True:
                dispatch, batch = await self._next_batch()
                if self.concurrent > 1 and dispatch.is_solo(batch):
                    await self._run_alone(slot, dispatch, batch)
                    continue
                await self._hold(position)
                try:
                    try:
                        worker = await self._worker(position)
                    except WorkerCrashed as error:
                        dispatch.fail(batch, error)
                        continue
                    self._busy[slot] = (worker, dispatch)
                    try:
                        if worker.exclusive:
                            usable = await self._run_window(worker, dispatch, batch)
                        else:
                            usable = await dispatch.run_batch(worker, batch)
                        if not usable:
                            self.discard(worker)
                    finally:
                        self._busy.pop(slot, None)
                finally:
                    self._release(position)
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
            worker = await WorkerProcess.start(self._command, exclusive=False)
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

    async def _run_window(self, worker: WorkerProcess, dispatch: _ProcessDispatch, batch: list[Call]) -> bool:
        """Run `batch` on a worker that takes one at a time, and while it runs, keep the map's next batch
        waiting in the worker's socket, so that the worker never idles while this process reads a reply and
        sends more. Return whether the worker is still usable.

        The worker runs its batches in order, so if it dies, the first unanswered batch is the one that
        killed it; those behind it never started and go back to the queue as they were."""
        window: deque[tuple[int, list[Call]]] = deque()
        sent = True
        while sent:
            while sent and batch and not dispatch.closed:
                number, message = dispatch.start(worker, batch)
                window.append((number, batch))
                sent = await worker.send(message)
                batch = dispatch.take_more() if len(window) < _WINDOW and dispatch.pipelined() else []
            if not sent:
                break
            if not window:
                return True
            number, running = window[0]
            try:
                answer = worker.answer(number, dispatch)
                reply = await (
                    answer if dispatch.timeout is None else asyncio.wait_for(answer, dispatch.timeout)
                )
            except asyncio.TimeoutError:
                dispatch.overdue(running)
                worker.kill()
                await worker.process.wait()
                return False
            if reply is None:
                break
            window.popleft()
            dispatch.answered(worker, running, reply)
            batch = dispatch.take_more() if dispatch.pipelined() else []
            if not window and not batch:
                return True
        if window:
            _, culprit = window.popleft()
            for _, never_started in reversed(window):
                dispatch.requeue(never_started)
            await dispatch.died(worker, culprit)
        return False

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


class _Calls(Dispatch):
    """What both ways of running a map's calls on workers share: the messages, events and errors."""

    def __init__(self, concurrent: int, fn_blob: bytes, options: Options) -> None:
        self._concurrent = concurrent
        self._key = next(_keys)
        self._fn_blob = fn_blob
        self._env = dict(options.env) if options.env else None
        self._timeout = options.timeout
        self._queue: deque[Call] = deque()
        self._ready: list[Outcome | CallEvent] = []
        self._closed = False

    def _message(self, worker: WorkerProcess, number: int, batch: list[Call]) -> tuple[Any, ...]:
        send_function, dropped = worker.plan_load(self._key)
        released, retired = worker.settlement()
        return (
            "run",
            number,
            self._key,
            self._fn_blob if send_function else None,
            dropped,
            self._env,
            self._concurrent > 1,
            [(c.index, c.payload if c.plain is None else c.plain, worker.outgoing(c.buffers)) for c in batch],
            released,
            retired,
        )

    def _results(self, worker: WorkerProcess, results: list[Any]) -> list[Outcome]:
        return [
            Outcome(index, ok, data, worker.incoming(buffers) if buffers else ())
            for index, ok, data, buffers in results
        ]

    def take_events(self, events: list[tuple[int, int, str, Any]], worker: WorkerProcess) -> None:
        """Events the worker sent for this map's calls (see `mini.local._worker`)."""
        arrived: list[Outcome | CallEvent] = []
        for _, index, kind, data in events:
            if kind == "started":
                data = dataclasses.replace(worker.placement, started=data)
            arrived.append(CallEvent(index, kind, data))  # type: ignore[arg-type]
        self._deliver(arrived)

    def _crashed(self, call: Call, status: str) -> WorkerCrashed:
        return WorkerCrashed(
            f"the worker process running call #{call.index} died ({status}) before returning a result. "
            "The pool has replaced it; other calls are unaffected."
        )

    def _timeout_error(self, call: Call) -> CallTimeoutError:
        if self._concurrent > 1:
            return CallTimeoutError(
                f"call #{call.index} ran over its timeout of {self._timeout:g}s. Its worker runs other "
                "inputs at once, so it was not killed: the call's result, if it comes, is dropped."
            )
        return CallTimeoutError(
            f"call #{call.index} ran over its timeout of {self._timeout:g}s; its worker process was killed."
        )

    def _deliver(self, arrived: Sequence[Outcome | CallEvent]) -> None:
        if not self._closed and arrived:
            self._ready.extend(arrived)


class _ProcessDispatch(_Calls):
    """A map's calls, run in batches by the pool's drivers on mini's loop."""

    def __init__(self, pool: ProcessPool, fn_blob: bytes, options: Options) -> None:
        super().__init__(pool.concurrent, fn_blob, options)
        self._pool = pool
        self._solo: set[int] = set()  # re-run alone after a batch's worker died
        self._arrived = asyncio.Event()
        self._seconds_per_call: float | None = None
        self._running = 0
        self._settled: set[int] = set()  # of a concurrent pool, settled (by a timeout) before they answered
        self._streams: dict[int, tuple[WorkerProcess, int]] = {}  # call -> (worker, batch) of a generator

    def _target_batch(self) -> int:
        if self._timeout is not None or self._seconds_per_call is None or self._concurrent > 1:
            return 1
        return max(1, min(int(_BATCH_SECONDS / max(self._seconds_per_call, 1e-7)), _MAX_BATCH))

    def _batch_size(self) -> int:
        # Leave work for every worker rather than handing one worker the whole queue, but not in batches
        # so small that their round trips cost more than the balance gained (the last of a map's calls).
        target = self._target_batch()
        share = math.ceil(len(self._queue) / self._pool.workers)
        return max(1, min(target, max(share, target // 8), len(self._queue)))

    def capacity(self) -> int:
        # Enough queued that a worker is never short while an earlier batch (held up on a busy machine)
        # keeps the results behind it from the caller: in order, they count as submitted until consumed.
        slots = self._pool.workers * self._concurrent
        return 3 * slots * self._target_batch()

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
        queue = self._queue
        if self._closed or not queue:
            return []
        if not self._solo:
            return [queue.popleft() for _ in range(self._batch_size())]
        if queue[0].index in self._solo:
            return [queue.popleft()]
        batch: list[Call] = []
        for _ in range(self._batch_size()):
            if not queue or queue[0].index in self._solo:
                break
            batch.append(queue.popleft())
        return batch

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def timeout(self) -> float | None:
        return self._timeout

    def pipelined(self) -> bool:
        """Whether a worker may hold a batch of this map's while it runs another: only for calls measured
        to be tiny (batched), so that none waits behind a long one that another worker could have run,
        and never for timed calls (their time starts when they are sent)."""
        return self._concurrent == 1 and self._target_batch() > 1

    def take_more(self) -> list[Call]:
        """A batch to wait behind one that runs: only a full one, and only if every other worker still
        finds one left in the queue."""
        size = self._target_batch()
        if self._closed or self._solo or len(self._queue) < size * self._pool.workers:
            return []
        return [self._queue.popleft() for _ in range(size)]

    def start(self, worker: WorkerProcess, batch: list[Call]) -> tuple[int, tuple[Any, ...]]:
        """The batch's number and its message to `worker`; it counts as running from now."""
        number = next(_batches)
        self._running += len(batch)
        return number, self._message(worker, number, batch)

    def _stopped(self, batch: list[Call]) -> None:
        self._running -= len(batch)
        if self._streams:
            for call in batch:
                self._streams.pop(call.index, None)

    def answered(self, worker: WorkerProcess, batch: list[Call], reply: tuple[list[Any], float]) -> None:
        self._stopped(batch)
        if self._solo:
            self._solo.difference_update(call.index for call in batch)
        results, elapsed = reply
        per_call = elapsed / len(batch)
        previous = self._seconds_per_call
        self._seconds_per_call = per_call if previous is None else 0.7 * previous + 0.3 * per_call
        self._deliver(self._results(worker, results))

    def overdue(self, batch: list[Call]) -> None:
        self._stopped(batch)
        self._deliver([Outcome(batch[0].index, False, self._timeout_error(batch[0]))])

    def requeue(self, batch: list[Call]) -> None:
        """A batch sent to a worker that died before it started: it goes back to the front of the queue."""
        self._stopped(batch)
        if not self._closed:
            self._queue.extendleft(reversed(batch))
            self._pool.wake(self)

    async def died(self, worker: WorkerProcess, batch: list[Call]) -> None:
        self._stopped(batch)
        await self._worker_died(worker, batch)

    async def run_batch(self, worker: WorkerProcess, batch: list[Call]) -> bool:
        """Run `batch` on a worker of a concurrent pool; return whether the worker is still usable."""
        if self._closed:  # closed while the worker was starting
            return True
        number, message = self.start(worker, batch)
        try:
            exchange = worker.exchange(number, message, self)
            reply = await (exchange if self._timeout is None else asyncio.wait_for(exchange, self._timeout))
        except asyncio.TimeoutError:
            self.overdue(batch)
            # Other inputs run on this worker: it goes on, and this call's late answer is ignored.
            self._settled.add(batch[0].index)
            return True
        if reply is None:
            await self.died(worker, batch)
            return False
        self.answered(worker, batch, reply)
        return True

    def take_events(self, events: list[tuple[int, int, str, Any]], worker: WorkerProcess) -> None:
        for number, index, kind, _ in events:
            if kind == "item":  # a generator's: its consumer's credit goes to this worker and batch
                self._streams[index] = (worker, number)
        super().take_events(events, worker)

    def consumed(self, index: int, items: int) -> None:
        stream = self._streams.get(index)
        if stream is not None:
            worker, number = stream
            asyncio.ensure_future(worker.send(("credit", number, index, items)))

    async def _worker_died(self, worker: WorkerProcess, batch: list[Call]) -> None:
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
        self._deliver([Outcome(call.index, False, self._crashed(call, status))])

    def fail(self, batch: list[Call], error: BaseException) -> None:
        self._deliver([Outcome(call.index, False, error) for call in batch])

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


class _LentDispatch(_Calls):
    """A single `run`'s call (and its retries), on a worker lent to the caller's thread, which sends it
    and reads the answer itself; driven by `mini._loop.drive`. Starting, killing and waiting for the
    worker is left to mini's loop, with this thread waiting for it."""

    def __init__(self, pool: ProcessPool, position: int, fn_blob: bytes, options: Options) -> None:
        super().__init__(1, fn_blob, options)
        self._pool = pool
        self._position: int | None = position
        self._worker: WorkerProcess | None = None
        self._running: tuple[int, Call, float | None] | None = None  # (batch, call, deadline)
        self._turn = _loop.Blocking(self._step)

    def capacity(self) -> int:
        return 1

    def running(self) -> int:
        return 0 if self._running is None else 1

    def submit(self, calls: Sequence[Call]) -> None:
        self._queue.extend(calls)

    async def outcomes(self) -> list[Outcome | CallEvent]:
        while not self._ready:
            await self._turn
        ready, self._ready = self._ready, []
        return ready

    def _step(self) -> None:
        """Send the next call, or wait for the answer of the one sent (on this thread)."""
        if self._running is None:
            if not self._queue:
                raise RuntimeError("a lent worker's dispatch was asked for outcomes with no call to run")
            call = self._queue.popleft()
            try:
                self._worker = self._pool.lent_worker(self._lent_position())
            except WorkerCrashed as error:
                self._deliver([Outcome(call.index, False, error)])
                return
            deadline = None if self._timeout is None else time.monotonic() + self._timeout
            self._running = (next(_batches), call, deadline)
        number, call, deadline = self._running
        worker = self._worker
        assert worker is not None
        try:
            message = self._message(worker, number, [call])
        except ValueError:  # its shared memory is closed: the worker was killed meanwhile (pool closed)
            message = None
        try:
            reply = None if message is None else worker.exchange_here(number, message, self, deadline)
        except Overdue:
            self._end_worker()
            self._running = None
            self._deliver([Outcome(call.index, False, self._timeout_error(call))])
            return
        self._running = None
        if reply is None:
            status = asyncio.run_coroutine_threadsafe(worker.exit_status(), self._pool.loop).result()
            self._end_worker()
            self._deliver([Outcome(call.index, False, self._crashed(call, status))])
            return
        self._deliver(self._results(worker, reply[0]))

    def _lent_position(self) -> int:
        assert self._position is not None
        return self._position

    def _end_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            asyncio.run_coroutine_threadsafe(self._pool.discard_and_wait(worker), self._pool.loop).result()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        try:
            if self._running is not None:  # interrupted while its call ran: stop it
                self._running = None
                self._end_worker()
        finally:
            position, self._position = self._position, None
            if position is not None:
                self._pool.give_back(position)


def open_process_dispatch(pool: ProcessPool, fn_blob: bytes, options: Options) -> Dispatch:
    """A map's dispatch; under `mini._loop.drive` (a single `run` on the caller's thread), one on a worker
    lent to that thread, or `mini._loop.NeedsLoop` when no worker is idle."""
    if _loop.driving():
        position = pool.lend()
        if position is None:
            raise _loop.NeedsLoop
        return _LentDispatch(pool, position, fn_blob, options)
    return _ProcessDispatch(pool, fn_blob, options)
