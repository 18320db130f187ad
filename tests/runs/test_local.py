"""What only the local backend shows: sessions, process groups, pids, the run's scheduler."""

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
from mini.runs import CallCancelled, Run
from tests.runs import functions
from tests.runs.conftest import process_gone, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(project: Path):
    with LocalApparatus("local-detached", workers=2) as apparatus:
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


def test_local_calls_are_known_by_pid_and_log_to_their_folder(app):
    run = app.spawn_map(functions.square, range(4))
    assert run.results(timeout=60) == [0, 1, 4, 9]
    assert all(job.backend_id.isdigit() for job in run)
    assert run.record.image_hash is None, "local runs have no image"
    assert "squaring 3" in run[3].logs() and "squaring 3" not in run[2].logs()
    assert run.folder.outcome_summary(0)["attempts"] == 1


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


def test_workers_bound_how_many_calls_run_at_once(project, tmp_path):
    release = tmp_path / "release"
    with LocalApparatus("one-at-a-time", workers=1) as app:
        run = app.spawn_map(functions.wait_for_file, [str(release)] * 3)
        wait_until(lambda: run.counts()["running"] == 1, what="one call to start")
        assert run.counts()["pending"] == 2 and run.status() == "running"
        release.touch()
        assert len(run.results(timeout=60)) == 3


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


def test_a_backend_without_detached_runs_says_so(project):
    from mini.apparatus import Apparatus
    from mini.backend import Backend
    from mini.errors import NotSupportedError

    class Inline(Backend):
        kind = "inline"

        async def open_dispatch(self, fn, fn_blob, options, *, ordered):
            raise AssertionError("not used")

        def close(self) -> None:
            pass

    with pytest.raises(NotSupportedError, match=r"inline backend \(Inline\) cannot launch detached runs"):
        Apparatus("inline", Inline()).spawn(functions.square, 2)
