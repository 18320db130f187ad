"""`mini run`: load an experiment file or module, run main(app), print the result."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from mini import backends
from mini.cli.output import render_result

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import os

    def square(x):
        return x * x

    def main(app):
        offset = 1
        return {"squares": list(app.map(square, range(4))),
                "closure": app.run(lambda x: x + offset, 1),
                "worker_pid_differs": app.run(os.getpid) != os.getpid()}

    def plot(result, path):
        open(path, "w").write(str(result["squares"]))
    """
)


def mini(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "bin" / "mini"), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "my_experiment.py"
    path.write_text(SCRIPT)
    return path


def test_runs_a_script_in_worker_processes_from_any_directory(script, tmp_path):
    out = mini(
        "run", str(script), "--mode", "process", "--json", "--plot", str(tmp_path / "p.txt"), cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"squares": [0, 1, 4, 9], "closure": 2, "worker_pid_differs": True}
    assert (tmp_path / "p.txt").read_text() == "[0, 1, 4, 9]"


def test_bad_experiments_get_one_clear_line(tmp_path):
    missing = mini("run", "no_such_package.sweep")
    assert missing.returncode == 2 and "no module named 'no_such_package.sweep'" in missing.stderr
    no_main = tmp_path / "nomain.py"
    no_main.write_text("x = 1\n")
    out = mini("run", str(no_main))
    assert out.returncode == 2 and "defines no main(app)" in out.stderr
    assert "Traceback" not in missing.stderr + out.stderr


def test_records_print_as_a_table_without_list_columns():
    text = render_result(
        [{"lr": 0.1, "loss": 0.25, "losses": [1.0, 0.5]}, {"lr": 0.01, "loss": 0.5, "losses": []}]
    )
    header = text.splitlines()[0]
    assert "lr" in header and "loss" in header and "losses" not in text
    assert "0.25" in text


def test_the_backend_comes_from_flag_then_environment_then_pyproject(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.mini]\napp = "modal"\n')
    monkeypatch.delenv("MINI_APP", raising=False)
    assert backends.chosen(None, tmp_path) == "modal"
    monkeypatch.setenv("MINI_APP", "local")
    assert backends.chosen(None, tmp_path) == "local"
    assert backends.chosen("modal", tmp_path) == "modal"
    with pytest.raises(ValueError, match="unknown app 'cloud'"):
        backends.make("cloud", "x")
