"""Volumes: named file stores that outlive a call, written and read by the same code on every backend.

    ckpt = app.volume("checkpoints")            # a picklable handle; the backend provides the storage

    def train(cfg):
        out = ckpt.path / cfg["name"]           # a folder valid where the call runs
        out.mkdir(parents=True, exist_ok=True)
        (out / "params.npz").write_bytes(...)

    ckpt.listdir("")                            # from the caller, on every backend
    ckpt.download("a", "results/a")

A `Volume` is a name and a `VolumeStore`: the backend's storage as the caller reaches it (`FolderStore`, a
folder of this machine, for the local backends; Modal's is in `mini.modal_backend.volumes`). Inside a call
whose context says where that backend's volumes are (`mini.runtime.CallContext.volumes`), `path` and the
methods use the folder there instead.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from abc import ABC, abstractmethod
from pathlib import Path

from mini.errors import MiniError, OptionError
from mini.project import atomic_file
from mini.runtime import LOCAL, current

_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")
_CHUNK = 1 << 20

PathLike = str | os.PathLike[str]


def check_name(name: object) -> str:
    """`name` if it can name a volume on every backend (Modal's rules: letters, digits, `-`, `_`, `.`, under
    64 characters; not only dots, since it is also a folder's name); else `OptionError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not name.strip("."):
        raise OptionError(
            f"invalid volume name {name!r}: use 1 to 63 letters, digits, '-', '_' or '.' (Modal's rules for "
            "names), not only dots; for example 'checkpoints' or 'sweep-2024.06'."
        )
    return name


def inside(path: PathLike) -> str:
    """`path` as a relative POSIX path inside a volume ("" for its root); `ValueError` if it would leave it.

    inside("a/./b/")   # "a/b"
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"a path inside a volume is a str, got {type(text).__name__}")
    if text.startswith("/"):
        raise ValueError(
            f"{text!r} is an absolute path: paths in a volume are relative to its root, "
            "such as 'a/params.npz'."
        )
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{text!r} leaves the volume ('..'): paths in a volume stay inside it.")
    return "/".join(parts)


def missing(volume: str, path: str) -> FileNotFoundError:
    """The error for a path a volume does not hold, naming both."""
    return FileNotFoundError(f"volume {volume!r} has no file or folder {path!r}")


def not_a_folder(volume: str, path: str) -> NotADirectoryError:
    return NotADirectoryError(f"{path!r} in volume {volume!r} is a file, not a folder")


def not_a_file(volume: str, path: str) -> IsADirectoryError:
    where = f"{path!r} in volume {volume!r}" if path else f"the root of volume {volume!r}"
    return IsADirectoryError(f"{where} is a folder, not a file")


class VolumeStore(ABC):
    """One volume's files as the caller reaches them: the backend's half of a `Volume`.

    Paths are relative POSIX paths already checked by `inside` ("" is the root). A store travels (pickled)
    with the handles that hold it, so it keeps only what names the volume: a folder, a remote name.
    """

    name: str
    backend: str
    """The kind (`Backend.kind`) of the backend whose calls see this volume at `CallContext.volumes`."""
    folder: Path | None = None
    """Where the volume's files are on this machine, if they are here (None for a remote store)."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """The names in folder `path`, sorted."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """The whole content of file `path`."""

    @abstractmethod
    def download(self, path: str, target: Path) -> None:
        """Copy file `path` to `target`, or folder `path`'s files under folder `target`, streaming each."""

    @abstractmethod
    def upload(self, source: Path, path: str) -> None:
        """Copy local file `source` to `path`, or local folder `source`'s files under `path`, streaming each;
        every file is replaced whole."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete file or folder `path` (with everything in it); `""` empties the volume."""


class FolderStore(VolumeStore):
    """A volume that is a folder of this machine: a local backend's (`.mini/volumes/NAME`), or a mounted
    volume inside a call. Files are replaced whole (written beside, then renamed), so a reader never sees
    half of one, and for one file the last writer wins."""

    def __init__(self, name: str, folder: Path, backend: str = LOCAL) -> None:
        self.name = name
        self.folder = Path(folder)
        self.backend = backend

    def _at(self, path: str) -> Path:
        assert self.folder is not None
        return self.folder / path if path else self.folder

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._at(path)))
        except FileNotFoundError:
            if not path:
                return []  # the folder itself is made on first write
            raise missing(self.name, path) from None
        except NotADirectoryError:
            raise not_a_folder(self.name, path) from None

    def read_bytes(self, path: str) -> bytes:
        target = self._at(path)
        if target.is_dir():
            raise not_a_file(self.name, path)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise missing(self.name, path) from None

    def download(self, path: str, target: Path) -> None:
        source = self._at(path)
        if source.is_dir():
            copy_tree(source, target)
        elif source.is_file():
            copy_file(source, target)
        else:
            raise missing(self.name, path)

    def upload(self, source: Path, path: str) -> None:
        destination = self._at(path)
        if source.is_dir():
            copy_tree(source, destination)
            return
        if destination.is_dir():
            raise not_a_file(self.name, path)
        copy_file(source, destination)

    def remove(self, path: str) -> None:
        target = self._at(path)
        if not path:
            for child in self.listdir(""):
                _delete(target / child)
        elif os.path.lexists(target):
            _delete(target)
        else:
            raise missing(self.name, path)


