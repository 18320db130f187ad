"""The pool's handle on one worker process: starting it, talking to it, its shared memory, ending it.

Messages are exchanged on mini's loop, for the pool's drivers, or on a caller's own thread
(`exchange_here`), for a single `run` that has this worker lent to it, so that the call crosses no thread
but the worker's (see `mini.local.processes.ProcessPool.lend`). A worker of a pool that runs one input at a
time runs its batches in order (at most two outstanding: `send`, then `answer` each), and whoever sent
them reads the answers; a worker of a concurrent pool has a reader task of its own that hands each reply
to the batch waiting for it (`exchange`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import pickle
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mini.errors import WorkerCrashed
from mini.local import _framing, _shared_memory
from mini.local._isolation import isolated_environment
from mini.serialization import fresh_buffer

_SOCKET_BUFFER = 1 << 20
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_ECHO_CHUNK = 1 << 16
_ECHO_DRAIN = 1.0  # seconds to wait for a dead worker's last output; a process it started may hold its pipes
# How many functions a worker keeps loaded. The pool alone decides which (`plan_load`) and tells the worker
# what to drop, so the two sides cannot disagree about which functions a worker holds.
FUNCTIONS_PER_WORKER = 16


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


class Owner(Protocol):
    """The dispatch whose batch a worker runs: it takes the events of that batch's calls."""

    def take_events(self, events: list[tuple[int, int, str, Any]], worker: WorkerProcess) -> None: ...


class Overdue(Exception):
    """A blocking exchange ran past its deadline."""


