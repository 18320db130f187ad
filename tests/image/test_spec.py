"""Deriving specs from real locked projects: uv export, the cache, bad input, diffs."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import mini
from mini.image import (
    LockfileError,
    ProjectNotFoundError,
    UvNotFoundError,
    derive_image_spec,
    diff_specs,
    load_dispatched_spec,
    record_dispatched_spec,
)
from mini.image.spec import ImageSpec, image_hash

GROUPS = """
[dependency-groups]
dev = ["iniconfig"]
local = ["packaging"]
cuda = ["idna"]
"""


@pytest.fixture
def project(make_project, locked) -> Path:
    root = make_project({"src/app/__init__.py": "A = 1\n"}, GROUPS, dependencies='["six"]')
    locked(root)
    return root


def pinned_names(spec: ImageSpec) -> list[str]:
    return [line.split("==")[0] for line in spec.requirements]


def test_real_export_has_project_and_cuda_pins_but_not_dev_or_local(project: Path) -> None:
    spec = derive_image_spec(project)
    assert pinned_names(spec) == ["idna", "six"]
    assert spec.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert spec.base_image == "debian_slim"
    assert [package.name for package in spec.packages] == ["app", "mini"]
    assert spec.packages[1].path == Path(mini.__file__).parent
    assert spec.cached is False
    assert pinned_names(derive_image_spec(project, groups=["dev"])) == ["iniconfig", "six"]


def test_unchanged_project_is_derived_from_the_cache_without_uv(
    project: Path, request: pytest.FixtureRequest
) -> None:
    cold = derive_image_spec(project)
    request.getfixturevalue("without_uv")
    warm = derive_image_spec(project)
    assert warm.cached is True
    assert warm == cold
    # A different group choice is a different cache entry, so it needs uv, which is now gone.
    with pytest.raises(UvNotFoundError):
        derive_image_spec(project, groups=["dev"])


def test_project_is_found_from_a_subfolder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project / "src" / "app")
    assert derive_image_spec().project_root == project.resolve()


def test_image_hash_follows_pins_and_source_hash_follows_files(project: Path) -> None:
    before = derive_image_spec(project)
    (project / "src" / "app" / "__init__.py").write_text("A = 2\n")
    edited = derive_image_spec(project)
    assert (edited.image_hash, edited.source_hash != before.source_hash) == (before.image_hash, True)
    assert image_hash("3.11", "debian_slim", ["a==1", "b==1"], []) == image_hash(
        "3.11", "debian_slim", ["b==1", "a==1"], []
    )
    assert image_hash("3.11", "debian_slim", ["a==1"], []) != image_hash("3.11", "debian_slim", ["a==2"], [])
    assert image_hash("3.11", "debian_slim", ["a==1"], []) != image_hash("3.12", "debian_slim", ["a==1"], [])


def test_missing_lock_says_run_uv_lock(make_project) -> None:
    root = make_project({"src/app.py": ""})
    with pytest.raises(LockfileError, match="no uv.lock.*Run `uv lock`"):
        derive_image_spec(root)


def test_stale_lock_says_run_uv_lock(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('["six"]', '["six", "surely-not-a-cached-package"]'))
    with pytest.raises(LockfileError, match="out of date.*Run `uv lock`"):
        derive_image_spec(project)


def test_no_pyproject_above_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectNotFoundError, match="no pyproject.toml in .* or any folder above it"):
        derive_image_spec()


def test_diff_names_changed_pins_and_files_and_survives_the_dispatch_record(project: Path) -> None:
    old = derive_image_spec(project)
    assert record_dispatched_spec(old) == project / ".mini" / "last_spec.json"
    assert load_dispatched_spec(project) == old

    (project / "src" / "app" / "__init__.py").write_text("A = 2\n")
    (project / "src" / "app" / "new.py").write_text("")
    changed = derive_image_spec(project)
    new = replace(changed, requirements=("six==0.0.1", "attrs==25.1.0"))
    diff = diff_specs(load_dispatched_spec(project), new)
    six = next(line for line in old.requirements if line.startswith("six=="))
    idna = next(line for line in old.requirements if line.startswith("idna=="))
    assert diff.pins_changed == ((six, "six==0.0.1"),)
    assert diff.pins_added == ("attrs==25.1.0",)
    assert diff.pins_removed == (idna,)
    assert (diff.files_added, diff.files_changed, diff.files_removed) == (
        ("app/new.py",),
        ("app/__init__.py",),
        (),
    )
    assert diff.rebuilds_image

    sources_only = diff_specs(old, changed)
    assert sources_only.sources_changed and not sources_only.rebuilds_image


def test_pins_differing_only_by_marker_are_compared_separately(project: Path) -> None:
    base = derive_image_spec(project)
    old = replace(base, requirements=("jax==0.6 ; python_version < '3.11'", "jax==0.7"))
    new = replace(base, requirements=("jax==0.6 ; python_version < '3.11'", "jax==0.8"))
    diff = diff_specs(old, new)
    assert diff.pins_changed == (("jax==0.7", "jax==0.8"),)
    assert not diff.pins_added and not diff.pins_removed


def test_an_unreadable_dispatch_record_means_no_record(project: Path) -> None:
    (project / ".mini").mkdir(exist_ok=True)
    (project / ".mini" / "last_spec.json").write_text(json.dumps({"python_version": "3.11"}))
    assert load_dispatched_spec(project) is None
