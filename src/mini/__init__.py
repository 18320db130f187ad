"""mini: write experiment code once; run it here or on Modal's GPUs by swapping one object.

>>> from mini import LocalApparatus
>>> with LocalApparatus("demo", workers=2) as app:
...     print(list(app.map(pow, [2, 3], [2, 2])))
[4, 9]

Importing mini does no work: backends load on first use, and `modal` only when a Modal backend is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mini.apparatus import Apparatus
    from mini.cache import CacheInfo, clear_cache, list_caches
    from mini.errors import (
        CallTimeoutError,
        MiniError,
        ModalAuthError,
        OptionError,
        RemoteError,
        SerializationError,
        WorkerCrashed,
    )
    from mini.local.apparatus import LocalApparatus
    from mini.modal_backend import ModalApparatus
    from mini.options import Options
    from mini.reports import Placement, Report, report
    from mini.runs import Job, Run
    from mini.volumes import Volume

__all__ = [
    "Apparatus",
    "CacheInfo",
    "CallTimeoutError",
    "Job",
    "LocalApparatus",
    "MiniError",
    "ModalApparatus",
    "ModalAuthError",
    "OptionError",
    "Options",
    "Placement",
    "RemoteError",
    "Report",
    "Run",
    "SerializationError",
    "Volume",
    "WorkerCrashed",
    "report",
    "clear_cache",
    "list_caches",
]

_WHERE = {
    "Apparatus": "mini.apparatus",
    "CacheInfo": "mini.cache",
    "clear_cache": "mini.cache",
    "list_caches": "mini.cache",
    "LocalApparatus": "mini.local.apparatus",
    "ModalApparatus": "mini.modal_backend",
    "ModalAuthError": "mini.errors",
    "Options": "mini.options",
    "Placement": "mini.reports",
    "Report": "mini.reports",
    "report": "mini.reports",
    "Job": "mini.runs",
    "Run": "mini.runs",
    "CallTimeoutError": "mini.errors",
    "MiniError": "mini.errors",
    "OptionError": "mini.errors",
    "RemoteError": "mini.errors",
    "SerializationError": "mini.errors",
    "Volume": "mini.volumes",
    "WorkerCrashed": "mini.errors",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mini' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
