"""mini volumes on Modal: one Modal Volume each, named after the project, mounted by mini in the functions of
the apparatus that made it, and reached from the caller with Modal's public volume API.

    store = ModalVolumeStore("ckpt", modal_volume_name("spirals", "ckpt"))   # Modal Volume "spirals.ckpt"
    store.listdir("")                 # VolumeListFiles; the Volume is created on first use
    mounts(stores)                    # {"/root/.mini/volumes/ckpt": modal.Volume}, for App.function

A container finds the mounts again from where mini's own sources are (`/root/mini` on Modal, the container's
root folder in the emulator): `MOUNTED` is `/root/.mini/volumes` there. The generic entry reloads them before
each call and commits them after it (`mini.modal_backend.entry`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import mini
from mini import _loop
from mini.project import atomic_file
from mini.runtime import MODAL
from mini.volumes import VolumeStore, missing, not_a_file, not_a_folder

T = TypeVar("T")

MOUNT_ROOT = PurePosixPath("/root/.mini/volumes")
# In a container: the folder that holds `mini/` is /root on Modal (the shipped sources are mounted there),
# so the mounts are beside it at the same relative place, whatever the container's root folder is.
MOUNTED = Path(os.path.abspath(os.path.dirname(os.path.dirname(mini.__file__)))) / ".mini" / "volumes"
_LONGEST = 63  # Modal's names are under 64 characters
# Bytes of a file's upload in memory at once (see `_bound_in_flight`).
UPLOAD_BUDGET = 128 << 20


def modal_volume_name(project: str, name: str) -> str:
    """The Modal Volume behind volume `name` of `project`: `project.name`, the project's name normalised
    (PEP 503, so it holds no dot and the first dot separates the two), shortened with a digest of the whole
    where Modal's length limit demands.

    >>> modal_volume_name("My_Project", "checkpoints")
    'my-project.checkpoints'
    """
    project = re.sub(r"[-_.]+", "-", project).lower()
    full = f"{project}.{name}"
    if len(full) <= _LONGEST:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    room = _LONGEST - len(name) - len(digest) - 2
    if room > 0:
        return f"{project[:room]}-{digest}.{name}"
    return f"{digest}.{name}"[:_LONGEST]


def mounts(stores: Iterable[ModalVolumeStore]) -> dict[str, Any]:
    """`App.function(volumes=...)` for mini's volumes: each at `/root/.mini/volumes/NAME`."""
    return {str(MOUNT_ROOT / store.name): store.modal_volume() for store in stores}


