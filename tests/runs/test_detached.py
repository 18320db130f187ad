"""Detached local runs for real: launch, outlive the launcher, re-open by id, results, cancel, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mini import LocalApparatus, WorkerCrashed
from mini.errors import CallTimeoutError, RemoteTraceback
from mini.runs import CallCancelled, CallNotFinished, Job, Run
from tests.runs import functions
from tests.runs.conftest import process_gone, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(project: Path):
    with LocalApparatus("detached", workers=2) as apparatus:
        yield apparatus


def in_new_process(code: str, cwd: Path) -> str:
    """Run `code` in a fresh interpreter (as another shell would) and return what it printed."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_spawn_map_runs_every_call_and_records_the_run(app, project):
    run = app.spawn_map(functions.square, range(5))
    assert run.results(timeout=60) == [0, 1, 4, 9, 16]
    assert run.status() == "done" and run.counts()["done"] == 5
    record = Run.open(run.id).record
    assert record.backend == "local" and record.apparatus == "detached" and record.kind == "spawn_map"
    assert record.function == "tests.runs.functions:square"
    assert [call.args for call in record.calls] == [f"x={i}" for i in range(5)]
    assert all(job.backend_id and job.backend_id.isdigit() for job in run), "local calls are known by pid"
    assert record.project_root == str(project) and record.git_commit is None and record.image_hash is None
    assert "squaring 3" in run[3].logs()


def test_a_spawned_call_reopens_by_id_and_reports_its_exception(app):
    job = app.spawn(functions.fail, "boom")
    assert job.id.endswith("/0")
    reopened = Job.open(job.id.split("/")[0])
    error = reopened.exception(timeout=60)
    assert isinstance(error, ValueError) and str(error) == "boom"
    assert (
        isinstance(error.__cause__, RemoteTraceback) and "raise ValueError(message)" in error.__cause__.text
    )
    assert reopened.status() == "failed" and "ValueError: boom" in reopened.state().detail
    with pytest.raises(ValueError, match="boom"):
        Job.open(job.id).result()


