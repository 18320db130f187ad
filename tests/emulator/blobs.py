"""The blob store: payloads too big for a gRPC message, uploaded and downloaded over plain HTTP.

    store = BlobStore()
    await store.start()
    blob_id = store.create()                 # then the client PUTs to store.url(blob_id)
    store.put(blob_id, b"...")               # or the emulator stores one itself
    store.get(blob_id)

Like S3, a PUT answers with the quoted MD5 of the body as its ETag, which the modal client checks.
"""

from __future__ import annotations

import hashlib
import itertools

from aiohttp import web


class BlobStore:
    """In-memory blobs behind an HTTP server on 127.0.0.1 (a free port unless `port` is given)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=1 << 31)
        app.router.add_put("/blobs/{blob_id}", self._handle_put)
        app.router.add_get("/blobs/{blob_id}", self._handle_get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{bound_port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def create(self) -> str:
        """A fresh blob id, to be filled by an HTTP PUT to `url(blob_id)`."""
        return f"bl-{next(self._ids)}"

    def url(self, blob_id: str) -> str:
        return f"{self.base_url}/blobs/{blob_id}"

    def put(self, data: bytes) -> str:
        """Store `data` under a fresh id and return it."""
        blob_id = self.create()
        self._blobs[blob_id] = data
        return blob_id

    def get(self, blob_id: str) -> bytes:
        if blob_id not in self._blobs:
            raise KeyError(f"blob {blob_id} was never uploaded")
        return self._blobs[blob_id]

    async def _handle_put(self, request: web.Request) -> web.Response:
        data = await request.read()
        self._blobs[request.match_info["blob_id"]] = data
        return web.Response(status=200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def _handle_get(self, request: web.Request) -> web.Response:
        data = self._blobs.get(request.match_info["blob_id"])
        if data is None:
            return web.Response(status=404, text="no such blob")
        return web.Response(body=data)