class ModalVolumeStore(VolumeStore):
    """A mini volume's Modal Volume, reached from the caller (or any process) through Modal's client.

    Pickled with the `mini.Volume` that holds it, it carries only the two names; the `modal.Volume` is looked
    up (and created if missing) on first use, wherever it is unpickled.
    """

    backend = MODAL
    folder = None

    def __init__(self, name: str, modal_name: str) -> None:
        self.name = name
        self.modal_name = modal_name
        self._volume: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "modal_name": self.modal_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["modal_name"])  # type: ignore[misc]

    def modal_volume(self) -> Any:
        """The `modal.Volume`, created on Modal when first used (a mount, or a method below)."""
        if self._volume is None:
            from mini.tls import ensure_grpc_trusts_system_ca

            ensure_grpc_trusts_system_ca()  # before modal opens its first connection
            import modal

            self._volume = modal.Volume.from_name(self.modal_name, create_if_missing=True)
        return self._volume

    def listdir(self, path: str) -> list[str]:
        async def names(volume: Any) -> list[str]:
            entries = await self._entries(volume, path, recursive=False)
            if _is_the_file(entries, path):
                raise not_a_folder(self.name, path)
            return sorted(PurePosixPath(entry.path).name for entry in entries)

        return self._run(names)

    def read_bytes(self, path: str) -> bytes:
        async def read(volume: Any) -> bytes:
            chunks = []
            try:
                async for chunk in volume.read_file.aio(path):
                    chunks.append(chunk)
            except FileNotFoundError:
                raise await self._not_a_file(volume, path) from None
            return b"".join(chunks)

        return self._run(read)

    def download(self, path: str, target: Path) -> None:
        async def download(volume: Any) -> None:
            entries = await self._entries(volume, path, recursive=True)
            if _is_the_file(entries, path):
                await _fetch(volume, path, target)
                return
            target.mkdir(parents=True, exist_ok=True)
            skip = len(path) + 1 if path else 0  # a folder's entries are listed as `path/...`
            for entry in entries:
                relative = entry.path.lstrip("/")[skip:]
                if entry.type == _file_types().DIRECTORY:
                    (target / relative).mkdir(parents=True, exist_ok=True)
                elif entry.type == _file_types().FILE:
                    await _fetch(volume, entry.path, target / relative)

        self._run(download)

    def upload(self, source: Path, path: str) -> None:
        async def upload(volume: Any) -> None:
            import modal

            try:
                async with volume.batch_upload.aio(force=True) as batch:
                    _bound_in_flight(batch)
                    if source.is_dir():
                        batch.put_directory(source, f"/{path}")
                    else:
                        batch.put_file(source, f"/{path}")
            except modal.exception.Error:
                if not source.is_dir() and await self._is_folder(volume, path):
                    raise not_a_file(self.name, path) from None
                raise

        if not path and not source.is_dir():
            raise not_a_file(self.name, path)
        self._run(upload)

    def remove(self, path: str) -> None:
        async def remove(volume: Any) -> None:
            if path:
                targets = [path]
            else:  # every entry of the root, rather than the root itself
                targets = [entry.path for entry in await self._entries(volume, "", recursive=False)]
            for target in targets:
                try:
                    await volume.remove_file.aio(f"/{target}", recursive=True)
                except FileNotFoundError:
                    raise missing(self.name, target) from None

        self._run(remove)

    async def _entries(self, volume: Any, path: str, *, recursive: bool) -> list[Any]:
        import modal

        try:
            return await volume.listdir.aio(f"/{path}", recursive=recursive)
        except modal.exception.NotFoundError:
            if not path:
                return []
            raise missing(self.name, path) from None

    async def _is_folder(self, volume: Any, path: str) -> bool:
        try:
            entries = await self._entries(volume, path, recursive=False)
        except FileNotFoundError:
            return False
        return not _is_the_file(entries, path)

    async def _not_a_file(self, volume: Any, path: str) -> OSError:
        """Why file `path` could not be read: it is a folder, or it is not there."""
        if await self._is_folder(volume, path):
            return not_a_file(self.name, path)
        return missing(self.name, path)

    def _run(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Run `operation(modal_volume)` on mini's loop; Modal refusing the token is mini's auth error."""
        volume = self.modal_volume()

        async def run() -> T:
            import modal

            from mini.modal_backend.auth import token_error

            try:
                return await operation(volume)
            except modal.exception.AuthError:
                raise token_error() from None

        return _loop.wait(run())


def _bound_in_flight(batch: Any) -> None:
    """Cap the bytes an upload holds in memory at once, so that uploading a large file keeps memory flat.

    Modal's client sends a large file's parts at once, within a byte budget of half the free memory (up
    to 2 GiB): a 1 GiB upload grew the caller by about as much. With `UPLOAD_BUDGET` two parts are in
    flight (the client reserves four read chunks per part). Modal offers no public setting for this, so
    the budget is replaced on the upload's implementation object (`_private` and its test say which names
    that takes); if a new modal moves it, this fails here rather than silently holding files in memory.
    """
    from mini.modal_backend._private import _ByteBudget, synchronizer

    raw = synchronizer._translate_in(batch)
    if not isinstance(getattr(raw, "_byte_budget", None), _ByteBudget):
        raise RuntimeError(
            f"modal's volume upload ({type(raw).__name__}) has no byte budget where mini expects one: "
            "mini.modal_backend.volumes must be updated for this version of modal."
        )
    raw._byte_budget = _ByteBudget(UPLOAD_BUDGET)


def _is_the_file(entries: list[Any], path: str) -> bool:
    # Modal lists a file as itself; a folder as what it holds (a folder `a` holding `a` lists `a/a`).
    return len(entries) == 1 and entries[0].path.lstrip("/") == path and entries[0].type == _file_types().FILE


async def _fetch(volume: Any, path: str, target: Path) -> None:
    """Stream file `path` into `target`, replacing it whole once complete."""
    with atomic_file(target, durable=False) as out:
        async for chunk in volume.read_file.aio(path):
            out.write(chunk)


def _file_types() -> Any:
    from modal.types import FileEntryType  # also `modal.volume.FileEntryType`, which mypy cannot see

    return FileEntryType
