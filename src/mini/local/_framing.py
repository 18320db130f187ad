"""Messages between the pool and its worker processes: a pickle plus its large buffers, sent as frames.

A frame set is a fixed header (pickle size, buffer count), the buffer sizes, the pickle, then each buffer
as it is in memory: a 100 MB array is handed to the kernel without being copied into the message, and is
received straight into the memory the unpickled array will own.

Only the stdlib is used here: the worker side runs inside environments that hold nothing but the
project's pinned dependencies.
"""

from __future__ import annotations

import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("!QI")
_SIZE = struct.Struct("!Q")
# Below this a pickle is joined to its header: one send instead of two, for the many tiny messages.
_JOIN_BYTES = 1 << 16

Allocate = Callable[[int], Any]


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


def send(sock: socket.socket, message: Any) -> None:
    for frame in frames(message):
        sock.sendall(frame)


def receive(sock: socket.socket, allocate: Allocate = bytearray) -> Any:
    """The next message, or None when the other side has gone; `allocate(n)` gives each buffer's memory."""
    header = _read_exactly(sock, bytearray(HEADER.size))
    if header is None:
        return None
    rest = _read_exactly(sock, bytearray(rest_size(header)))
    if rest is None:
        return None
    buffers = []
    for nbytes in buffer_sizes(header, rest):
        buffer = _read_exactly(sock, allocate(nbytes))
        if buffer is None:
            return None
        buffers.append(buffer)
    return decode(header, rest, buffers)


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


def _read_exactly(sock: socket.socket, buffer: Any) -> Any:
    view = memoryview(buffer).cast("B")
    filled, size = 0, view.nbytes
    while filled < size:
        got = sock.recv_into(view[filled:])
        if got == 0:
            return None
        filled += got
    return buffer
