"""The blob store: payloads too big for a gRPC message, moved over plain HTTP and kept in files on disk.

    store = BlobStore(workdir / "blobs")
    await store.start()
    blob_id, upload = store.create_upload(content_length)   # the client PUTs to the URLs in `upload`
    blob_id = store.put(b"...")                              # or the emulator stores one itself
    store.path(blob_id)                                      # the file holding it
    url = store.share(path)                                  # byte ranges of a file: url + "/OFFSET/LENGTH"

Like S3, a PUT answers with the quoted MD5 of the body as its ETag, which the modal client checks; a large
upload is split into parts (BlobCreate answers `multiparts`) whose completion answers the multipart ETag
(MD5 of the parts' MD5s, dash, number of parts). Bodies are streamed to and from disk, never held whole in
memory, so a file of gigabytes costs the emulator a few buffers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from aiohttp import web
from modal_proto import api_pb2

from tests.emulator.ids import new_id

# Modal's client asks for a multipart upload only above 1 GiB, and says the server may ask for one below;
# the emulator does above this size, so that multipart uploads are exercised by files tests can afford.
MULTIPART_THRESHOLD = 64 << 20
PART_LENGTH = 16 << 20
_CHUNK = 1 << 20


class BlobStore:
    """Blobs in files under `root`, served over HTTP on 127.0.0.1 (a free port unless `port` is given)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)
        self._parts: dict[str, int] = {}  # blob id -> number of parts of its multipart upload
        self._shared: dict[str, Path] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_put("/blobs/{blob_id}", self._handle_put)
        app.router.add_get("/blobs/{blob_id}", self._handle_get)
        app.router.add_put("/blobs/{blob_id}/parts/{part}", self._handle_put_part)
        app.router.add_post("/blobs/{blob_id}/complete", self._handle_complete)
        app.router.add_get("/shared/{token}/{offset}/{length}", self._handle_range)
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
        return new_id("bl")

    def url(self, blob_id: str) -> str:
        return f"{self.base_url}/blobs/{blob_id}"

    def create_upload(self, content_length: int) -> api_pb2.BlobCreateResponse:
        """What BlobCreate answers for an upload of `content_length` bytes: one URL, or parts above
        `MULTIPART_THRESHOLD`."""
        blob_id = self.create()
        if content_length <= MULTIPART_THRESHOLD:
            return api_pb2.BlobCreateResponse(
                blob_ids=[blob_id], upload_urls=api_pb2.UploadUrlList(items=[self.url(blob_id)])
            )
        parts = -(-content_length // PART_LENGTH)
        self._parts[blob_id] = parts
        upload = api_pb2.MultiPartUpload(
            part_length=PART_LENGTH,
            upload_urls=[f"{self.url(blob_id)}/parts/{number}" for number in range(1, parts + 1)],
            completion_url=f"{self.url(blob_id)}/complete",
        )
        return api_pb2.BlobCreateResponse(
            blob_ids=[blob_id], multiparts=api_pb2.MultiPartUploadList(items=[upload])
        )

    def put(self, data: bytes) -> str:
        """Store `data` under a fresh id and return it."""
        blob_id = self.create()
        self.path(blob_id).write_bytes(data)
        return blob_id

    def path(self, blob_id: str) -> Path:
        """The file holding blob `blob_id`; KeyError if it was never uploaded."""
        path = self._root / blob_id
        if not blob_id.startswith("bl-") or not path.is_file():
            raise KeyError(f"blob {blob_id} was never uploaded")
        return path

    def get(self, blob_id: str) -> bytes:
        return self.path(blob_id).read_bytes()

    def share(self, path: Path) -> str:
        """A URL under which byte ranges of `path` are served: GET `URL/OFFSET/LENGTH`. The caller must not
        change the file afterwards (the volumes replace files, never rewrite them)."""
        token = new_id("sh")
        self._shared[token] = path
        return f"{self.base_url}/shared/{token}"

    async def _handle_put(self, request: web.Request) -> web.Response:
        digest = await _receive(request, self._root / request.match_info["blob_id"])
        return web.Response(status=200, headers={"ETag": f'"{digest}"'})

    async def _handle_put_part(self, request: web.Request) -> web.Response:
        blob_id, part = request.match_info["blob_id"], int(request.match_info["part"])
        if not 1 <= part <= self._parts.get(blob_id, 0):
            return web.Response(status=404, text="no such upload part")
        digest = await _receive(request, self._root / f"{blob_id}.part{part}")
        return web.Response(status=200, headers={"ETag": f'"{digest}"'})

    async def _handle_complete(self, request: web.Request) -> web.Response:
        blob_id = request.match_info["blob_id"]
        parts = self._parts.pop(blob_id, 0)
        paths = [self._root / f"{blob_id}.part{number}" for number in range(1, parts + 1)]
        if not parts or not all(path.is_file() for path in paths):
            return web.Response(status=400, text="the multipart upload is incomplete")
        etag = await asyncio.to_thread(_assemble, paths, self._root / blob_id)
        return web.Response(
            text=f'<CompleteMultipartUploadResult><ETag>"{etag}"</ETag></CompleteMultipartUploadResult>'
        )

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        path = self._root / request.match_info["blob_id"]
        if not path.is_file():
            return web.Response(status=404, text="no such blob")
        return web.FileResponse(path)

    async def _handle_range(self, request: web.Request) -> web.StreamResponse:
        path = self._shared.get(request.match_info["token"])
        if path is None:
            return web.Response(status=404, text="no such shared file")
        offset, length = int(request.match_info["offset"]), int(request.match_info["length"])
        response = web.StreamResponse(headers={"Content-Length": str(length)})
        await response.prepare(request)
        with path.open("rb") as source:
            source.seek(offset)
            while length > 0:
                chunk = await asyncio.to_thread(source.read, min(_CHUNK, length))
                if not chunk:
                    break
                await response.write(chunk)
                length -= len(chunk)
        await response.write_eof()
        return response


async def _receive(request: web.Request, target: Path) -> str:
    """Stream the request body into `target` (replacing it whole at the end); the body's MD5 in hex."""
    md5 = hashlib.md5()
    partial = target.with_name(target.name + ".receiving")
    with partial.open("wb") as sink:
        async for chunk in request.content.iter_chunked(_CHUNK):
            md5.update(chunk)
            sink.write(chunk)
    os.replace(partial, target)
    return md5.hexdigest()


def _assemble(parts: list[Path], target: Path) -> str:
    digests = []
    partial = target.with_name(target.name + ".receiving")
    with partial.open("wb") as sink:
        for part in parts:
            md5 = hashlib.md5()
            with part.open("rb") as source:
                while chunk := source.read(_CHUNK):
                    md5.update(chunk)
                    sink.write(chunk)
            digests.append(md5.digest())
            part.unlink()
    os.replace(partial, target)
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(parts)}"