def copy_file(source: Path, target: Path) -> None:
    """Copy `source` to `target` in chunks, replacing `target` whole, with `source`'s permissions."""
    with source.open("rb") as reader, atomic_file(target, durable=False) as writer:
        os.fchmod(writer.fileno(), stat.S_IMODE(os.fstat(reader.fileno()).st_mode))
        shutil.copyfileobj(reader, writer, _CHUNK)


def copy_tree(source: Path, target: Path) -> None:
    """Copy every file and folder under `source` to the same place under `target` (merged into what is
    there), each file as `copy_file` does."""
    target.mkdir(parents=True, exist_ok=True)
    for folder, subfolders, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        for name in subfolders:
            (target / relative / name).mkdir(exist_ok=True)
        for name in files:
            copy_file(Path(folder, name), target / relative / name)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


class Volume:
    """A named file store that outlives calls, the same on every backend; `app.volume(name)` makes one.

    >>> ckpt = app.volume("checkpoints")
    >>> app.run(train, cfg, ckpt)             # train writes under ckpt.path, where it runs
    >>> ckpt.read_bytes("a/params.npz")       # from the caller, no modal import

    The handle pickles: pass it to calls or capture it in a function. What a call writes is there for the
    caller, for later calls and for later processes once the call's result is back; a failed call's
    writes are kept. Two calls writing different files both land; for one file the last writer wins.
    Paths inside the volume are relative POSIX paths (`"a/params.npz"`, `""` for its root): an absolute
    one or one with `..` is a `ValueError`; a missing one is a `FileNotFoundError` naming the volume.
    """

    def __init__(self, name: str, store: VolumeStore) -> None:
        self.name = check_name(name)
        self._store = store

    def __repr__(self) -> str:
        return f"Volume({self.name!r}, backend={self._store.backend!r})"

    @property
    def backend(self) -> str:
        """The kind of backend whose storage holds the volume (`"local"`, `"modal"`)."""
        return self._store.backend

    @property
    def path(self) -> Path:
        """The volume's folder where this code runs: inside a call of its apparatus, where that call sees
        it (on Modal, where mini mounts it); outside a call, its local folder (local backends only).

        >>> (ckpt.path / "a").mkdir(exist_ok=True)
        """
        mounted = self._mounted()
        if mounted is not None:
            return mounted
        context = current()
        if context is not None and context.volumes is not None:
            if context.backend != self._store.backend:
                raise MiniError(
                    f"volume {self.name!r} belongs to the {self._store.backend} backend, and this call runs "
                    f"on {context.backend}, where it is not mounted. Make the volume with the apparatus "
                    f"that runs the call: app.volume({self.name!r})."
                )
            raise MiniError(
                f"volume {self.name!r} is not mounted in this call: calls see the volumes made with "
                f"app.volume() on their own apparatus (or a .w() variant of it). Call "
                f"app.volume({self.name!r}) on the apparatus that runs this call, before the call."
            )
        if self._store.folder is None:
            raise MiniError(
                f"volume {self.name!r} is on {self._store.backend}: outside a call it has no path on this "
                "machine. Here, use its listdir, read_bytes or download; use .path inside a call."
            )
        return self._store.folder

    def listdir(self, path: PathLike = "") -> list[str]:
        """The names in a folder of the volume, sorted; `""` is its root.

        >>> ckpt.listdir("")
        ['a', 'b']
        """
        return self._here().listdir(inside(path))

    def read_bytes(self, path: PathLike) -> bytes:
        """The content of a file of the volume (whole, in memory: use `download` for large files).

        >>> json.loads(ckpt.read_bytes("a/summary.json"))
        """
        relative = inside(path)
        store = self._here()
        if not relative:
            raise not_a_file(self.name, relative)
        return store.read_bytes(relative)

    def download(self, path: PathLike, local: PathLike) -> Path:
        """Copy a file of the volume to the local path `local`, or a folder's files into folder `local`
        (created, merged with what is there); streamed, never whole in memory. Returns `local` as a Path.

        >>> ckpt.download("a", "results/a")
        """
        target = Path(local)
        self._here().download(inside(path), target)
        return target

    def upload(self, local: PathLike, path: PathLike) -> None:
        """Copy the local file `local` to `path` in the volume, or a local folder's files under `path`;
        streamed, each file replaced whole (last writer wins).

        >>> ckpt.upload("data/train.csv", "inputs/train.csv")
        """
        source = Path(local)
        relative = inside(path)
        if not source.exists():
            raise FileNotFoundError(f"no local file or folder {str(source)!r} to upload")
        self._here().upload(source, relative)

    def remove(self, path: PathLike) -> None:
        """Delete a file or a folder (with everything in it) from the volume; `""` empties it.

        >>> ckpt.remove("a")
        """
        self._here().remove(inside(path))

    def _mounted(self) -> Path | None:
        """The folder where the call running this code sees the volume, if it does."""
        context = current()
        if context is None or context.volumes is None or context.backend != self._store.backend:
            return None
        folder = context.volumes / self.name
        return folder if folder.is_dir() else None

    def _here(self) -> VolumeStore:
        mounted = self._mounted()
        if mounted is None:
            return self._store
        return FolderStore(self.name, mounted, self._store.backend)
