"""Uploaded file contents by sha256 (what MountPutFile fills), in files on disk.

    files = FileStore(workdir / "files")
    files.put_bytes(digest, b"...")          # a small file sent inline
    files.adopt(digest, blob_path)           # a large one uploaded as a blob: the blob's file is taken over
    files.path(digest)                       # where the contents are; never changed once written

Mounts and volume uploads both refer to contents by digest, as Modal's do.
"""

from __future__ import annotations

import os
from pathlib import Path


class FileStore:
    """Contents keyed by their sha256 in hex."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)

    def __contains__(self, digest: str) -> bool:
        return self._file(digest).is_file()

    def path(self, digest: str) -> Path:
        path = self._file(digest)
        if not path.is_file():
            raise KeyError(f"no file with sha256 {digest} was uploaded")
        return path

    def put_bytes(self, digest: str, data: bytes) -> None:
        partial = self._file(digest).with_suffix(".receiving")
        partial.write_bytes(data)
        os.replace(partial, self._file(digest))

    def adopt(self, digest: str, blob: Path) -> None:
        """Take the uploaded blob's file as the contents of `digest` (a link: the blob stays readable)."""
        target = self._file(digest)
        if not target.exists():
            os.link(blob, target)

    def _file(self, digest: str) -> Path:
        if not digest or any(char not in "0123456789abcdef" for char in digest):
            raise KeyError(f"malformed sha256 {digest!r}")
        return self._root / digest
