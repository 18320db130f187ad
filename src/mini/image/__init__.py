"""The image spec: what runs remotely, described without reference to any backend.

from mini.image import derive_image_spec
spec = derive_image_spec()
print(spec.python_version, len(spec.requirements), spec.image_hash)
"""

from mini.image.diff import SpecDiff, diff_specs, load_dispatched_spec, record_dispatched_spec
from mini.image.errors import (
    ImageSpecError,
    LockfileError,
    ProjectNotFoundError,
    SourcesError,
    UvCommandError,
    UvNotFoundError,
)
from mini.image.materialise import Environment, materialise_environment, materialise_sources, prepare_isolated
from mini.image.sources import Package
from mini.image.spec import ImageSpec, derive_image_spec

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
