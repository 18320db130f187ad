"""CI (`.ci/run`) fails on a lint error and on a type error, before it runs a single test.

Each case runs the real `.ci/run` on a copy of the project with one error put into a copy of a module. The
copy's `tests/` is an empty package, so a check that wrongly passed could never start this suite again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the copy gets an environment of its own (from uv's cache)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ci") / "project"
    root.mkdir()
    for name in ("go", "pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, root / name)
    for name in ("bin", ".ci", "src", "bench"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "results.*"))
    (root / "tests").mkdir()
    (root / "tests" / "__init__.py").write_text("")
    return root


def ci(root: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("VIRTUAL_ENV", "MINI_"))}
    return subprocess.run(
        [str(root / ".ci" / "run")], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def module(copy: Path) -> Iterator[Path]:
    """A module of the copy that each case damages; restored afterwards."""
    path = copy / "src" / "mini" / "errors.py"
    original = path.read_text()
    yield path
    path.write_text(original)


def test_ci_fails_on_a_lint_error(copy: Path, module: Path) -> None:
    module.write_text("import os\n" + module.read_text())
    result = ci(copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "F401" in output and "src/mini/errors.py" in output, output
    assert "test session starts" not in output


def test_ci_fails_on_a_type_error(copy: Path, module: Path) -> None:
    module.write_text(module.read_text() + '\n\ndef _count() -> int:\n    return "none"\n')
    result = ci(copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "src/mini/errors.py" in output and "Incompatible return value type" in output, output
    assert "test session starts" not in output
