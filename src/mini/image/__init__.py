"""The image spec: what runs remotely, described without reference to any backend.

from mini.image import derive_image_spec
spec = derive_image_spec()
print(spec.python_version, len(spec.requirements), spec.image_hash)

Names load on first use, so that importing one module of this package (its errors, say) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mini.image.diff import SpecDiff, diff_specs, load_dispatched_spec, record_dispatched_spec
    from mini.image.errors import (
        ImageSpecError,
        LockfileError,
        ProjectNotFoundError,
        SourcesError,
        UvCommandError,
        UvNotFoundError,
    )
    from mini.image.materialise import (
        Environment,
        materialise_environment,
        materialise_sources,
        prepare_isolated,
    )
    from mini.image.sources import Package
    from mini.image.spec import ImageSpec, derive_image_spec

_WHERE = {
    "SpecDiff": "diff",
    "diff_specs": "diff",
    "load_dispatched_spec": "diff",
    "record_dispatched_spec": "diff",
    "ImageSpecError": "errors",
    "LockfileError": "errors",
    "ProjectNotFoundError": "errors",
    "SourcesError": "errors",
    "UvCommandError": "errors",
    "UvNotFoundError": "errors",
    "Environment": "materialise",
    "materialise_environment": "materialise",
    "materialise_sources": "materialise",
    "prepare_isolated": "materialise",
    "Package": "sources",
    "ImageSpec": "spec",
    "derive_image_spec": "spec",
}
__all__ = [
    "Environment",
    "ImageSpec",
    "ImageSpecError",
    "LockfileError",
    "Package",
    "ProjectNotFoundError",
    "SourcesError",
    "SpecDiff",
    "UvCommandError",
    "UvNotFoundError",
    "derive_image_spec",
    "diff_specs",
    "load_dispatched_spec",
    "materialise_environment",
    "materialise_sources",
    "prepare_isolated",
    "record_dispatched_spec",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mini.image' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mini.image.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
