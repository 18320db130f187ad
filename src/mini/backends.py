"""Backends by name, for `--app`: the base never imports a backend, and a backend loads only when chosen."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from mini.apparatus import Apparatus
from mini.errors import OptionError

_BACKENDS = {
    "local": "mini.local.apparatus:LocalApparatus",
    "modal": "mini.modal_backend:ModalApparatus",
}
DEFAULT = "local"


def names() -> list[str]:
    return sorted(_BACKENDS)


def make(backend: str, name: str, **settings: Any) -> Apparatus:
    """Build the apparatus called `backend` ("local" or "modal").

    >>> app = make("local", "sweep", workers=2, mode="process")
    """
    where = _BACKENDS.get(backend)
    if where is None:
        raise OptionError(f"unknown app {backend!r}; choose one of: {', '.join(names())}.")
    module, attribute = where.split(":")
    cls = getattr(importlib.import_module(module), attribute)
    return cls(name, **settings)


def chosen(flag: str | None, start: Path | None = None) -> str:
    """The backend to use: the `--app` flag, else `MINI_APP`, else `[tool.mini] app` in pyproject.toml."""
    if flag:
        return flag
    if os.environ.get("MINI_APP"):
        return os.environ["MINI_APP"]
    return _from_pyproject(start or Path.cwd()) or DEFAULT


def _from_pyproject(start: Path) -> str | None:
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            if sys.version_info >= (3, 11):
                import tomllib
            else:
                import tomli as tomllib
            with pyproject.open("rb") as file:
                app = tomllib.load(file).get("tool", {}).get("mini", {}).get("app")
            return str(app) if app else None
    return None
