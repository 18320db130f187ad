"""The isolated mode's ingredients: a real environment from the spec and a shipped-only sources folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mini.image import prepare_isolated


@pytest.mark.slow
def test_isolated_python_imports_shipped_code_and_pins_but_nothing_else(
    make_project, locked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_project(
        {
            "src/app/__init__.py": "import six\nSIX = six.__name__\n",
            "src/_scratch.py": "",
            "src/_private/__init__.py": "",
            "src/myexp/__init__.py": "",
        },
        # A build backend's list of modules does not narrow what ships: myexp ships too.
        '[tool.uv.build-backend]\nmodule-name = "app"\n[dependency-groups]\ndev = ["idna"]\n',
        '["six"]',
    )
    locked(root)

    python, sources = prepare_isolated(root)
    assert python.is_relative_to(tmp_path / "cache" / "mini" / "envs")
    assert sorted(path.name for path in sources.iterdir()) == ["app", "mini", "myexp"]
    assert prepare_isolated(root) == (python, sources)

    def attempt(module: str) -> subprocess.CompletedProcess[str]:
        code = f"import {module}"
        env = {"PYTHONPATH": str(sources), "PATH": os.environ["PATH"]}
        return subprocess.run([python, "-c", code], cwd=sources, env=env, capture_output=True, text=True)

    for shipped in ("app", "myexp"):
        assert attempt(shipped).returncode == 0, attempt(shipped).stderr
    for missing in ("_scratch", "_private", "idna"):
        refused = attempt(missing)
        assert f"No module named '{missing}'" in refused.stderr


@pytest.mark.slow
def test_a_source_edit_gets_a_new_sources_folder_and_the_same_environment(
    make_project, locked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_project({"src/app.py": "VALUE = 1\n"})
    locked(root)
    python, first = prepare_isolated(root)
    (root / "src" / "app.py").write_text("VALUE = 2\n")
    same_python, second = prepare_isolated(root)
    assert same_python == python and second != first
    assert (second / "app.py").read_text() == "VALUE = 2\n"
