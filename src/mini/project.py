"""Project-local state, in one place: which project, its `.mini/` folder, and how files there are written.

    root = find_project_root()                 # MINI_PROJECT, else the nearest pyproject.toml above the cwd
    folder = state_path(root, "runs")          # <root>/.mini/runs (created; .mini ignores itself in git)
    atomic_write(folder / "x.json", b"{...}")  # readers see the old file or the new one, never half of one
    with exclusive_lock(folder / "x.lock"):    # one process at a time, across processes
        ...

The `.mini/` layout: `runs/` (detached runs), `exports/` (cached `uv export` output), `sources/` (snapshots of
the shipped sources for isolated workers), `volumes/` (the local backends' volumes, a folder each),
`last_spec.json` (the image spec last dispatched).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from mini.image.errors import ProjectNotFoundError

STATE_DIR = ".mini"


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding a `pyproject.toml`. Without `start`: the folder
    `MINI_PROJECT` names (`bin/mini` sets it to its own project), else the working directory's project.

    find_project_root(Path("src/mini"))  # Path("/home/me/mini")
    """
    named = os.environ.get("MINI_PROJECT") if start is None else None
    if named:
        root = Path(named).expanduser().resolve()
        if not (root / "pyproject.toml").is_file():
            raise ProjectNotFoundError(
                f"MINI_PROJECT names {root}, which holds no pyproject.toml. Point it (or --project) at "
                "your project's folder."
            )
        return root
    here = (start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise ProjectNotFoundError(
        f"no pyproject.toml in {here} or any folder above it. Run mini from inside your project, "
        "or create one with `uv init --package`."
    )


def state_dir(project_root: Path) -> Path:
    """`<project>/.mini`, where mini keeps this checkout's state (not created here; see `state_path`)."""
    return project_root / STATE_DIR


def state_path(project_root: Path, *parts: str, create: bool = True) -> Path:
    """A folder under `.mini/`, created (with `.mini/` ignoring itself in git) unless `create=False`.

    state_path(root, "runs")          # <root>/.mini/runs
    """
    folder = state_dir(project_root).joinpath(*parts)
    if create and not folder.is_dir():
        top = state_dir(project_root)
        if not top.is_dir():
            top.mkdir(parents=True, exist_ok=True)
            (top / ".gitignore").write_text("*\n")
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def volume_folder(project_root: Path, name: str) -> Path:
    """`<project>/.mini/volumes/NAME`, the folder holding a local volume's files (created).

    volume_folder(root, "checkpoints")   # <root>/.mini/volumes/checkpoints
    """
    return state_path(project_root, "volumes", name)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` whole: readers see the old content or the new, never a mix, even with
    other processes writing the same path at once (each writes its own temporary file first).

    `durable` (the default) also syncs the data to disk before the rename, so a power cut cannot leave an
    empty file under the new name; without it the write survives the process, not the machine.

    >>> atomic_write(folder / "run.json", b"{...}")
    """
    with atomic_file(path, durable=durable) as file:
        file.write(data)


@contextlib.contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A file to write `path`'s new content into, in pieces; it replaces `path` whole when the block ends
    (as `atomic_write` does), and is discarded if the block raises.

    with atomic_file(target, durable=False) as out:
        shutil.copyfileobj(source, out)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_writes(files: Sequence[tuple[Path, bytes]]) -> None:
    """`atomic_write` of many files, each durable, with one sync to disk for them all rather than one per
    file: every temporary file is written, the disks are synced once, then each replaces its path.

    >>> atomic_writes([(folder / "a.json", b"{}"), (folder / "b.json", b"{}")])
    """
    written: list[tuple[str, Path]] = []
    replaced = 0
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
            written.append((temporary, path))
            with os.fdopen(handle, "wb") as file:
                file.write(data)
        if written:
            os.sync()
        for temporary, path in written:
            os.replace(temporary, path)
            replaced += 1
    finally:
        for temporary, _ in written[replaced:]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def write_json(path: Path, value: Any, *, durable: bool = True) -> None:
    """`atomic_write` of `value` as indented JSON."""
    atomic_write(path, json.dumps(value, indent=1).encode(), durable=durable)


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None if there is no such file."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) across processes; released on exit.

    with exclusive_lock(cache / "abc.lock"):
        build_once()
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
