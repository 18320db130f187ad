"""An HTTP CONNECT proxy on 127.0.0.1 for tests: tunnels bytes and records where each tunnel went.

with run_connect_proxy() as proxy:
    env = {"HTTPS_PROXY": proxy.url}
    ...                                  # a client connects through it
assert proxy.tunnels == ["localhost:50051"]
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import socketserver
import threading
from collections.abc import Iterator


class ConnectProxy(socketserver.ThreadingTCPServer):
    """Answers `CONNECT host:port` with a tunnel; anything else gets 405. `tunnels` lists the targets."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TunnelHandler)
        self.tunnels: list[str] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, target: str) -> None:
        with self._lock:
            self.tunnels.append(target)


class _TunnelHandler(socketserver.StreamRequestHandler):
    server: ConnectProxy

    def handle(self) -> None:
        request_line = self.rfile.readline(65536).decode("latin-1")
        while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
            pass  # the request's headers: a tunnel needs none of them
        method, _, rest = request_line.partition(" ")
        target = rest.split(" ", 1)[0]
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not port.isdigit():
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except OSError:
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.record(target)
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        with upstream:
            _pipe(self.connection, upstream)


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    upstream.settimeout(None)
    peer = {client: upstream, upstream: client}
    with selectors.DefaultSelector() as selector:
        for side in peer:
            selector.register(side, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                peer[key.fileobj].sendall(data)  # type: ignore[index]


@contextlib.contextmanager
def run_connect_proxy() -> Iterator[ConnectProxy]:
    """Serve a `ConnectProxy` in a background thread for the block."""
    proxy = ConnectProxy()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)
