"""Live reports of detached runs, on every backend: what calls report and print is kept with the run, so a
fresh process reads it (`Run.reports`, `mini logs`, `mini watch`) while the calls run and after the process
that launched them has gone; `mini plot` draws it.

Parametrised over `DETACHED_BACKENDS` (see conftest.py); Modal goes through the emulator.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from rich.console import Console

from mini import LocalApparatus
from mini.cli.runs import _watch_live
from mini.runs import Run
from tests.runs import functions
from tests.runs.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]

# Launches two calls that report step 0, wait for a file, report steps 10 and 20 and return; prints the
# run's id and exits before they can finish.
LAUNCH = textwrap.dedent(
    """
    import sys
    from tests.runs import conftest, functions

    with conftest.make_detached(sys.argv[1], "reports") as app:
        run = app.spawn_map(functions.report_steps, [0, 1], kwargs={"steps": 3, "release": sys.argv[2]})
    print(run.id)
    """
)


@pytest.fixture
def env(detached_backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of a fresh process on this checkout (a Modal client's, through the emulator)."""
    variables = {**os.environ, "PYTHONPATH": str(ROOT)}
    if detached_backend == "modal":
        variables.update(request.getfixturevalue("modal_emulator").client_variables())
    return variables


def mini(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`mini ARGS` in a fresh process, as a user types it in another shell."""
    command = [str(Path(sys.executable).parent / "mini"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def launch_and_exit(backend: str, project: Path, env: dict[str, str], release: Path) -> str:
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCH, backend, str(release)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr
    return launched.stdout.strip()


def steps_seen(run_id: str) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {0: [], 1: []}
    for report in Run.open(run_id).reports():
        seen[report.index].append(report.metrics["step"])
    return seen


def test_reports_and_lines_reach_fresh_processes_while_calls_run_and_after_the_launcher_left(
    detached_backend, project, env, tmp_path
):
    release = tmp_path / "release"
    run_id = launch_and_exit(detached_backend, project, env, release)
    # This process launched nothing: what it reads, the calls' own processes (containers) left with the run.
    wait_until(
        lambda: steps_seen(run_id) == {0: [0], 1: [0]}, what="each call's first report, while it waits"
    )

    watch = subprocess.Popen(
        [str(Path(sys.executable).parent / "mini"), "watch", run_id],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(
            lambda: all(any(line.startswith(f"  #{i} step=0 loss=") for line in lines) for i in (0, 1)),
            what="mini watch to show each running call's latest metrics",
        )
    finally:
        release.touch()
        assert watch.wait(timeout=120) == 0, watch.stderr.read()  # type: ignore[union-attr]
        reader.join(timeout=10)
    placed = [line for line in lines if line.startswith("  #0 step=0")]
    assert "CPUs" in placed[0], "where the call runs, besides its metrics"

    reports = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from mini.runs import Run; print(json.dumps([[r.index, r.metrics, r.attempt, "
            "r.placement is not None] for r in Run.open(sys.argv[1]).reports()]))",
            run_id,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reports.returncode == 0, reports.stderr
    assert json.loads(reports.stdout) == [
        [x, {"step": step, "loss": 1.0 / (n + 1 + x)}, 1, True]
        for x in (0, 1)
        for n, step in enumerate((0, 10, 20))
    ]
    logs = mini("logs", run_id, cwd=project, env=env)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == [f"[{x}] call {x} step {n}" for x in (0, 1) for n in range(3)]
    one = mini("logs", run_id, "--call", "1", cwd=project, env=env)
    assert one.returncode == 0 and one.stdout.splitlines() == [f"call 1 step {n}" for n in range(3)]


def test_each_attempt_of_a_retried_call_reports_as_itself(app, tmp_path):
    job = app.w(retries=1).spawn(functions.report_then_fail_first_time, str(tmp_path / "marker"))
    assert job.result(timeout=120) == "second attempt"
    assert [(r.attempt, r.metrics) for r in Run.open(job.run.id).reports()] == [
        (1, {"first": 1}),
        (2, {"first": 0}),
    ]


def test_a_retried_run_answers_with_its_latest_launch_and_keeps_the_earlier_aside(app, tmp_path):
    run = app.spawn_map(functions.report_until_fixed, [str(tmp_path)])
    assert isinstance(run[0].exception(timeout=120), ValueError)
    following = Run.open(run.id)  # one handle across the retry, as a notebook keeps it
    assert [r.metrics for r in following.reports()] == [{"fixed": 0}]
    (tmp_path / "fixed").touch()
    assert [job.index for job in following.retry()] == [0]
    assert following.results(timeout=120) == ["fixed"]
    assert [r.metrics for r in following.reports()] == [{"fixed": 1}], "the latest launch's, not both"
    assert "fixed=1" in following[0].logs() and "fixed=0" not in following[0].logs()
    earlier = run.folder.call_dir(0) / "attempts" / "1" / "events.jsonl"
    assert '"fixed":0' in earlier.read_text(), "the first launch's reports went aside with it, complete"


def test_a_tight_loop_of_reports_is_kept_coalesced_with_its_count(app):
    job = app.spawn(functions.report_many, 5000)
    assert job.result(timeout=120) == 5000
    reports = Run.open(job.run.id).reports(0)
    assert sum(1 + r.coalesced for r in reports) == 5000, "every report is kept or counted"
    assert reports[-1].metrics == {"i": 4999}, "the latest value wins"
    assert [r.metrics["i"] for r in reports] == sorted(r.metrics["i"] for r in reports)


def test_a_settled_modal_run_is_read_from_its_folder_and_its_dict_released(
    modal_project, modal_emulator, tmp_path
):
    import modal

    env = {**os.environ, "PYTHONPATH": str(ROOT), **modal_emulator.client_variables()}
    release = tmp_path / "release"
    release.touch()
    run_id = launch_and_exit("modal", modal_project, env, release)
    assert mini("watch", run_id, cwd=modal_project, env=env).returncode == 0
    name = json.loads((modal_project / ".mini" / "runs" / run_id / "modal.json").read_text())["events"]
    assert name not in [d.name for d in modal.Dict.objects.list()], "copied into the run folder, then deleted"

    # Modal unreachable: a closed port.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        offline = {**env, "MODAL_SERVER_URL": f"http://127.0.0.1:{unused.getsockname()[1]}"}
    logs = mini("logs", run_id, "--call", "0", cwd=modal_project, env=offline)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == [f"call 0 step {n}" for n in range(3)]
    assert [r.metrics["step"] for r in Run.open(run_id).reports(1)] == [0, 10, 20]


# ----- one backend is enough: what is read from the run folder ---------------------------------------


@pytest.fixture
def finished_run(project: Path) -> str:
    with LocalApparatus("plotted", workers=2) as app:
        run = app.spawn_map(functions.report_steps, [0, 1, 2], kwargs={"steps": 4})
        assert run.results(timeout=120) == [0, 1, 2]
    return run.id


def local_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_mini_plot_draws_each_calls_curve_to_a_png(finished_run, project):
    drawn = mini("plot", finished_run, "--metric", "loss", "-o", "curves.png", cwd=project, env=local_env())
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.strip() == "curves.png"
    image = (project / "curves.png").read_bytes()
    assert image.startswith(PNG_SIGNATURE) and len(image) > 10_000

    default = mini("plot", finished_run, "--metric", "loss", cwd=project, env=local_env())
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == f"{finished_run}-loss.png"
    assert (project / f"{finished_run}-loss.png").read_bytes().startswith(PNG_SIGNATURE)


def test_mini_plot_of_a_metric_never_reported_names_those_that_were(finished_run, project):
    drawn = mini("plot", finished_run, "--metric", "accuracy", cwd=project, env=local_env())
    assert drawn.returncode == 7
    assert "reported a number as 'accuracy'" in drawn.stderr and "they reported: loss, step" in drawn.stderr
    assert not list(project.glob("*.png"))


def test_mini_plot_without_matplotlib_says_what_to_install(finished_run, project, tmp_path):
    hidden = tmp_path / "no-matplotlib" / "matplotlib"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {**local_env(), "PYTHONPATH": f"{hidden.parent}{os.pathsep}{ROOT}"}
    drawn = mini("plot", finished_run, "--metric", "loss", cwd=project, env=env)
    assert drawn.returncode == 9 and "matplotlib" in drawn.stderr and "local" in drawn.stderr
    assert "Traceback" not in drawn.stderr


def test_logs_and_plot_of_unknown_runs_and_calls_are_one_clear_line(finished_run, project):
    for args, code, says in [
        (("logs", "nosuchrun"), 7, "no run 'nosuchrun'"),
        (("plot", "nosuchrun", "--metric", "loss"), 7, "no run 'nosuchrun'"),
        (("logs", finished_run, "--call", "3"), 7, "has 3 calls, numbered from 0: there is no call 3"),
        (("logs", finished_run, "--call", "-1"), 7, "there is no call -1"),
        (("logs", finished_run, "0", "--call", "1"), 2, "two different calls named"),
    ]:
        done = mini(*args, cwd=project, env=local_env())
        assert done.returncode == code, (args, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)


def test_watch_on_a_terminal_draws_a_line_per_running_call_with_its_metrics(project, tmp_path):
    release = tmp_path / "release"
    with LocalApparatus("watched", workers=2) as app:
        run = app.spawn_map(functions.report_steps, [0, 1], kwargs={"steps": 2, "release": str(release)})
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    watching = threading.Thread(target=_watch_live, args=(Run.open(run.id),), kwargs={"console": console})
    watching.start()
    try:
        wait_until(
            lambda: all(f"#{i}" in screen.getvalue() for i in (0, 1)) and "step=0 loss=" in screen.getvalue(),
            what="the bar to show the running calls' metrics",
        )
    finally:
        release.touch()
        watching.join(timeout=120)
    frame = screen.getvalue()
    assert "step=0 loss=1 · " in frame and "step=0 loss=0.5 · " in frame and "CPUs" in frame
