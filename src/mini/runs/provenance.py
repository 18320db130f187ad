"""What a run record says about where a run came from: readable arguments and the git state.

>>> summarise_arguments(train, (1e-3,), {"width": 64})
'lr=0.001, width=64'
>>> git_state(Path("."))
('c439948...', True)
"""

from __future__ import annotations

import inspect
import reprlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SUMMARY_LENGTH = 120
_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def function_name(fn: Callable[..., Any]) -> str:
    """`module:qualname`, the way a reader would look the function up."""
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}:{getattr(fn, '__qualname__', None) or repr(fn)}"


def summarise_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Arguments as `name=value, ...`, each value shortened, the whole at most about 120 characters."""
    try:
        named = list(inspect.signature(fn).bind_partial(*args, **kwargs).arguments.items())
        parts = [_part(name, value) for name, value in named]
    except (TypeError, ValueError):  # no signature, or the call does not fit it (it will fail when run)
        parts = [_repr.repr(value) for value in args] + [_part(k, v) for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= _SUMMARY_LENGTH else text[: _SUMMARY_LENGTH - 1] + "…"


def _part(name: str, value: Any) -> str:
    return f"{name}={_repr.repr(value)}"


def git_state(project_root: Path) -> tuple[str | None, bool | None]:
    """The checked-out commit and whether the work tree differs from it; (None, None) outside git."""
    try:
        commit = _git(project_root, "rev-parse", "HEAD")
        status = _git(project_root, "status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status)


def _git(project_root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(project_root), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
