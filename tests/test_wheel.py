"""The wheel ships what a user of mini's types needs: the `py.typed` marker beside the package."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from mini.image.uv_command import find_uv

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_marks_mini_as_typed(tmp_path: Path) -> None:
    # Offline: the build backend (hatchling) is in uv's cache since `uv sync` built mini with it.
    subprocess.run(
        [find_uv(), "build", "--wheel", "--offline", "--quiet", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("mini-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mini/py.typed" in names
    assert "mini/__init__.py" in names
