"""Which packages a project ships, and a content hash of their files.

packages = discover_packages(root, read_pyproject(root))
files = hash_files(packages)            # {"mini/__init__.py": "<sha256>", ...}
digest = source_hash(files)
"""

from __future__ import annotations

import hashlib
import keyword
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mini.image.errors import SourcesError

_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class Package:
    """A top-level package (a folder) or module (a `.py` file) that the image ships.

    Package("mini", Path("/repo/src/mini"))
    """

    name: str
    path: Path


def discover_packages(project_root: Path, pyproject: Mapping[str, Any]) -> tuple[Package, ...]:
    """Every public top-level package or module under the project's source folder (`src/`, or uv's
    `[tool.uv.build-backend] module-root`); names starting with `_` or `.` stay local.

    Discovered, never listed: a package added under `src/` ships without editing any configuration, and a
    build backend's list of modules (uv's `module-name`) does not narrow what ships.

        discover_packages(Path("."), read_pyproject(Path(".")))  # (Package("experiment", ...), ...)
    """
    backend = pyproject.get("tool", {}).get("uv", {}).get("build-backend", {})
    module_root = project_root / backend.get("module-root", "src")
    if not module_root.is_dir():
        raise SourcesError(
            f"no source folder at {module_root}: mini ships the packages under it. Move your code into "
            f"{module_root}/<package>/ (the src layout), or set [tool.uv.build-backend] module-root."
        )
    packages = _all_packages(module_root)
    if not packages:
        raise SourcesError(
            f"{module_root} holds no Python package or module to ship. Put your code in "
            f"{module_root}/<package>/__init__.py or {module_root}/<module>.py."
        )
    return packages


def shipped_files(package: Path) -> list[str]:
    """The files a package ships, as POSIX paths relative to its parent folder, sorted; caches and hidden
    files excluded.

    shipped_files(Path("src/mini"))  # ["mini/__init__.py", "mini/image/spec.py", ...]
    """
    if package.is_file():
        return [package.name]
    # Plain strings rather than Path objects: this runs on every derivation, over every shipped file.
    found: list[str] = []
    parent = str(package.parent)
    for folder, subfolders, files in os.walk(package):
        subfolders[:] = [name for name in subfolders if not _is_skipped(name)]
        base = os.path.relpath(folder, parent).replace(os.sep, "/")
        found.extend(
            f"{base}/{name}"
            for name in files
            if not _is_skipped(name) and os.path.splitext(name)[1] not in _SKIPPED_SUFFIXES
        )
    return sorted(found)


def hash_files(packages: Iterable[Package]) -> dict[str, str]:
    """Map each shipped file's relative path (POSIX form) to the SHA-256 of its bytes.

    hash_files([Package("mini", Path("src/mini"))])  # {"mini/__init__.py": "9f86d0...", ...}
    """
    digests: dict[str, str] = {}
    for package in packages:
        parent = str(package.path.parent)
        for relative in shipped_files(package.path):
            with open(os.path.join(parent, relative), "rb") as file:
                digests[relative] = hashlib.sha256(file.read()).hexdigest()
    return digests


def source_hash(file_digests: Mapping[str, str]) -> str:
    """A short digest of shipped sources: depends on relative paths and bytes only, never on mtimes.

    source_hash({"mini/__init__.py": "9f86d0..."})  # "3b1f0c9a6d2e4f57"
    """
    digest = hashlib.sha256()
    for relative in sorted(file_digests):
        digest.update(f"{relative}\0{file_digests[relative]}\n".encode())
    return digest.hexdigest()[:16]


def _is_skipped(name: str) -> bool:
    return name in _SKIPPED_DIRS or name.startswith(".")


def _all_packages(module_root: Path) -> tuple[Package, ...]:
    packages = []
    for entry in sorted(module_root.iterdir(), key=lambda path: path.name):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            name = entry.stem
        elif entry.is_dir() and _holds_python(entry):
            name = entry.name
        else:
            continue
        _require_importable(name, entry)
        packages.append(Package(name, entry))
    return tuple(packages)


def _holds_python(folder: Path) -> bool:
    for _, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not _is_skipped(name)]
        if any(name.endswith(".py") for name in files):
            return True
    return False


def _require_importable(name: str, path: Path) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        suggestion = "".join(char if char.isalnum() else "_" for char in name)
        raise SourcesError(
            f"{path} cannot be imported: {name!r} is not a valid Python name. "
            f"Rename it (for example to {suggestion!r}), or move it out of the source folder."
        )