def test_calls_outlive_a_killed_launcher_and_answer_a_new_process(project, tmp_path):
    release = tmp_path / "release"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import os, signal
            from mini import LocalApparatus
            from tests.runs import functions
            job = LocalApparatus("launcher").spawn(functions.wait_for_file, {str(release)!r})
            print(job.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """),
        ],
        cwd=project,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    job_id = launcher.stdout.readline().strip()
    assert launcher.wait(timeout=60) == -signal.SIGKILL

    status = f"from mini.runs import Job; print(Job.open({job_id!r}).status())"
    wait_until(lambda: in_new_process(status, project) == "running", what="the call to be running")
    release.touch()
    result = in_new_process(
        f"from mini.runs import Job; print(Job.open({job_id!r}).result(timeout=60))", project
    )
    ran_in = eval(result)
    assert ran_in["sid"] == ran_in["pid"], "the call should lead its own session"
    assert ran_in["pid"] != launcher.pid


def test_cancel_kills_the_calls_whole_process_group(app, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    job = app.spawn(functions.start_child_and_wait, str(pid_file), str(tmp_path / "never"))
    wait_until(pid_file.exists, what="the call to start its own child")
    grandchild = int(pid_file.read_text())
    assert job.cancel() is True
    assert job.status() == "cancelled"
    wait_until(lambda: process_gone(grandchild), what="the grandchild to be killed")
    wait_until(lambda: process_gone(int(job.backend_id)), what="the call process to be killed")
    with pytest.raises(CallCancelled):
        job.result(timeout=0)
    assert job.cancel() is False, "a settled call cannot be cancelled again"


def test_a_call_whose_process_vanished_is_failed_not_running_forever(app, tmp_path):
    job = app.spawn(functions.wait_for_file, str(tmp_path / "never"))
    wait_until(lambda: job.status() == "running", what="the call to start")
    os.kill(int(job.backend_id), signal.SIGKILL)  # as the OOM killer would
    wait_until(lambda: job.status() == "failed", what="the vanished call to be reported failed")
    assert "ended without storing a result" in job.state().detail
    with pytest.raises(WorkerCrashed, match="ended without storing a result"):
        job.result(timeout=0)


def test_asking_for_the_result_of_a_running_call_says_so(app, tmp_path):
    release = tmp_path / "release"
    job = app.spawn(functions.wait_for_file, str(release))
    wait_until(lambda: job.status() == "running", what="the call to start")
    with pytest.raises(CallNotFinished, match="is still running"):
        job.result(timeout=0)
    release.touch()
    assert set(job.result(timeout=60)) == {"pid", "sid"}


def test_workers_bound_how_many_calls_run_at_once(project, tmp_path):
    release = tmp_path / "release"
    with LocalApparatus("one-at-a-time", workers=1) as app:
        run = app.spawn_map(functions.wait_for_file, [str(release)] * 3)
        wait_until(lambda: run.counts()["running"] == 1, what="one call to start")
        assert run.counts()["pending"] == 2 and run.status() == "running"
        release.touch()
        assert len(run.results(timeout=60)) == 3


def test_options_timeout_retries_and_env_apply_to_detached_calls(app, tmp_path):
    timed_out = app.w(timeout=0.5).spawn(functions.wait_for_file, str(tmp_path / "never"))
    retried = app.w(retries=1).spawn(functions.fail_first_time, str(tmp_path / "marker"))
    with_env = app.w(env={"MINI_TEST_VALUE": "42"}).spawn(functions.environment_variable, "MINI_TEST_VALUE")
    assert isinstance(timed_out.exception(timeout=60), CallTimeoutError)
    assert retried.result(timeout=60) == "second attempt"
    assert retried.run.folder.outcome_summary(0)["attempts"] == 2
    assert with_env.result(timeout=60) == "42"


def test_the_record_names_git_commit_and_dirty_state(project):
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "pyproject.toml"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=project, check=True
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout
    with LocalApparatus("git") as app:
        clean = app.spawn(functions.square, 2)
        (project / "new_file.py").write_text("x = 1\n")
        dirty = app.spawn(functions.square, 3)
    data = json.loads((clean.run.folder.path / "run.json").read_text())
    assert data["git_commit"] == head.strip() and data["git_dirty"] is False
    assert dirty.run.record.git_dirty is True
    assert clean.result(timeout=60) == 4 and dirty.result(timeout=60) == 9


def test_queued_calls_fail_if_the_runs_scheduler_is_killed_while_started_ones_go_on(project, tmp_path):
    release = tmp_path / "release"
    with LocalApparatus("scheduler", workers=1) as app:
        run = app.spawn_map(functions.wait_for_file, [str(release)] * 3)
    wait_until(lambda: run.counts()["running"] == 1, what="the first call to start")
    scheduler = json.loads((run.folder.path / "scheduler.json").read_text())["pid"]
    os.kill(scheduler, signal.SIGKILL)
    wait_until(lambda: run.counts()["failed"] == 2, what="the queued calls to be reported failed")
    assert "scheduler" in run[1].state().detail and run[0].status() == "running"
    release.touch()
    assert run[0].result(timeout=60)["pid"] == int(run[0].backend_id)
    assert run.status() == "failed"


def test_a_launch_interrupted_before_handing_calls_over_is_failed(project):
    code = textwrap.dedent("""
        import os, signal
        from mini import LocalApparatus
        from mini.runs.local_launcher import LocalLauncher
        from tests.runs import functions
        LocalLauncher.launch = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        LocalApparatus("interrupted").spawn_map(functions.square, range(2))
    """)
    launcher = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120
    )
    assert launcher.returncode == -signal.SIGKILL
    (folder,) = (project / ".mini" / "runs").iterdir()
    run = Run.open(folder.name)
    assert run.status() == "failed"
    assert "launching process ended before it handed this call over" in run[0].state().detail


def test_arguments_that_cannot_be_pickled_fail_before_anything_is_recorded(app, project):
    import threading

    from mini import SerializationError

    with pytest.raises(SerializationError, match="argument 'x' .* cannot be pickled"):
        app.spawn_map(functions.square, [1, threading.Lock()])
    assert not (project / ".mini" / "runs").exists() or not any((project / ".mini" / "runs").iterdir())


def test_a_backend_without_detached_runs_says_so(project):
    from mini.apparatus import Apparatus

    class Inline(Apparatus):
        async def _open_dispatch(self, fn, fn_blob):
            raise AssertionError("not used")

        def close(self) -> None:
            pass

    with pytest.raises(NotImplementedError, match="Inline cannot launch detached runs"):
        Inline("inline").spawn(functions.square, 2)
