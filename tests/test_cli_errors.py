"""mini's own errors on the command line: one or two lines and an exit code per kind; the user's keep their
traceback. Each case runs `bin/mini` as a subprocess from a folder outside the project, as a user would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from mini.cli.failures import exit_code_table

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = textwrap.dedent(
    """
    import ctypes
    import os


    def square(x):
        return x * x


    def fail(x):
        raise ValueError(f"bad input {x}")


    def die(x):
        os._exit(3)


    def segfault(x):
        ctypes.string_at(0)


    def main(app):
        if os.environ.get("MISUSE"):
            return list(app.map(square))  # no iterable: mini's API called wrongly
        how = os.environ.get("HOW", "square")
        return list(app.map(globals()[how], range(3)))
    """
)


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    path = tmp_path / "exp.py"
    path.write_text(EXPERIMENT)
    return path


def mini(*args: str, cwd: Path, executable: Path = ROOT / "bin" / "mini", **env: str):
    return subprocess.run(
        [str(executable), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def one_clear_message(out: subprocess.CompletedProcess[str], code: int, *phrases: str) -> None:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert 1 <= len(out.stderr.strip().splitlines()) <= 2, out.stderr
    for phrase in phrases:
        assert phrase in out.stderr, out.stderr


def test_bad_option_values_are_one_line_with_exit_code_2(experiment, tmp_path):
    one_clear_message(
        mini("run", str(experiment), "--app", "modal", "--gpu", "A1000", cwd=tmp_path),
        2,
        "mini run: unknown GPU 'A1000'",
    )
    one_clear_message(
        mini("run", str(experiment), "--timeout", "-5", cwd=tmp_path),
        2,
        "mini run: option timeout=-5.0 must be a positive number of seconds",
    )
    one_clear_message(mini("run", str(tmp_path / "missing.py"), cwd=tmp_path), 2, "no such file")


def test_flags_that_do_not_apply_to_modal_are_an_error_naming_those_that_do(experiment, tmp_path):
    mode = mini("run", str(experiment), "--app", "modal", "--mode", "process", cwd=tmp_path)
    one_clear_message(mode, 2, "--mode does not apply to --app modal", "--gpu, --max-containers")
    both = mini(
        "run", str(experiment), "--mode", "isolated", "--workers", "4", cwd=tmp_path, MINI_APP="modal"
    )
    one_clear_message(both, 2, "--mode and --workers do not apply to --app modal")


def test_a_rejected_token_is_one_line_with_one_fix(experiment, tmp_path, modal_emulator):
    out = mini(
        "run",
        str(experiment),
        "--app",
        "modal",
        cwd=tmp_path,
        **modal_emulator.client_variables(token_secret="wrong"),
    )
    one_clear_message(out, 5, "Modal rejected the token in MODAL_TOKEN_ID (ak-emulator)")
    assert "modal token new" not in out.stderr and "./go auth" not in out.stderr, "one fix, not two"


def test_a_rejected_token_from_the_config_file_is_fixed_by_storing_a_new_one(monkeypatch):
    import mini.modal_backend.auth
    from mini.modal_backend.auth import token_error

    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.setattr(mini.modal_backend.auth, "configured_token", lambda: ("ak-stored", "as-stored"))
    monkeypatch.setattr(mini.modal_backend.auth, "config_path", lambda: Path("/home/me/.modal.toml"))
    assert str(token_error()) == (
        "Modal rejected the token ak-stored stored in /home/me/.modal.toml. "
        "Run `./go auth` to store a new one."
    )
    monkeypatch.setattr(mini.modal_backend.auth, "configured_token", lambda: None)
    assert str(token_error()) == "no Modal token is set up. Run `./go auth` to store one."


def test_no_project_is_one_line_with_exit_code_3(tmp_path):
    venv_mini = ROOT / ".venv" / "bin" / "mini"  # the environment's own command: no project of its own
    env = {key: value for key, value in os.environ.items() if key != "MINI_PROJECT"}
    out = subprocess.run([str(venv_mini), "ls"], cwd=tmp_path, capture_output=True, text=True, env=env)
    one_clear_message(out, 3, f"mini ls: no pyproject.toml in {tmp_path}")
    empty = tmp_path / "empty"
    empty.mkdir()
    named = mini("--project", str(empty), "image", cwd=tmp_path)
    one_clear_message(named, 3, f"MINI_PROJECT names {empty}, which holds no pyproject.toml")


def test_a_stale_lock_is_refused_before_anything_runs(tmp_path):
    project = _copy_of_the_project(tmp_path)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"rich>=13.7",', '"rich>=13.7",\n    "tqdm>=4",'))
    for command in (["bin/mini", "run", "experiment.sweep"], ["bin/mini", "ls"], ["./go", "test"]):
        out = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120)
        name = command[0]
        one_clear_message(
            out, 3, f"{name}: uv.lock does not match pyproject.toml", f"run `uv lock` in {project}"
        )
        assert not (project / ".venv").exists(), "refused before the environment was made"


def test_no_uv_and_no_way_to_install_it_is_two_lines_with_exit_code_4(tmp_path):
    project = _copy_of_the_project(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": _path_without_uv(),
        "PIP_NO_INDEX": "1",  # pip finds nothing to install: as offline, or behind a proxy that refuses it
        "PIP_FIND_LINKS": str(tmp_path),
        "PIP_CONFIG_FILE": os.devnull,
    }
    out = subprocess.run(
        ["bin/mini", "ls"], cwd=project, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 4, out.stderr
    assert "bin/mini: uv not found; installing it once with" in out.stderr
    assert out.stderr.strip().splitlines()[-2:] == [
        "bin/mini: uv is not installed, and installing it with pip failed (see above).",
        "  fix: install uv (https://docs.astral.sh/uv/getting-started/installation/), then retry.",
    ]


def test_an_error_in_the_users_code_keeps_its_traceback_from_where_it_ran(experiment, tmp_path):
    out = mini("run", str(experiment), "--mode", "process", cwd=tmp_path, HOW="fail")
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "ValueError: bad input 0" in out.stderr
    assert 'raise ValueError(f"bad input {x}")' in out.stderr, "the remote traceback, from the worker"


def test_mini_called_wrongly_from_the_users_code_points_at_the_line(experiment, tmp_path):
    out = mini("run", str(experiment), cwd=tmp_path, MISUSE="1")
    assert out.returncode == 1 and "Traceback" in out.stderr
    assert "return list(app.map(square))" in out.stderr and "needs at least one iterable" in out.stderr


def test_the_traceback_of_minis_own_errors_when_asked(experiment, tmp_path):
    for asked in (
        mini("run", str(experiment), "--timeout", "-5", "--traceback", cwd=tmp_path),
        mini("run", str(experiment), "--timeout", "-5", cwd=tmp_path, MINI_DEBUG="1"),
    ):
        assert asked.returncode == 2
        assert "Traceback" in asked.stderr and "mini/options.py" in asked.stderr
        assert asked.stderr.strip().splitlines()[-1].startswith("mini run: option timeout=-5.0")


def test_a_call_that_kills_thread_mode_says_so_and_which_mode_to_use(experiment, tmp_path):
    died = mini("run", str(experiment), cwd=tmp_path, HOW="die")
    assert died.returncode == 3
    assert "mini run: the experiment's process exited with status 3 without a Python error" in died.stderr
    assert "fix: run it with --mode process" in died.stderr and "WorkerCrashed" in died.stderr
    crashed = mini("run", str(experiment), "--mode", "thread", cwd=tmp_path, HOW="segfault")
    assert crashed.returncode == 139 and "was killed by SIGSEGV" in crashed.stderr
    alone = mini("run", str(experiment), "--mode", "process", cwd=tmp_path, HOW="die")
    assert alone.returncode == 8
    assert (
        alone.stderr.strip()
        .splitlines()[-1]
        .startswith("mini run: the worker process running call #0 died (exit code 3)")
    )
    fine = mini("run", str(experiment), cwd=tmp_path)
    assert fine.returncode == 0 and fine.stderr == "" and "[0, 1, 4]" in fine.stdout


def test_a_broken_pipe_ends_quietly(experiment, tmp_path):
    big = tmp_path / "big.py"
    big.write_text("def main(app):\n    return list(range(200_000))\n")
    out = subprocess.run(
        f"{ROOT / 'bin' / 'mini'} run {big} --json | head -1",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout == "[\n" and out.stderr == ""


def test_docs_list_every_exit_code():
    text = (ROOT / "docs" / "cli.md").read_text()
    for code, meaning, classes in exit_code_table():
        assert re.search(rf"^\| {code} \| {re.escape(meaning)} \|", text, re.M), f"exit code {code}"
        for name in classes.split(", "):
            assert f"`{name}`" in text, name


def _copy_of_the_project(tmp_path: Path) -> Path:
    """The project's files a fresh clone has, with no .venv: bin/, go, pyproject.toml, uv.lock, src/."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("go", "pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "bin", project / "bin")
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return project


def _path_without_uv() -> str:
    """PATH less every folder holding a uv (the venv's included), with a Python that has pip first."""
    import sys

    python = Path(getattr(sys, "_base_executable", sys.executable)).parent
    kept = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "uv").exists()]
    return os.pathsep.join([str(python), *kept])
