"""Length-prefixed pickled messages between the pool and its worker processes.

Only the stdlib is used here: the worker side runs inside environments that hold nothing but the
project's pinned dependencies.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

HEADER = struct.Struct("!Q")


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=5)
    return HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: Any) -> None:
    body = pickle.dumps(message, protocol=5)
    sock.sendall(HEADER.pack(len(body)))
    sock.sendall(body)


def receive(sock: socket.socket) -> Any:
    """The next message, or None when the other side has gone."""
    header = _read_exactly(sock, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    body = _read_exactly(sock, size)
    if body is None:
        return None
    return pickle.loads(body)


def _read_exactly(sock: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        got = sock.recv_into(view[filled:])
        if got == 0:
            return None
        filled += got
    return buffer
