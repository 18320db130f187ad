"""Memoising `uv export` under the project's `.mini/` folder, keyed by what determines its output.

key = export_key(root, groups)
lines = load_export(root, key)       # None on a miss
store_export(root, key, lines)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mini.image.errors import LockfileError

# Part of every key: bump it when the stored lines' format or parsing changes, so old entries are ignored.
_EXPORT_FORMAT = b"mini-export-1"


def state_dir(project_root: Path) -> Path:
    """The project's `.mini/` folder, created on first use; it ignores itself in git (own `.gitignore`).

    state_dir(root) / "last_spec.json"
    """
    folder = project_root / ".mini"
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".gitignore").write_text("*\n")
    return folder


def export_key(project_root: Path, groups: Sequence[str]) -> str:
    """A digest of `pyproject.toml`, `uv.lock` and the chosen groups; `LockfileError` without `uv.lock`.

    export_key(root, ("cuda",))  # "5d41402abc4b2a76..."
    """
    digest = hashlib.sha256(_EXPORT_FORMAT)
    for name in ("pyproject.toml", "uv.lock"):
        try:
            content = (project_root / name).read_bytes()
        except FileNotFoundError:
            if name == "uv.lock":
                raise LockfileError.missing(project_root) from None
            raise
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    digest.update(json.dumps(list(groups)).encode())
    return digest.hexdigest()[:32]


def load_export(project_root: Path, key: str) -> tuple[str, ...] | None:
    """The cached requirement lines for `key`, or None if absent or unreadable."""
    try:
        lines = json.loads((project_root / ".mini" / "exports" / f"{key}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return tuple(lines) if isinstance(lines, list) else None


def store_export(project_root: Path, key: str, lines: Sequence[str]) -> None:
    """Remember the requirement lines exported for `key`."""
    write_json_atomically(state_dir(project_root) / "exports" / f"{key}.json", list(lines))


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) across processes; it is released on exit.

    with exclusive_lock(cache / "abc.lock"):
        build_once()
    """
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json_atomically(path: Path, value: Any) -> None:
    """Write JSON so that a concurrent reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(value, file, indent=1)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
