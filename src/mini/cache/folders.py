"""Caches by name: where each lives (`.mini/cache/NAME/`), what each holds, and clearing one.

>>> [(info.name, info.entries) for info in list_caches()]
[('spirals-v1', 6)]
>>> clear_cache("spirals-v1")
CacheInfo(name='spirals-v1', entries=6, bytes=9120, last_used=1763916062.1)
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mini.cache.store import footprint, forget_store
from mini.errors import OptionError
from mini.project import find_project_root, state_path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class CacheInfo:
    """One result cache: its name, how many calls it holds, its size on disk in bytes, and when a map last
    used it (seconds since the epoch; None if never)."""

    name: str
    entries: int
    bytes: int
    last_used: float | None
    unreadable_segments: int = 0
    """Files written by another version of mini (or damaged): ignored, their calls recomputed."""


def check_name(name: str) -> str:
    """`name` if it can name a cache folder, else `OptionError`."""
    if not isinstance(name, str) or not NAME.match(name):
        raise OptionError(
            f"cache name {name!r} must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (it names a folder under .mini/cache/), e.g. cache='spirals-v1'."
        )
    return name


def default_name(apparatus: str) -> str:
    """The cache `cache=True` means: the apparatus's name, made a folder name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", apparatus).lstrip(".-_")[:100]
    return name or "default"


def caches_dir(project_root: Path | None = None, create: bool = False) -> Path:
    """`<project>/.mini/cache`, where the project's caches live."""
    return state_path(project_root or find_project_root(), "cache", create=create)


def cache_folder(name: str, project_root: Path | None = None, create: bool = False) -> Path:
    """`<project>/.mini/cache/NAME`; with `create`, made (with `.mini/` ignoring itself in git)."""
    return state_path(project_root or find_project_root(), "cache", check_name(name), create=create)


def list_caches(project_root: Path | None = None) -> list[CacheInfo]:
    """Every cache of the project (found from the working directory unless `project_root`), by name.

    >>> for info in list_caches():
    ...     print(info.name, info.entries, info.bytes)
    """
    parent = caches_dir(project_root)
    if not parent.is_dir():
        return []
    return [
        _info(folder) for folder in sorted(parent.iterdir()) if folder.is_dir() and NAME.match(folder.name)
    ]


def clear_cache(name: str, project_root: Path | None = None) -> CacheInfo | None:
    """Delete the cache `name` and everything in it; returns what it held, or None if there was no such
    cache. A sweep using it at that moment goes on, and starts the cache again with what it computes next.

    >>> clear_cache("spirals-v1")
    """
    folder = cache_folder(name, project_root)
    if not folder.is_dir():
        return None
    info = _info(folder)
    shutil.rmtree(folder, ignore_errors=True)
    forget_store(folder)
    return info


def _info(folder: Path) -> CacheInfo:
    held = footprint(folder)
    return CacheInfo(folder.name, held.entries, held.bytes, held.last_used, held.unreadable_segments)
