"""What changed between two image specs, and the spec last used for a dispatch.

record_dispatched_spec(spec)                    # the Modal backend calls this when it dispatches
changes = diff_specs(load_dispatched_spec(root), derive_image_spec(root))
changes.rebuilds_image, changes.pins_changed, changes.files_changed
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mini.image.requirements import requirement_name
from mini.image.spec import ImageSpec
from mini.project import state_dir, state_path, write_json

_LAST_SPEC = "last_spec.json"


@dataclass(frozen=True)
class SpecDiff:
    """The differences between an old and a new spec. Pins are compared by package name and marker.

    diff = diff_specs(old, new)
    for old_line, new_line in diff.pins_changed: print(old_line, "->", new_line)
    """

    python_version: tuple[str, str] | None
    base_image: tuple[str, str] | None
    extra_commands: tuple[tuple[str, ...], tuple[str, ...]] | None
    pins_added: tuple[str, ...]
    pins_removed: tuple[str, ...]
    pins_changed: tuple[tuple[str, str], ...]
    files_added: tuple[str, ...]
    files_removed: tuple[str, ...]
    files_changed: tuple[str, ...]

    @property
    def rebuilds_image(self) -> bool:
        """Whether the dependency image differs (source changes never rebuild it)."""
        return bool(
            self.python_version
            or self.base_image
            or self.extra_commands
            or self.pins_added
            or self.pins_removed
            or self.pins_changed
        )

    @property
    def sources_changed(self) -> bool:
        """Whether any shipped file was added, removed or edited."""
        return bool(self.files_added or self.files_removed or self.files_changed)


def diff_specs(old: ImageSpec, new: ImageSpec) -> SpecDiff:
    """Say what changed from `old` to `new`: pins added, removed or changed, and shipped files.

    diff_specs(old, new).pins_changed  # (("six==1.16.0", "six==1.17.0"),)
    """
    old_pins, new_pins = _by_name_and_marker(old.requirements), _by_name_and_marker(new.requirements)
    old_files, new_files = dict(old.source_files), dict(new.source_files)
    return SpecDiff(
        python_version=_pair(old.python_version, new.python_version),
        base_image=_pair(old.base_image, new.base_image),
        extra_commands=_pair(old.extra_commands, new.extra_commands),
        pins_added=tuple(new_pins[key] for key in new_pins if key not in old_pins),
        pins_removed=tuple(old_pins[key] for key in old_pins if key not in new_pins),
        pins_changed=tuple(
            (old_pins[key], new_pins[key])
            for key in new_pins
            if key in old_pins and old_pins[key] != new_pins[key]
        ),
        files_added=tuple(sorted(new_files.keys() - old_files.keys())),
        files_removed=tuple(sorted(old_files.keys() - new_files.keys())),
        files_changed=tuple(
            sorted(path for path in new_files.keys() & old_files.keys() if old_files[path] != new_files[path])
        ),
    )


def record_dispatched_spec(spec: ImageSpec) -> Path:
    """Remember `spec` as the one last used for a dispatch (`.mini/last_spec.json`); return that file.

    record_dispatched_spec(derive_image_spec())
    """
    path = state_path(spec.project_root) / _LAST_SPEC
    write_json(path, spec.to_json())
    return path


def load_dispatched_spec(project_root: Path) -> ImageSpec | None:
    """The spec last recorded by `record_dispatched_spec` for this project, or None if there is none.

    previous = load_dispatched_spec(spec.project_root)
    """
    try:
        data = json.loads((state_dir(project_root) / _LAST_SPEC).read_text())
        return ImageSpec.from_json(data, project_root)
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        # A missing or unreadable record only means there is nothing to compare against.
        return None


def _by_name_and_marker(requirements: Sequence[str]) -> dict[tuple[str, str], str]:
    keyed = {}
    for line in requirements:
        name = requirement_name(line)
        marker = line.split(";", 1)[1].strip() if ";" in line else ""
        keyed[(name, marker)] = line
    return keyed


_T = TypeVar("_T")


def _pair(old: _T, new: _T) -> tuple[_T, _T] | None:
    return None if old == new else (old, new)