class WorkerProcess:
    """One worker process and its socket."""

    def __init__(
        self, process: asyncio.subprocess.Process, sock: socket.socket, workdir: str | None, exclusive: bool
    ) -> None:
        self.process = process
        self.placement: Any = None  # where its calls run: told in its hello
        self.shared = False  # whether large buffers go through shared memory: both sides must have it
        self.exclusive = exclusive  # one batch at a time, read by whoever sent it
        self._sock = sock
        self._workdir = workdir
        self._loop = asyncio.get_running_loop()
        self._reader = _framing.Reader(sock, fresh_buffer)
        self._sending = asyncio.Lock()
        self._waiting: dict[int, tuple[asyncio.Future[Any], Owner]] = {}  # of a concurrent worker
        self._loaded: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self._echoes = [_echo(process.stdout, "stdout"), _echo(process.stderr, "stderr")]
        self._listener: asyncio.Future[None] | None = None
        self._outbox = _shared_memory.Outbox()  # arguments, written here
        self._inbox = _shared_memory.Inbox()  # results, written by the worker
        # The socket is closed once no one reads it (a closed descriptor's number may be reused at once).
        self._users = 0
        self._users_lock = threading.Lock()
        self._killed = False
        self.running_at_end = 0  # of a concurrent worker: batches it ran when its socket closed

    @classmethod
    async def start(cls, command: WorkerCommand, exclusive: bool = True) -> WorkerProcess:
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
        worker = cls(process, ours, workdir, exclusive)
        try:
            hello = await worker._receive()
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
        worker.shared = _shared_memory.AVAILABLE and bool(hello[3])
        if not exclusive:
            worker._listener = asyncio.ensure_future(worker._listen())
        return worker

    # ----- what a batch carries ----------------------------------------------------------------------

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

    def outgoing(self, buffers: Sequence[Any]) -> Any:
        """A call's argument buffers as they travel: large ones copied into shared memory (the worker's
        arrays are built there), the rest as frames of the message."""
        if not buffers:
            return ()
        travel: list[Any] = []
        for buffer in buffers:
            raw = memoryview(buffer).cast("B")
            if self.shared and raw.nbytes >= _shared_memory.SHARED_BYTES:
                travel.append(self._outbox.place(raw))
            else:
                travel.append(pickle.PickleBuffer(buffer))
        return travel

    def incoming(self, buffers: Any) -> Any:
        """A result's buffers as the memory its arrays are built on (mapped, for shared ones)."""
        if not buffers:
            return ()
        return [self._inbox.view(*b) if type(b) is tuple else b for b in buffers]

    def settlement(self) -> tuple[list[int], list[int]]:
        """For the next message: the worker's segments no longer used here, and ours closed since."""
        return self._inbox.take_released(), self._outbox.take_retired()

    def _announcements(self) -> list[tuple[Any, list[int]]]:
        return self._outbox.announcements(_framing.FDS_PER_MESSAGE)

    # ----- on mini's loop ----------------------------------------------------------------------------

    async def exchange(self, batch: int, message: object, owner: Owner) -> tuple[list[Any], float] | None:
        """Send a batch to a worker of a concurrent pool and wait for its reply, its calls' events going to
        `owner.take_events`; None if the worker died first. (One that takes a batch at a time is sent its
        batches with `send` and answers them, in order, through `answer`.)"""
        assert not self.exclusive
        reply: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[batch] = (reply, owner)
        try:
            if not await self.send(message):
                return None
            return await reply
        finally:
            self._waiting.pop(batch, None)

    async def answer(self, batch: int, owner: Owner) -> tuple[list[Any], float] | None:
        """The reply to `batch`, sent before, of a worker that takes one batch at a time (events of this
        and later batches of the same owner go to it); None if the worker died first."""
        while (received := await self._receive()) is not None:
            answer = self._take(received, batch, owner)
            if answer is not None:
                return answer
        return None

    async def send(self, message: object) -> bool:
        """Send one message whole; False if the worker is gone."""
        async with self._sending:
            try:
                for announcement, fds in self._announcements():
                    parts = _framing.frames(announcement)
                    await self._send_with(parts[0], fds)
                    self._outbox.sent(fds)
                    for part in parts[1:]:
                        await self._loop.sock_sendall(self._sock, part)
                for part in _framing.frames(message):
                    await self._loop.sock_sendall(self._sock, part)
            except OSError:
                return False
        return True

    async def _send_with(self, part: bytes | memoryview, fds: list[int]) -> None:
        view = memoryview(part).cast("B")
        while True:
            try:
                sent = self._sock.sendmsg([view], [_framing.rights(fds)])
                break
            except BlockingIOError:
                await self._ready(writing=True)
        if sent < view.nbytes:
            await self._loop.sock_sendall(self._sock, view[sent:])

    async def _receive(self) -> Any:
        """The next message, or None at the worker's end. A buffer is read straight into the memory its
        array will own."""
        with self._using():
            try:
                header = await self._read(bytearray(_framing.HEADER.size))
                rest = await self._read(bytearray(_framing.rest_size(header)))
                sizes = _framing.buffer_sizes(header, rest)
                buffers = [await self._read(fresh_buffer(n)) for n in sizes]
            except (OSError, EOFError):
                return None
            return _framing.decode(header, rest, buffers)

    async def _read(self, buffer: Any) -> Any:
        view = memoryview(buffer).cast("B")
        filled, size = 0, view.nbytes
        while filled < size:
            try:
                got = self._reader.read_some(view[filled:])
            except BlockingIOError:
                await self._ready(writing=False)
                continue
            if got == 0:
                raise EOFError
            filled += got
        return buffer

    async def _ready(self, writing: bool) -> None:
        ready = self._loop.create_future()
        fd = self._sock.fileno()
        if writing:
            self._loop.add_writer(fd, _wake, ready)
        else:
            self._loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            if writing:
                self._loop.remove_writer(fd)
            else:
                self._loop.remove_reader(fd)

    async def _listen(self) -> None:
        # A concurrent worker's reader: replies go to the batch waiting for them, events to its dispatch.
        try:
            while (received := await self._receive()) is not None:
                if received[0] == "reply":
                    self._settle(received[5], received[6])
                    waiting = self._waiting.get(received[1])
                    if waiting is not None:
                        reply, owner = waiting
                        owner.take_events(received[4], self)
                        if not reply.done():
                            reply.set_result((received[2], received[3]))
                elif received[0] == "events":
                    self._route(received[1])
                elif received[0] == "segments":
                    self._map(received[1])
        finally:
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
                owner.take_events(mine, self)

    # ----- on a caller's thread, while lent to it ----------------------------------------------------

    def exchange_here(
        self, batch: int, message: object, owner: Owner, deadline: float | None
    ) -> tuple[list[Any], float] | None:
        """`exchange`, blocking this thread (never mini's loop); raises `Overdue` past `deadline`
        (`time.monotonic`). Only for a worker lent to this thread: no one else uses its socket meanwhile."""

        def wait(event: int) -> None:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            poller = select.poll()
            poller.register(self._sock, event)
            if not poller.poll(None if timeout is None else timeout * 1000):
                raise Overdue

        with self._using():
            try:
                for announcement, fds in self._announcements():
                    _framing.send(self._sock, announcement, fds, wait)
                    self._outbox.sent(fds)
                _framing.send(self._sock, message, None, wait)
            except (OSError, ValueError):  # ValueError: its shared memory closed, as it was killed
                return None
            while True:
                try:
                    received = self._reader.receive(wait)
                except OSError:
                    return None
                if received is None:
                    return None
                answer = self._take(received, batch, owner)
                if answer is not None:
                    return answer

    def ended(self) -> bool:
        """Known to have ended (killed here, or its exit seen)."""
        return self._killed or self.process.returncode is not None

    def usable(self) -> bool:
        """Alive, as far as can be told without waiting (a worker that died while idle has closed its end)."""
        if self.ended():
            return False
        try:
            got, ancillary, _, _ = self._sock.recvmsg(1, _framing.ANCILLARY, _PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        for level, kind, data in ancillary:  # a peek duplicates the descriptors it sees
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for fd in memoryview(data).cast("i"):
                    os.close(fd)
        return bool(got)

    # ----- what both ways read -----------------------------------------------------------------------

    def _take(self, received: Any, batch: int, owner: Owner) -> tuple[list[Any], float] | None:
        """Handle one message for a batch of an exclusive worker; its reply when this is it."""
        kind = received[0]
        if kind == "reply":
            self._settle(received[5], received[6])
            if received[1] == batch:
                owner.take_events(received[4], self)
                return received[2], received[3]
        elif kind == "events":
            # Of this batch or one sent behind it, for the same owner; older ones: of a batch given up on.
            mine = [event for event in received[1] if event[0] >= batch]
            if mine:
                owner.take_events(mine, self)
        elif kind == "segments":
            self._map(received[1])
        return None

    def _map(self, announced: list[_shared_memory.Announcement]) -> None:
        self._inbox.add(announced, self._reader.take_fds(len(announced)))

    def _settle(self, released: list[int], retired: list[int]) -> None:
        if released:
            self._outbox.released(released)
        if retired:
            self._inbox.retire(retired)

    @contextlib.contextmanager
    def _using(self) -> Any:
        with self._users_lock:
            self._users += 1
        try:
            yield
        finally:
            with self._users_lock:
                self._users -= 1
                close = self._killed and self._users == 0
            if close:
                self._close_socket()

    # ----- the end -----------------------------------------------------------------------------------

    def kill(self) -> None:
        """Kill the process; its socket is closed once no one reads it. Call on mini's loop."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        # Shut down while someone may wait on it: they see the end, and the last one closes it.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        # Its shared memory goes at once (what this process built on it keeps what it uses).
        self._outbox.close()
        self._inbox.close()
        with self._users_lock:
            self._killed = True
            close = self._users == 0
        if close:
            self._close_socket()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _close_socket(self) -> None:
        self._sock.close()
        self._reader.close()

    async def echoed(self) -> None:
        """Wait (briefly) until everything the worker printed has been passed on."""
        await asyncio.wait(self._echoes, timeout=_ECHO_DRAIN)

    async def exit_status(self) -> str:
        status = await _exit_status(self.process)
        await self.echoed()  # so that its stderr is above whatever is said about its death
        return status


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _exit_status(process: asyncio.subprocess.Process) -> str:
    code = await process.wait()
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
