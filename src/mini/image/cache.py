"""Memoising `uv export` under the project's `.mini/` folder, keyed by what determines its output.

key = export_key(root, groups)
lines = load_export(root, key)       # None on a miss
store_export(root, key, lines)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from mini.image.errors import LockfileError
from mini.project import state_dir, state_path, write_json

# Part of every key: bump it when the stored lines' format or parsing changes, so old entries are ignored.
_EXPORT_FORMAT = b"mini-export-1"


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
        lines = json.loads((state_dir(project_root) / "exports" / f"{key}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return tuple(lines) if isinstance(lines, list) else None


def store_export(project_root: Path, key: str, lines: Sequence[str]) -> None:
    """Remember the requirement lines exported for `key`."""
    write_json(state_path(project_root, "exports") / f"{key}.json", list(lines), durable=False)
