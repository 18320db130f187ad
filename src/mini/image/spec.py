"""The image spec: a frozen description of what runs remotely, derived from the project.

spec = derive_image_spec()
spec.python_version, spec.requirements, spec.image_hash, spec.source_hash
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mini
from mini.image.cache import export_key, load_export, store_export
from mini.image.project import read_pyproject
from mini.image.requirements import (
    DEFAULT_EXCLUDED_GROUPS,
    export_requirements,
    requirement_name,
    select_groups,
)
from mini.image.sources import Package, discover_packages, hash_files, source_hash
from mini.project import find_project_root

BASE_IMAGE = "debian_slim"


@dataclass(frozen=True)
class ImageSpec:
    """Everything that defines the remote runtime: the image (Python, base, pins, commands) and the sources
    mounted into it at start.

    `image_hash` changes only when the image must be rebuilt; `source_hash` when any shipped file changes.
    `cached` says whether the pins came from the `.mini/` cache rather than a run of `uv export`.

        spec = derive_image_spec()
        print(spec.image_hash, spec.source_hash, [p.name for p in spec.packages])
    """

    project_root: Path
    python_version: str
    base_image: str
    requirements: tuple[str, ...]
    packages: tuple[Package, ...]
    extra_commands: tuple[str, ...]
    source_files: tuple[tuple[str, str], ...]
    image_hash: str
    source_hash: str
    cached: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict from which `ImageSpec.from_json` rebuilds an equal spec.

        json.dumps(spec.to_json())
        """
        return {
            "python_version": self.python_version,
            "base_image": self.base_image,
            "requirements": list(self.requirements),
            "packages": {
                package.name: _relative(package.path, self.project_root) for package in self.packages
            },
            "extra_commands": list(self.extra_commands),
            "source_files": dict(self.source_files),
            "image_hash": self.image_hash,
            "source_hash": self.source_hash,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], project_root: Path) -> ImageSpec:
        """Rebuild a spec saved with `to_json`; package paths are resolved against `project_root`.

        ImageSpec.from_json(json.loads(text), root)
        """
        return cls(
            project_root=project_root,
            python_version=data["python_version"],
            base_image=data["base_image"],
            requirements=tuple(data["requirements"]),
            packages=tuple(Package(name, project_root / path) for name, path in data["packages"].items()),
            extra_commands=tuple(data["extra_commands"]),
            source_files=tuple(sorted(data["source_files"].items())),
            image_hash=data["image_hash"],
            source_hash=data["source_hash"],
        )


def derive_image_spec(
    project_root: Path | None = None,
    *,
    groups: Sequence[str] | None = None,
    exclude_groups: Sequence[str] = DEFAULT_EXCLUDED_GROUPS,
) -> ImageSpec:
    """Derive the spec of the project at `project_root` (default: nearest `pyproject.toml` above the cwd).

    Pins come from `uv.lock` for `groups` (default: every dependency group except `exclude_groups`);
    they are memoised in `.mini/`, so an unchanged project does not run uv at all.

        spec = derive_image_spec()                      # all groups but dev and local
        spec = derive_image_spec(groups=["cuda"])       # project dependencies plus the cuda group only
    """
    root = project_root.resolve() if project_root is not None else find_project_root()
    pyproject = read_pyproject(root)
    chosen = select_groups(pyproject, groups, exclude_groups)
    packages = _with_mini(discover_packages(root, pyproject))
    key = export_key(root, chosen)
    requirements = load_export(root, key)
    cached = requirements is not None
    if requirements is None:
        requirements = export_requirements(root, chosen)
        store_export(root, key, requirements)
    # The shipped copy of mini supersedes a pinned one, so client and container run the same mini.
    requirements = tuple(line for line in requirements if requirement_name(line) != "mini")
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    files = hash_files(packages)
    return ImageSpec(
        project_root=root,
        python_version=python_version,
        base_image=BASE_IMAGE,
        requirements=requirements,
        packages=packages,
        extra_commands=(),
        source_files=tuple(sorted(files.items())),
        image_hash=image_hash(python_version, BASE_IMAGE, requirements, ()),
        source_hash=source_hash(files),
        cached=cached,
    )


def image_hash(
    python_version: str, base_image: str, requirements: Sequence[str], extra_commands: Sequence[str]
) -> str:
    """A short digest of what the dependency image is built from; the order of pins does not matter.

    image_hash("3.11", "debian_slim", ["six==1.16.0"], [])  # "a3f1..." (16 hex digits)
    """
    payload = json.dumps([python_version, base_image, sorted(requirements), list(extra_commands)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _with_mini(packages: tuple[Package, ...]) -> tuple[Package, ...]:
    # The remote entry point imports mini; a project that uses mini without vendoring it ships this copy.
    if any(package.name == "mini" for package in packages):
        return packages
    return (*packages, Package("mini", Path(mini.__file__).parent))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
