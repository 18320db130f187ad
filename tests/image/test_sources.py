"""Package discovery and source hashing, as pure functions over fixture projects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mini.image.errors import SourcesError
from mini.image.project import read_pyproject
from mini.image.sources import Package, discover_packages, hash_files, shipped_files, source_hash


def names(root: Path) -> list[str]:
    return [package.name for package in discover_packages(root, read_pyproject(root))]


def test_every_top_level_package_and_module_ships_without_module_settings(make_project) -> None:
    root = make_project(
        {
            "src/app/__init__.py": "",
            "src/namespace_pkg/sub/module.py": "",
            "src/single.py": "",
            "src/_private/__init__.py": "",
            "src/_hidden_module.py": "",
            "src/.dotted/__init__.py": "",
            "src/__pycache__/x.py": "",
            "src/data_only/table.csv": "",
            "src/app.egg-info/PKG-INFO": "",
            "src/README.md": "",
        }
    )
    assert names(root) == ["app", "namespace_pkg", "single"]


def test_a_build_backend_list_of_modules_does_not_narrow_what_ships(make_project) -> None:
    # A user whose uv build backend names one module still ships the package added beside it.
    pyproject = '[tool.uv.build-backend]\nmodule-name = ["app"]\n'
    files = {
        "src/app/__init__.py": "",
        "src/myexp/__init__.py": "",
        "src/tool.py": "",
        "src/_private/x.py": "",
    }
    root = make_project(files, pyproject)
    packages = discover_packages(root, read_pyproject(root))
    assert packages == (
        Package("app", root / "src" / "app"),
        Package("myexp", root / "src" / "myexp"),
        Package("tool", root / "src" / "tool.py"),
    )


def test_module_root_is_honoured(make_project) -> None:
    pyproject = '[tool.uv.build-backend]\nmodule-root = "lib"\n'
    root = make_project({"lib/app/__init__.py": "", "lib/other.py": "", "src/ignored.py": ""}, pyproject)
    assert names(root) == ["app", "other"]


def test_this_repository_ships_every_public_package_under_src() -> None:
    root = Path(__file__).resolve().parents[2]
    public = sorted(entry.name for entry in (root / "src").iterdir() if not entry.name.startswith(("_", ".")))
    assert names(root) == public
    assert {"mini", "experiment"} <= set(public)


@pytest.mark.parametrize(
    ("files", "pyproject", "message"),
    [
        ({}, "", "no source folder at .*src"),
        ({"src/notes.txt": ""}, "", "holds no Python package or module"),
        ({"src/my-pkg/__init__.py": ""}, "", "'my-pkg' is not a valid Python name.*'my_pkg'"),
        ({"src/class.py": ""}, "", "'class' is not a valid Python name"),
    ],
)
def test_bad_source_layouts_are_explained(make_project, files, pyproject, message) -> None:
    root = make_project(files, pyproject)
    with pytest.raises(SourcesError, match=message):
        discover_packages(root, read_pyproject(root))


def test_shipped_files_skip_caches_and_hidden_files_but_keep_private_modules(tmp_path: Path) -> None:
    package = tmp_path / "app"
    for relative in ["__init__.py", "_impl.py", "data/table.json", "__pycache__/a.pyc", ".hidden", "b.pyc"]:
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text("x")
    (package / ".git").mkdir()
    (package / ".git" / "HEAD").write_text("x")
    assert shipped_files(package) == [
        "app/__init__.py",
        "app/_impl.py",
        "app/data/table.json",
    ]


def _project_hash(root: Path) -> str:
    return source_hash(hash_files(discover_packages(root, read_pyproject(root))))


_HASH_IN_CHILD = """
import sys
from pathlib import Path
from mini.image.project import read_pyproject
from mini.image.sources import discover_packages, hash_files, source_hash
root = Path(sys.argv[1])
print(source_hash(hash_files(discover_packages(root, read_pyproject(root)))))
"""


def test_source_hash_is_the_same_in_separate_processes_and_ignores_mtimes_and_location(make_project) -> None:
    root = make_project({"src/app/__init__.py": "A = 1\n", "src/app/sub/m.py": "B = 2\n", "src/tool.py": ""})
    first = subprocess.run([sys.executable, "-c", _HASH_IN_CHILD, str(root)], capture_output=True, text=True)
    os.utime(root / "src" / "tool.py", (1, 1))
    (root / "src" / "app" / "__pycache__").mkdir()
    (root / "src" / "app" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\1")
    moved = root.rename(root.parent / "elsewhere")
    second = subprocess.run(
        [sys.executable, "-c", _HASH_IN_CHILD, str(moved)], capture_output=True, text=True
    )
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    assert len(first.stdout.strip()) == 16


def test_one_changed_byte_or_a_renamed_file_changes_the_source_hash(make_project) -> None:
    root = make_project({"src/app/__init__.py": "A = 1\n", "src/app/m.py": "B = 2\n"})
    before = _project_hash(root)
    (root / "src" / "app" / "m.py").write_text("B = 3\n")
    edited = _project_hash(root)
    (root / "src" / "app" / "m.py").rename(root / "src" / "app" / "n.py")
    renamed = _project_hash(root)
    assert len({before, edited, renamed}) == 3
