"""The run verbs end to end, as a user types them, in a temporary project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runs.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]

EXPERIMENT = textwrap.dedent(
    """
    import os
    from pathlib import Path

    def square(x):
        print("squaring", x, flush=True)
        return x * x

    def main(app):
        if os.environ.get("HOLD"):  # lets a test see the run while it is still going
            while not Path(os.environ["HOLD"]).exists():
                import time; time.sleep(0.02)
        if os.environ.get("FAIL"):
            raise RuntimeError("the experiment failed")
        return [{"x": x, "y": y} for x, y in zip(range(4), app.map(square, range(4)))]
    """
)


@pytest.fixture
def experiment(project: Path) -> Path:
    path = project / "my_experiment.py"
    path.write_text(EXPERIMENT)
    return path


def mini(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "mini"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_detach_then_watch_status_results_logs_and_ls(experiment, project):
    launched = mini("run", experiment.name, "--detach", cwd=project)
    assert launched.returncode == 0, launched.stderr
    run_id = launched.stdout.strip()
    assert "mini watch" in launched.stderr

    watched = mini("watch", run_id, cwd=project)
    assert watched.returncode == 0 and "done 1" in watched.stdout

    results = mini("results", run_id, "--json", cwd=project)
    assert results.returncode == 0, results.stderr
    assert json.loads(results.stdout) == [{"x": x, "y": x * x} for x in range(4)]
    table = mini("results", run_id, cwd=project)
    assert table.stdout.splitlines()[0].split() == ["x", "┃", "y"]

    status = json.loads(mini("status", run_id, "--json", cwd=project).stdout)
    assert status["status"] == "done" and status["kind"] == "experiment"
    assert status["function"] == "my_experiment.py:main" and status["backend"] == "local"
    assert status["calls"][0]["status"] == "done" and status["calls"][0]["backend_id"].isdigit()
    assert "done" in mini("status", cwd=project).stdout, "without RUN, the newest run"

    logs = mini("logs", run_id, cwd=project)
    assert "squaring 3" in logs.stdout

    listing = mini("ls", cwd=project).stdout.splitlines()
    assert listing[0].split()[:3] == ["RUN", "STATUS", "SETTLED"]
    assert listing[1].split()[:3] == [run_id, "done", "1/1"]


def test_results_of_a_running_run_say_so_and_cancel_stops_it(experiment, project, tmp_path):
    run_id = mini(
        "run", experiment.name, "--detach", cwd=project, HOLD=str(tmp_path / "never")
    ).stdout.strip()
    wait_until(lambda: "running" in mini("status", run_id, cwd=project).stdout, what="the run to start")
    early = mini("results", run_id, cwd=project)
    assert (
        early.returncode == 1
        and "not finished yet" in early.stderr
        and f"mini watch {run_id}" in early.stderr
    )

    cancelled = mini("cancel", run_id, cwd=project)
    assert cancelled.returncode == 0 and "cancelled 1 of 1 calls" in cancelled.stdout
    assert json.loads(mini("status", run_id, "--json", cwd=project).stdout)["status"] == "cancelled"
    assert mini("watch", run_id, cwd=project).returncode == 1


def test_a_failed_run_exits_non_zero_with_its_traceback(experiment, project):
    run_id = mini("run", experiment.name, "--detach", cwd=project, FAIL="1").stdout.strip()
    watched = mini("watch", run_id, cwd=project)
    assert watched.returncode == 1 and "failed 1" in watched.stdout
    results = mini("results", run_id, cwd=project)
    assert results.returncode == 1
    assert "RuntimeError: the experiment failed" in results.stderr and "Traceback" in results.stderr
    assert "RuntimeError: the experiment failed" in mini("logs", f"{run_id}/0", cwd=project).stdout


def test_bad_run_ids_get_one_clear_line(experiment, project):
    nothing = mini("status", "nope", cwd=project)
    assert nothing.returncode == 2 and "no runs are recorded" in nothing.stderr
    run_id = mini("run", experiment.name, "--detach", cwd=project).stdout.strip()
    unknown = mini("results", "nope", cwd=project)
    assert unknown.returncode == 2 and f"Known runs, newest first: {run_id}" in unknown.stderr
    bad_call = mini("logs", f"{run_id}/x", cwd=project)
    assert bad_call.returncode == 2 and "use RUN/INDEX" in bad_call.stderr
    assert "Traceback" not in nothing.stderr + unknown.stderr + bad_call.stderr
    mini("watch", run_id, cwd=project)


def test_read_only_verbs_load_no_backend_and_build_nothing(experiment, project):
    run_id = mini("run", experiment.name, "--detach", cwd=project).stdout.strip()
    mini("watch", run_id, cwd=project)
    code = textwrap.dedent(f"""
        import sys
        from mini.cli import main
        for verb in (["ls"], ["status", {run_id!r}], ["logs", {run_id!r}], ["results", {run_id!r}, "--json"]):
            assert main(verb) == 0
        heavy = [m for m in ("modal", "jax", "mini.modal_backend") if m in sys.modules]
        print("loaded:", heavy)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "loaded: []"
    assert sorted(p.name for p in (project / ".mini").iterdir()) == [".gitignore", "runs"], "no image cache"
