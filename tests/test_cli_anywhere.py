"""Every verb works from any working directory, for the project `bin/mini` belongs to (or `--project DIR`):
its image spec, its run registry, its environment. `bin/mini` of a copy of this project runs from a folder
outside it, with a fresh home."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = textwrap.dedent(
    """
    def square(x):
        return x * x


    def main(app):
        return list(app.map(square, range(4)))
    """
)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of this project (no .venv yet: the first bin/mini makes it, from uv's warm cache)."""
    project = tmp_path_factory.mktemp("checkout") / "mini"
    project.mkdir()
    for name in ("go", "pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    for name in ("bin", "src"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    return project


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "exp.py").write_text(EXPERIMENT)
    return folder


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    uv_cache = subprocess.run(
        ["uv", "cache", "dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    variables = {**os.environ, "HOME": str(home), "UV_CACHE_DIR": uv_cache}
    for name in ("MINI_PROJECT", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        variables.pop(name, None)
    return variables


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done


def test_image_and_ls_are_about_bin_minis_project(checkout, elsewhere, env):
    mini = str(checkout / "bin" / "mini")
    image = run([mini, "image"], elsewhere, env).stdout
    assert image.splitlines()[0].split() == ["Project", str(checkout)]
    packages = next(line for line in image.splitlines() if line.startswith("Packages"))
    assert "experiment" in packages and "mini" in packages
    listing = run([mini, "ls"], elsewhere, env).stdout
    assert f"no runs recorded in {checkout / '.mini' / 'runs'} yet" in listing


def test_isolated_mode_builds_the_projects_image(checkout, elsewhere, env):
    out = run(
        [str(checkout / "bin" / "mini"), "run", "exp.py", "--mode", "isolated", "--json"], elsewhere, env
    )
    assert json.loads(out.stdout) == [0, 1, 4, 9]


def test_a_detached_run_is_recorded_in_the_project_and_found_from_anywhere(
    checkout, elsewhere, env, tmp_path
):
    mini = str(checkout / "bin" / "mini")
    run_id = run([mini, "run", "exp.py", "--detach"], elsewhere, env).stdout.strip()
    assert (checkout / ".mini" / "runs" / run_id / "run.json").is_file()
    assert run([mini, "watch", run_id], elsewhere, env).returncode == 0
    assert json.loads(run([mini, "results", run_id, "--json"], elsewhere, env).stdout) == [0, 1, 4, 9]
    other = tmp_path / "other"
    other.mkdir()
    venv_mini = str(checkout / ".venv" / "bin" / "mini")  # the environment's own: no project of its own
    named = run([venv_mini, "--project", str(checkout), "status", run_id], other, env).stdout
    assert named.startswith(f"run {run_id}: done")
    assert run_id in run([venv_mini, "ls", "--project", str(checkout)], other, env).stdout, (
        "after the verb too"
    )


def test_modal_runs_the_projects_image(checkout, elsewhere, env, modal_emulator):
    mini = str(checkout / "bin" / "mini")
    out = run([mini, "run", "exp.py", "--app", "modal", "--json"], elsewhere, env)
    assert json.loads(out.stdout) == [0, 1, 4, 9]
    assert "Unchanged since the last dispatch." in run([mini, "image", "--diff"], elsewhere, env).stdout
    run_id = run([mini, "run", "exp.py", "--app", "modal", "--detach"], elsewhere, env).stdout.strip()
    assert run([mini, "watch", run_id], elsewhere, env).returncode == 0
    assert run_id in run([mini, "ls", "--app", "modal"], elsewhere, env).stdout
