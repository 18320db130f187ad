"""Building environments and source folders for real, and the pure GPU filter."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mini.image.errors import UvCommandError, UvNotFoundError
from mini.image.materialise import (
    environment_key,
    gpu_available,
    materialise_environment,
    materialise_sources,
    split_gpu_only,
)

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_gpu_only_lines_are_split_out_by_name() -> None:
    lines = [
        "jax==0.6.2 ; python_full_version < '3.11'",
        "jax-cuda12-plugin==0.6.2 ; python_full_version < '3.11'",
        "jax-cuda12-pjrt==0.6.2",
        "nvidia-cublas-cu12==12.9.3.13 ; sys_platform == 'linux'",
        "NVIDIA_cudnn_cu12==9.28.0.42",
        "cupy-cuda12x==13.3.0",
        "numpy==2.1.0",
        "nvidia==1.0",
    ]
    kept, dropped = split_gpu_only(lines)
    assert kept == ["jax==0.6.2 ; python_full_version < '3.11'", "numpy==2.1.0", "nvidia==1.0"]
    assert dropped == lines[1:6]


@pytest.mark.parametrize(("script", "expected"), [(None, False), ("exit 0", True), ("exit 9", False)])
def test_gpu_is_detected_by_a_working_nvidia_smi(
    script: str | None, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if script is not None:
        fake = tmp_path / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\n{script}\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_available() is expected


def test_environment_key_ignores_line_order_but_not_versions() -> None:
    assert environment_key("3.11", ["a==1", "b==2"]) == environment_key("3.11", ["b==2", "a==1"])
    assert environment_key("3.11", ["a==1"]) != environment_key("3.11", ["a==2"])
    assert environment_key("3.11", ["a==1"]) != environment_key("3.12", ["a==1"])


@pytest.mark.slow
def test_environment_is_built_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["six==1.16.0", "nvidia-nccl-cu12==2.32.3 ; sys_platform == 'linux'"]
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(
            lambda _: materialise_environment(PYTHON, lines, gpu=False, cache_dir=tmp_path), range(2)
        )
    assert first == second
    assert first.dropped == ("nvidia-nccl-cu12==2.32.3 ; sys_platform == 'linux'",)
    version = subprocess.run(
        [first.python, "-c", "import six, sys; print(six.__version__, sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(" ", 1)
    assert version[0] == "1.16.0"
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [first.root.name]

    # A built environment is returned without running uv: with uv gone from PATH, it still works.
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert materialise_environment(PYTHON, lines, gpu=False, cache_dir=tmp_path) == first


@pytest.mark.slow
def test_failed_install_reports_uvs_stderr(tmp_path: Path) -> None:
    with pytest.raises(UvCommandError, match="install the image's requirements") as caught:
        materialise_environment(PYTHON, ["six==0.0.0.0.1"], gpu=False, cache_dir=tmp_path)
    assert "six" in str(caught.value).split("\n", 1)[1]
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_missing_uv_says_how_to_install_it(tmp_path: Path, without_uv: None) -> None:
    with pytest.raises(UvNotFoundError, match="pip install uv"):
        materialise_environment(PYTHON, ["six==1.16.0"], gpu=False, cache_dir=tmp_path)


def test_sources_folder_holds_only_the_given_packages(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "shipped" / "__pycache__").mkdir(parents=True)
    (src / "shipped" / "__init__.py").write_text("VALUE = 1\n")
    (src / "shipped" / "_private.py").write_text("")
    (src / "shipped" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (src / "single.py").write_text("")
    (src / "unshipped").mkdir()
    (src / "unshipped" / "__init__.py").write_text("")
    dest = tmp_path / "out"
    (dest / "stale").mkdir(parents=True)

    assert materialise_sources([src / "shipped", src / "single.py"], dest) == dest

    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["shipped/__init__.py", "shipped/_private.py", "single.py"]


@pytest.mark.slow
def test_environment_imports_shipped_package_and_refuses_unshipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("shipped", "unshipped"):
        (src / name).mkdir(parents=True)
        (src / name / "__init__.py").write_text("import six\nNAME = __name__\n")
    env = materialise_environment(PYTHON, ["six==1.16.0"], gpu=False, cache_dir=tmp_path / "envs")
    sources = materialise_sources([src / "shipped"], tmp_path / "sources")
    isolated = {"PYTHONPATH": str(sources), "PATH": os.environ["PATH"]}

    def run(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [env.python, "-c", code], env=isolated, cwd=tmp_path, capture_output=True, text=True
        )

    assert run("import shipped; print(shipped.NAME)").stdout.strip() == "shipped"
    refused = run("import unshipped")
    assert refused.returncode != 0
    assert "ModuleNotFoundError: No module named 'unshipped'" in refused.stderr
