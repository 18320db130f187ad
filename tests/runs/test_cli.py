"""The run verbs end to end, as a user types them, in a temporary project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
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

    def report_and_hold(x):
        import mini, time

        mini.report(step=1, x=x)
        while not Path(os.environ["HOLD_REPORTING"]).exists():
            time.sleep(0.02)
        return x

    def main(app):
        if os.environ.get("HOLD_REPORTING"):  # calls that report, then wait for a test to have seen it
            return list(app.map(report_and_hold, range(2)))
        if os.environ.get("HOLD"):  # lets a test see the run while it is still going
            while not Path(os.environ["HOLD"]).exists():
                import time; time.sleep(0.02)
        if os.environ.get("FAIL"):
            raise RuntimeError("the experiment failed")
        if os.environ.get("DIE"):
            app.run(os._exit, 3)
        if os.environ.get("BIG"):
            return list(range(200_000))
        squares = list(app.map(square, range(4)))
        if os.environ.get("HOLD_BETWEEN"):  # lets a test see the calls of a first map while a second waits
            while not Path(os.environ["HOLD_BETWEEN"]).exists():
                import time; time.sleep(0.02)
            squares = [app.run(square, y) for y in squares[:2]] + squares[2:]
        return [{"x": x, "y": y} for x, y in zip(range(4), squares)]
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
    assert watched.returncode == 0 and f"{run_id}: done, 1/1 settled" in watched.stdout

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

    listing = [
        line.replace("│", " ").replace("┃", " ").split()
        for line in mini("ls", cwd=project).stdout.splitlines()
    ]
    assert listing[0][:3] == ["RUN", "STATUS", "SETTLED"]
    assert listing[2][:4] == [run_id, "done", "1/1", "local"], "a rich table: header, rule, rows"


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
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"run {run_id}: cancelled the call."
    again = mini("cancel", run_id, cwd=project)
    assert "the call had already finished; nothing to cancel" in again.stdout
    assert json.loads(mini("status", run_id, "--json", cwd=project).stdout)["status"] == "cancelled"
    assert mini("watch", run_id, cwd=project).returncode == 1


def test_a_failed_run_exits_non_zero_with_its_traceback(experiment, project):
    run_id = mini("run", experiment.name, "--detach", cwd=project, FAIL="1").stdout.strip()
    watched = mini("watch", run_id, cwd=project)
    assert watched.returncode == 1 and f"{run_id}: failed, 1/1 settled" in watched.stdout
    results = mini("results", run_id, cwd=project)
    assert results.returncode == 1
    assert "RuntimeError: the experiment failed" in results.stderr and "Traceback" in results.stderr
    assert "RuntimeError: the experiment failed" in mini("logs", f"{run_id}/0", cwd=project).stdout


def test_bad_run_ids_get_one_clear_line(experiment, project):
    nothing = mini("status", "nope", cwd=project)
    assert nothing.returncode == 7 and "no runs are recorded" in nothing.stderr
    run_id = mini("run", experiment.name, "--detach", cwd=project).stdout.strip()
    unknown = mini("results", "nope", cwd=project)
    assert unknown.returncode == 7 and f"Known runs, newest first: {run_id}" in unknown.stderr
    bad_call = mini("logs", f"{run_id}/x", cwd=project)
    assert bad_call.returncode == 7 and "use RUN/INDEX" in bad_call.stderr
    no_such_call = mini("results", run_id, "3", cwd=project)
    assert no_such_call.returncode == 7 and "there is no call 3" in no_such_call.stderr
    both = nothing.stderr + unknown.stderr + bad_call.stderr + no_such_call.stderr
    assert "Traceback" not in both and len(both.strip().splitlines()) == 4, "one line each"
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


def test_results_without_a_run_are_the_newest_runs(experiment, project):
    first = mini("run", experiment.name, "--detach", cwd=project).stdout.strip()
    mini("watch", first, cwd=project)
    newest = mini("run", experiment.name, "--detach", cwd=project, FAIL="1").stdout.strip()
    mini("watch", newest, cwd=project)
    results = mini("results", cwd=project)
    assert results.returncode == 1 and f"run {newest} (the newest)" in results.stderr
    assert "RuntimeError: the experiment failed" in results.stderr


def test_the_calls_an_experiment_makes_show_under_its_run_as_they_go(experiment, project, tmp_path):
    release = tmp_path / "release"
    run_id = mini("run", experiment.name, "--detach", cwd=project, HOLD_BETWEEN=str(release)).stdout.strip()

    def status() -> dict:
        return json.loads(mini("status", run_id, "--json", cwd=project).stdout)

    first_map = {"maps": 1, "active": 0, "queued": 0, "running": 0, "done": 4, "failed": 0, "cancelled": 0}
    first_map["cached"] = 0
    first_map["lines"] = []  # no call of it runs any more
    wait_until(lambda: status()["calls"][0]["inner_calls"] == {**first_map, "made": 4}, what="the first map")
    assert status()["status"] == "running", "counted while main(app) is still going"
    text = mini("status", run_id, cwd=project).stdout
    assert "main(app) made 4 calls (done 4 · running 0 · queued 0 · failed 0) in 1 map" in text

    release.touch()
    watched = mini("watch", run_id, cwd=project)
    assert watched.returncode == 0
    last = watched.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{run_id}: done, 1/1 settled · ") and last.endswith(
        "main(app) made 6 calls (done 6 · running 0 · queued 0 · failed 0) in 3 maps"
    )
    assert json.loads(mini("results", run_id, "--json", cwd=project).stdout)[1] == {"x": 1, "y": 1}


def test_watch_shows_what_the_running_calls_of_an_experiment_report(experiment, project, tmp_path):
    release = tmp_path / "release"
    run_id = mini("run", experiment.name, "--detach", cwd=project, HOLD_REPORTING=str(release)).stdout.strip()
    watch = subprocess.Popen(
        [str(Path(sys.executable).parent / "mini"), "watch", run_id],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(
            lambda: all(any(line.startswith(f"  #{x} step=1 x={x}") for line in lines) for x in (0, 1)),
            what="mini watch to show the metrics of main(app)'s running calls",
        )
    finally:
        release.touch()
        assert watch.wait(timeout=120) == 0
        reader.join(timeout=10)


def test_the_reports_of_an_experiments_calls_are_kept_with_its_run_and_plotted(experiment, project, tmp_path):
    released = tmp_path / "released"
    released.touch()
    run_id = mini(
        "run", experiment.name, "--detach", cwd=project, HOLD_REPORTING=str(released)
    ).stdout.strip()
    assert mini("watch", run_id, cwd=project).returncode == 0
    from mini.runs import Run

    history = Run.open(run_id).histories()[0]
    assert sorted(history.series) == [(1, 0), (1, 1)], "the map's two calls, each its own series"
    assert sorted((r.index, r.metrics["x"]) for r in Run.open(run_id).reports()) == [(0, 0), (1, 1)]
    assert all(r.placement is not None for r in history.reports)
    drawn = mini("plot", run_id, "--metric", "x", "-o", "x.png", cwd=project)
    assert drawn.returncode == 0, drawn.stderr
    assert (project / "x.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_detached_experiment_ended_by_a_thread_mode_call_says_which_mode_to_use(experiment, project):
    run_id = mini("run", experiment.name, "--detach", cwd=project, DIE="1").stdout.strip()
    assert mini("watch", run_id, cwd=project).returncode == 1
    detail = json.loads(mini("status", run_id, "--json", cwd=project).stdout)["calls"][0]["detail"]
    assert "ended without storing a result" in detail and "run it with --mode process" in detail
    run_id = mini(
        "run", experiment.name, "--detach", "--mode", "process", cwd=project, DIE="1"
    ).stdout.strip()
    mini("watch", run_id, cwd=project)
    results = mini("results", run_id, cwd=project)
    assert "WorkerCrashed" in results.stderr, "in process mode the call fails alone, and main(app) reports it"


def test_results_read_by_a_reader_that_stops_early_end_quietly(experiment, project):
    run_id = mini("run", experiment.name, "--detach", cwd=project, BIG="1").stdout.strip()
    mini("watch", run_id, cwd=project)
    mini_command = Path(sys.executable).parent / "mini"
    for flags in ("--json", ""):
        piped = subprocess.run(
            f"{mini_command} results {run_id} {flags} | head -2",
            shell=True,
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert len(piped.stdout.splitlines()) == 2 and piped.stderr == "", piped.stderr


def test_status_of_a_large_run_lists_the_calls_not_done_and_all_of_them_when_asked(project):
    from tests.runs import functions
    from tests.runs.conftest import make_detached

    with make_detached("local", "large") as app:
        run = app.spawn_map(functions.fail_on, range(60), kwargs={"bad": (7, 41)})
    run.wait(timeout=120)
    shown = mini("status", run.id, cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert [row[:2] for row in _call_rows(shown.stdout)] == [["7", "failed"], ["41", "failed"]], shown.stdout
    assert f"not listed: 58 done (`mini status {run.id} --all` lists every call)" in shown.stdout
    everything = mini("status", run.id, "--all", cwd=project).stdout
    assert [row[0] for row in _call_rows(everything)] == [str(index) for index in range(60)]
    assert "not listed" not in everything


def _call_rows(table: str) -> list[list[str]]:
    """The cells of each call's row in `mini status`'s table."""
    rows = [[cell.strip() for cell in line.split("│")] for line in table.splitlines() if "│" in line]
    return [row for row in rows if row[0].isdigit()]
