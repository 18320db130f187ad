"""Fixture projects for the image tests, written into `tmp_path`."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from mini.image.uv_command import find_uv

MakeProject = Callable[..., Path]


@pytest.fixture
def make_project(tmp_path: Path) -> MakeProject:
    """Write a project: `pyproject` is the TOML after the [project] table, `files` maps paths to text."""

    def make(files: dict[str, str] | None = None, pyproject: str = "", dependencies: str = "[]") -> Path:
        root = tmp_path / "project"
        root.mkdir()
        header = '[project]\nname = "demo"\nversion = "0.1.0"\nrequires-python = ">=3.10"\n'
        header += f"dependencies = {dependencies}\n"
        (root / "pyproject.toml").write_text(header + textwrap.dedent(pyproject))
        for relative, text in (files or {}).items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text(text)
        return root

    return make


def lock(root: Path) -> None:
    """Lock a fixture project, offline from uv's cache when it can, else from PyPI."""
    uv = find_uv()
    offline = subprocess.run([uv, "lock", "--offline", "--quiet"], cwd=root, capture_output=True, text=True)
    if offline.returncode != 0:
        subprocess.run([uv, "lock", "--quiet"], cwd=root, check=True)


@pytest.fixture
def locked() -> Callable[[Path], None]:
    return lock


@pytest.fixture
def without_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No uv anywhere: neither mini's `uv` dependency nor PATH provides one."""

    def missing() -> str:
        raise FileNotFoundError("no uv binary")

    monkeypatch.setattr("uv.find_uv_bin", missing)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
