"""mini finds the uv its own dependency installed when PATH lacks the environment's `bin/`, as in a notebook
kernel, an IDE's run configuration, a cron job or `.venv/bin/python script.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BARE_PATH = "/usr/bin:/bin"


def run_without_venv_on_path(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` with this environment's interpreter and a PATH that lacks its `bin/` (and any uv)."""
    assert not any(Path(folder, "uv").exists() for folder in BARE_PATH.split(":")), "uv is on the bare PATH"
    # What `uv run` adds for its child goes too: a notebook kernel has none of it.
    environment = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "UV")}
    environment.update(PATH=BARE_PATH, **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def project(make_project, locked) -> Path:
    root = make_project({"src/app/__init__.py": "VALUE = 42\n"}, dependencies='["cloudpickle"]')
    locked(root)
    return root


def test_derive_image_spec_runs_uv_export(project: Path) -> None:
    done = run_without_venv_on_path(
        "from mini.image import derive_image_spec\n"
        "spec = derive_image_spec()\n"
        "print(spec.cached, [p.name for p in spec.packages])\n",
        project,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "False ['app', 'mini']"


def test_the_image_report(project: Path) -> None:
    done = run_without_venv_on_path(
        "from mini.cli import main\nraise SystemExit(main(['image', '--json']))", project
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cached"] is False
    assert [line.split("==")[0] for line in report["requirements"]] == ["cloudpickle"]


@pytest.mark.slow
def test_isolated_mode_builds_its_environment(project: Path, tmp_path: Path) -> None:
    code = """
        from mini import LocalApparatus

        def value():
            import app
            return app.VALUE

        with LocalApparatus("no-path", mode="isolated") as isolated:
            print(isolated.run(value))
        """
    done = run_without_venv_on_path(code, project, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"
    assert list((tmp_path / "cache" / "mini" / "envs").glob("*/pyvenv.cfg")), "no environment was built"
