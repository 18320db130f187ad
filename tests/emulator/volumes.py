"""Volumes: each one's committed state as a folder on disk, and the views containers mount, commit and reload.

    store = VolumeStore(workdir / "volumes", blobs)
    volume = store.create("weights")
    await store.put_files(volume, [("/a.txt", content_path, 0o644)], overwrite=False)
    view = await store.mount(volume, container_root / "weights")   # a copy of the committed state
    ...                                                             # the container writes into the copy
    await store.commit(view)                                        # its changes become the committed state

A new volume is VolumeFS v1: the client leaves the version unspecified unless asked, and Modal's docs call
v2 an opt-in beta (`version=2`, `modal volume create --version=2`). So the client speaks the v1 RPCs
(VolumeListFiles, VolumePutFiles over MountPutFile, VolumeRemoveFile, VolumeCopyFiles) plus VolumeGetFile2,
which it uses for reads of either version.

Semantics, as Modal documents them: a container sees the committed state when it starts and when it
reloads; what it changes is visible elsewhere only once it commits. A commit applies the container's own
changes since it mounted or last reloaded (new and modified files, deletions) and nothing else, so two
containers writing different files both keep theirs, and for one file the last commit wins. A reload
commits first (Modal: uncommitted changes "may implicitly be committed when reloading"), then brings the
view to the committed state.

Committed files are only ever replaced, never rewritten in place, so a download can keep reading the file it
started with (a hard link taken when VolumeGetFile2 is answered) while later commits replace it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from modal._utils.blob_utils import BLOCK_SIZE
from modal_proto import api_pb2

from tests.emulator.blobs import BlobStore
from tests.emulator.ids import new_id

# What a scan records of one entry: ("d",) for a folder, ("l", target) for a link, ("f", size, mtime_ns).
Signature = tuple
_FILE = api_pb2.FileEntry.FileType


class VolumeError(Exception):
    """A request the volume cannot honour; `status` names the gRPC status Modal answers with."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Volume:
    volume_id: str
    name: str  # "" for an ephemeral volume
    version: int
    created_at: float
    root: Path  # the committed state
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def metadata(self) -> api_pb2.VolumeMetadata:
        return api_pb2.VolumeMetadata(
            name=self.name,
            version=self.version,
            creation_info=api_pb2.CreationInfo(created_at=self.created_at, created_by="emulator"),
        )


@dataclass
class View:
    """A container's copy of a volume, at `path`; `base` is what the copy held when last synchronised."""

    volume: Volume
    path: Path
    base: dict[str, Signature]

    def changed(self) -> bool:
        return _scan(self.path) != self.base


