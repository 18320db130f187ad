"""Messages between the pool and its worker processes: a pickle plus its large buffers, sent as frames.

A frame set is a fixed header (pickle size, buffer count), the buffer sizes, the pickle, then each buffer
as it is in memory: a buffer is handed to the kernel without being copied into the message, and is
received straight into the memory the unpickled array will own. (Buffers of a megabyte or more go
through shared memory instead, see `mini.local._shared_memory`; the message then carries their place.)

A message may carry file descriptors (the shared-memory segments it announces): they are attached to its
first byte, and every read takes what comes with it (`Reader`).

Only the stdlib is used here: the worker side runs inside environments that hold nothing but the
project's pinned dependencies.
"""

from __future__ import annotations

import array
import functools
import os
import pickle
import select
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("!QI")
_SIZE = struct.Struct("!Q")
# Below this a pickle is joined to its header: one send instead of two, for the many tiny messages.
_JOIN_BYTES = 1 << 16
# At most this many descriptors travel with one message (and one read can bring them all).
FDS_PER_MESSAGE = 32
ANCILLARY = socket.CMSG_SPACE(FDS_PER_MESSAGE * array.array("i").itemsize)

Allocate = Callable[[int], Any]
Wait = Callable[[int], None]  # called with select.POLLIN or POLLOUT when a non-blocking socket must wait


def frames(message: Any) -> list[bytes | memoryview]:
    """`message` as the frames to send in order; objects wrapped in `pickle.PickleBuffer` travel as
    separate frames (the receiver gets them as the buffers it allocated)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    head = HEADER.pack(len(body), len(raws)) + b"".join(_SIZE.pack(raw.nbytes) for raw in raws)
    if len(body) < _JOIN_BYTES:
        return [head + body, *raws]
    return [head, body, *raws]


def send(sock: socket.socket, message: Any, fds: list[int] | None = None, wait: Wait | None = None) -> None:
    """Send `message` whole (with `fds` attached); on a non-blocking socket, `wait` is called whenever
    the socket cannot take more yet."""
    parts = frames(message)
    first = memoryview(parts[0])
    if fds:
        sent = _retrying(functools.partial(sock.sendmsg, [first], [rights(fds)]), wait, select.POLLOUT)
        first = first[sent:]
    for part in (first, *parts[1:]):
        view = memoryview(part).cast("B")
        while view:
            sent = _retrying(functools.partial(sock.send, view), wait, select.POLLOUT)
            view = view[sent:]


def rights(fds: list[int]) -> tuple[int, int, bytes]:
    """The ancillary data that passes `fds` to the other side."""
    return socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()


def _retrying(operation: Callable[[], int], wait: Wait | None, event: int) -> int:
    while True:
        try:
            return operation()
        except BlockingIOError:
            if wait is None:
                raise
            wait(event)


class Reader:
    """Reads whole messages from a socket, keeping the descriptors that arrive with them in order
    (`fds`: the receiver takes those a message announces).

    >>> reader = Reader(sock, bytearray)
    >>> while (message := reader.receive()) is not None: ...
    """

    def __init__(self, sock: socket.socket, allocate: Allocate = bytearray, wait: Wait | None = None) -> None:
        self.sock = sock
        self.fds: deque[int] = deque()
        self._allocate = allocate
        self._wait = wait

    def receive(self, wait: Wait | None = None) -> Any:
        """The next message, or None when the other side has gone; `wait` as for the constructor."""
        header = self.read(bytearray(HEADER.size), wait)
        if header is None:
            return None
        rest = self.read(bytearray(rest_size(header)), wait)
        if rest is None:
            return None
        buffers = []
        for nbytes in buffer_sizes(header, rest):
            buffer = self.read(self._allocate(nbytes), wait)
            if buffer is None:
                return None
            buffers.append(buffer)
        return decode(header, rest, buffers)

    def read(self, buffer: Any, wait: Wait | None = None) -> Any:
        """Fill `buffer`; None at the end of the stream."""
        view = memoryview(buffer).cast("B")
        while view:
            got = _retrying(functools.partial(self.read_some, view), wait or self._wait, select.POLLIN)
            if got == 0:
                return None
            view = view[got:]
        return buffer

    def read_some(self, view: memoryview) -> int:
        got, ancillary, _, _ = self.sock.recvmsg_into([view], ANCILLARY)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(data[: len(data) - len(data) % received.itemsize])
                self.fds.extend(received)
        return got

    def take_fds(self, count: int) -> list[int]:
        return [self.fds.popleft() for _ in range(count)]

    def close(self) -> None:
        """Close descriptors that arrived but were never taken (their message was cut short)."""
        while self.fds:
            os.close(self.fds.popleft())


def rest_size(header: bytes | bytearray) -> int:
    """How many bytes follow the header before the buffers: their sizes, then the pickle."""
    size, count = HEADER.unpack(header)
    return _SIZE.size * count + size


def buffer_sizes(header: bytes | bytearray, rest: bytes | bytearray) -> list[int]:
    _, count = HEADER.unpack(header)
    return [nbytes for (nbytes,) in _SIZE.iter_unpack(memoryview(rest)[: _SIZE.size * count])]


def decode(header: bytes | bytearray, rest: bytes | bytearray, buffers: list[Any]) -> Any:
    _, count = HEADER.unpack(header)
    return pickle.loads(memoryview(rest)[_SIZE.size * count :], buffers=buffers)
