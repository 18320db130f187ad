"""A package added under `src/` ships with no configuration edited; a `_private` one stays local."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mini import LocalApparatus
from mini.image import derive_image_spec
from mini.image.project import read_pyproject
from mini.image.report import format_spec, format_summary
from mini.image.sources import discover_packages
from mini.image.uv_command import find_uv

ROOT = Path(__file__).resolve().parents[2]
NEW_FILES = {
    "src/app/__init__.py": "",
    "src/myexp/__init__.py": "NAME = 'myexp'\n",
    "src/tool.py": "",
    "src/_private/__init__.py": "",
    "src/_scratch.py": "",
}


def _importer():
    # A nested function travels by value, like code from a notebook; this test module is not shipped.
    def imports(name: str) -> str:
        import importlib

        return importlib.import_module(name).__name__

    return imports


imports = _importer()


@pytest.fixture
def project(make_project, locked, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Set up as `uv init --package` would: uv's build backend, which by default names one module.
    build = '[build-system]\nrequires = ["uv_build>=0.9,<0.14"]\nbuild-backend = "uv_build"\n'
    build += '[tool.uv.build-backend]\nmodule-name = "app"\n'
    root = make_project(NEW_FILES, build, dependencies='["cloudpickle"]')
    locked(root)
    monkeypatch.chdir(root)
    return root


def test_the_spec_and_its_reports_show_the_new_package(project: Path) -> None:
    spec = derive_image_spec()
    assert [package.name for package in spec.packages] == ["app", "myexp", "tool", "mini"]
    assert "Packages     app, myexp, tool, mini (" in format_spec(spec)
    assert format_summary(spec).endswith(f"sources {spec.source_hash[:6]} (app, myexp, tool, mini)")
    assert not any(path.startswith("_") for path, _ in spec.source_files)


@pytest.mark.slow
def test_the_new_package_ships_in_isolated_mode(project: Path) -> None:
    with LocalApparatus("new-package", mode="isolated") as isolated:
        assert isolated.run(imports, "myexp") == "myexp"
        for private in ("_private", "_scratch"):
            with pytest.raises(ModuleNotFoundError, match=private):
                isolated.run(imports, private)


@pytest.mark.slow
def test_this_projects_wheel_holds_what_mini_ships(make_project, tmp_path: Path) -> None:
    # This repository's own build configuration, on a project with a package nobody listed.
    pyproject = (ROOT / "pyproject.toml").read_text()
    build = pyproject[pyproject.index("[build-system]") : pyproject.index("[tool.pytest")]
    root = make_project(NEW_FILES, build)
    out = tmp_path / "dist"
    command = [find_uv(), "build", "--wheel", "--quiet", "--python", sys.executable, "--out-dir", str(out)]
    subprocess.run(command, cwd=root, check=True)
    (wheel,) = out.glob("*.whl")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    top_level = {name.removesuffix(".py") for name in top_level if ".dist-info" not in name}
    assert top_level == {package.name for package in discover_packages(root, read_pyproject(root))}
    assert top_level == {"app", "myexp", "tool"}