class VolumeStore:
    """Every volume of the emulator, by id and by name."""

    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self._root = root
        self._blobs = blobs
        self._snapshots = root / ".downloads"
        self._snapshots.mkdir(parents=True, exist_ok=True)
        self._volumes: dict[str, Volume] = {}
        self._names: dict[str, str] = {}

    # --- the volumes themselves ---

    def create(self, name: str = "", version: int = api_pb2.VOLUME_FS_VERSION_V1) -> Volume:
        volume_id = new_id("vo")
        if version == api_pb2.VOLUME_FS_VERSION_UNSPECIFIED:
            version = api_pb2.VOLUME_FS_VERSION_V1
        root = self._root / volume_id
        root.mkdir(parents=True)
        volume = Volume(volume_id, name, version, time.time(), root)
        self._volumes[volume_id] = volume
        if name:
            self._names[name] = volume_id
        return volume

    def get(self, volume_id: str) -> Volume:
        if volume_id not in self._volumes:
            raise VolumeError("NOT_FOUND", f"Volume {volume_id} not found")
        return self._volumes[volume_id]

    def named(self, name: str) -> Volume | None:
        volume_id = self._names.get(name)
        return self._volumes[volume_id] if volume_id else None

    def listed(self) -> list[Volume]:
        """The named volumes, newest first."""
        return sorted(
            (self._volumes[volume_id] for volume_id in self._names.values()),
            key=lambda volume: volume.created_at,
            reverse=True,
        )

    def rename(self, volume: Volume, name: str) -> None:
        if name in self._names:
            raise VolumeError("ALREADY_EXISTS", f"Volume '{name}' already exists")
        self._names.pop(volume.name, None)
        volume.name = name
        self._names[name] = volume.volume_id

    async def delete(self, volume: Volume) -> None:
        self._volumes.pop(volume.volume_id, None)
        if volume.name:
            self._names.pop(volume.name, None)
        await asyncio.to_thread(shutil.rmtree, volume.root, True)

    # --- the committed state, as clients read and change it ---

    async def entries(self, volume: Volume, path: str, *, recursive: bool) -> list[api_pb2.FileEntry]:
        """What `listdir(path)` lists: a file itself, or a folder's entries (all below it if `recursive`)."""
        target = _inside(volume.root, path)
        if not os.path.lexists(target):
            raise VolumeError("NOT_FOUND", f"No such file or directory: {path}")
        return await asyncio.to_thread(_list, volume.root, target, recursive)

    async def download(
        self, volume: Volume, path: str, start: int, length: int
    ) -> api_pb2.VolumeGetFile2Response:
        """Block URLs for bytes `start` to `start + length` of a file (all of it when `length` is 0)."""
        target = _inside(volume.root, path)
        if not target.is_file():
            raise VolumeError("NOT_FOUND", f"No such file: {path}")
        snapshot = self._snapshots / new_id(volume.volume_id)
        os.link(target, snapshot)
        size = snapshot.stat().st_size
        start = min(start, size)
        end = min(size, start + length) if length else size
        url = self._blobs.share(snapshot)
        urls = []
        offset = start
        while offset < end:
            block_end = min(end, (offset // BLOCK_SIZE + 1) * BLOCK_SIZE)
            urls.append(f"{url}/{offset}/{block_end - offset}")
            offset = block_end
        return api_pb2.VolumeGetFile2Response(get_urls=urls, size=size, start=start, len=end - start)

    async def put_files(self, volume: Volume, files: list[tuple[str, Path, int]], *, overwrite: bool) -> None:
        """Place uploaded contents (volume path, contents file, mode) in the committed state, all or none."""
        targets = []
        for filename, source, mode in files:
            target = _inside(volume.root, filename)
            if target == volume.root or target.is_dir():
                raise VolumeError("INVALID_ARGUMENT", f"{filename}: is a directory and cannot be overwritten")
            if os.path.lexists(target) and not overwrite:
                raise VolumeError(
                    "ALREADY_EXISTS", f"{filename}: already exists (disallow_overwrite_existing_files=True)"
                )
            targets.append((target, source, mode))
        async with volume.lock:
            await asyncio.to_thread(_place_all, volume.root, targets)

    async def remove(self, volume: Volume, path: str, *, recursive: bool) -> None:
        target = _inside(volume.root, path)
        if not os.path.lexists(target):
            raise VolumeError("NOT_FOUND", f"No such file or directory: {path}")
        if target.is_dir() and not target.is_symlink():
            if any(target.iterdir()) and not recursive:
                raise VolumeError("INVALID_ARGUMENT", f"{path} is a non-empty directory: pass recursive=True")
            async with volume.lock:
                if target == volume.root:
                    for child in list(target.iterdir()):
                        await asyncio.to_thread(_remove, child)
                else:
                    await asyncio.to_thread(shutil.rmtree, target)
        else:
            async with volume.lock:
                target.unlink()

    async def copy(self, volume: Volume, sources: list[str], destination: str, *, recursive: bool) -> None:
        """Copy within the volume with `cp` semantics: several sources need a destination folder."""
        resolved = []
        for source in sources:
            path = _inside(volume.root, source)
            if not os.path.lexists(path):
                raise VolumeError("NOT_FOUND", f"Source file not found: {source}")
            if path.is_dir() and not recursive:
                raise VolumeError(
                    "INVALID_ARGUMENT", f"{source} is a directory: copying it needs recursive=True"
                )
            resolved.append(path)
        target = _inside(volume.root, destination)
        into_folder = target.is_dir() or destination.endswith("/")
        if len(resolved) > 1 and not into_folder:
            raise VolumeError("INVALID_ARGUMENT", f"{destination} is not a directory")
        async with volume.lock:
            for path in resolved:
                await asyncio.to_thread(_copy_into, path, target / path.name if into_folder else target)

    # --- containers' views ---

    async def mount(self, volume: Volume, path: Path) -> View:
        """A container's copy of the committed state at `path`."""
        async with volume.lock:
            await asyncio.to_thread(_mirror, volume.root, path)
            return View(volume, path, await asyncio.to_thread(_scan, path))

    async def commit(self, view: View) -> None:
        """Apply what the container changed since its view was last synchronised."""
        self._require_live(view.volume)
        async with view.volume.lock:
            view.base = await asyncio.to_thread(_apply_changes, view.path, view.base, view.volume.root)

    async def reload(self, view: View) -> None:
        """Commit the view's changes, then bring it to the committed state."""
        self._require_live(view.volume)
        async with view.volume.lock:
            await asyncio.to_thread(_apply_changes, view.path, view.base, view.volume.root)
            await asyncio.to_thread(_mirror, view.volume.root, view.path)
            view.base = await asyncio.to_thread(_scan, view.path)

    def _require_live(self, volume: Volume) -> None:
        if self._volumes.get(volume.volume_id) is not volume:
            raise VolumeError("NOT_FOUND", f"Volume {volume.volume_id} was deleted")


def _inside(root: Path, path: str) -> Path:
    parts = [part for part in PurePosixPath("/" + path).parts[1:] if part not in ("", ".")]
    if ".." in parts:
        raise VolumeError("INVALID_ARGUMENT", f"path {path!r} leaves the volume")
    return root.joinpath(*parts)


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative posix path, lstat) of everything below `root`, parents before children."""
    for directory, folders, files in os.walk(root):
        folders.sort()
        for name in sorted(folders) + sorted(files):
            path = os.path.join(directory, name)
            yield os.path.relpath(path, root).replace(os.sep, "/"), os.lstat(path)


def _signature(path: str, info: os.stat_result) -> Signature:
    if stat.S_ISLNK(info.st_mode):
        return ("l", os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return ("d",)
    return ("f", info.st_size, info.st_mtime_ns)


def _scan(root: Path) -> dict[str, Signature]:
    if not root.is_dir():
        return {}
    return {rel: _signature(str(root / rel), info) for rel, info in _walk(root)}


def _entry(root: Path, path: Path) -> api_pb2.FileEntry:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        kind = _FILE.SYMLINK
    elif stat.S_ISDIR(info.st_mode):
        kind = _FILE.DIRECTORY
    else:
        kind = _FILE.FILE
    return api_pb2.FileEntry(
        path=path.relative_to(root).as_posix(),
        type=kind,
        mtime=int(info.st_mtime),
        size=info.st_size if kind == _FILE.FILE else 0,
    )


def _list(root: Path, target: Path, recursive: bool) -> list[api_pb2.FileEntry]:
    if not target.is_dir() or target.is_symlink():
        return [_entry(root, target)]
    if recursive:
        return [_entry(root, target / rel) for rel, _ in _walk(target)]
    return [_entry(root, child) for child in sorted(target.iterdir())]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _replace_with_file(source: Path, target: Path) -> None:
    """Copy `source` over `target` whole (the old file stays intact for anyone still reading it)."""
    _make_folder(target.parent)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    partial = target.with_name(f".{target.name}.committing")
    if source.is_symlink():
        os.symlink(os.readlink(source), partial)
    else:
        shutil.copy2(source, partial)
    os.replace(partial, target)


def _make_folder(path: Path) -> None:
    """Make `path` a folder, replacing a file that stands where it or a parent should be."""
    for parent in [*reversed(path.parents), path]:
        if os.path.lexists(parent) and not parent.is_dir():
            parent.unlink()
    path.mkdir(parents=True, exist_ok=True)


def _place_all(root: Path, targets: list[tuple[Path, Path, int]]) -> None:
    for target, source, mode in targets:
        _make_folder(target.parent)
        partial = target.with_name(f".{target.name}.uploading")
        if os.path.lexists(partial):
            partial.unlink()
        os.link(source, partial)
        if mode:
            os.chmod(partial, stat.S_IMODE(mode))
        os.replace(partial, target)


def _copy_into(source: Path, target: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        _remove(target)
        shutil.copytree(source, target, symlinks=True)
    else:
        _replace_with_file(source, target)


def _mirror(source: Path, target: Path) -> None:
    """Make `target` hold what `source` holds, copying only the files that differ."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = _scan(source)
    present = _scan(target)
    for rel in sorted(set(present) - set(wanted), key=lambda rel: rel.count("/"), reverse=True):
        _remove(target / rel)
    for rel, signature in wanted.items():  # parents come before children
        if present.get(rel) == signature:
            continue
        if signature[0] == "d":
            _make_folder(target / rel)
        else:
            _replace_with_file(source / rel, target / rel)


def _apply_changes(view: Path, base: dict[str, Signature], committed: Path) -> dict[str, Signature]:
    """Apply to `committed` what changed in `view` since it held `base`; return what it holds now."""
    current = _scan(view)
    for rel in sorted(set(base) - set(current), key=lambda rel: rel.count("/"), reverse=True):
        target = committed / rel
        if base[rel][0] == "d":
            if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
                target.rmdir()
        elif os.path.lexists(target) and not (target.is_dir() and not target.is_symlink()):
            target.unlink()
    for rel, signature in current.items():
        if base.get(rel) == signature:
            continue
        if signature[0] == "d":
            _make_folder(committed / rel)
        else:
            _replace_with_file(view / rel, committed / rel)
    return current
