"""What detached runs promise on every backend: launch, re-open by id, results, errors, cancel, options.

Parametrised over the backends in `DETACHED_BACKENDS` (see conftest.py); what only one backend can show
(process groups, pids, a killed scheduler) is tested next to it, e.g. in test_local.py.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from mini.errors import CallTimeoutError, RemoteTraceback
from mini.runs import CallCancelled, CallNotFinished, Job, Run
from tests.runs import functions
from tests.runs.conftest import make_detached, wait_until


def test_spawn_map_runs_every_call_and_records_the_run(app, detached_backend, project):
    run = app.spawn_map(functions.square, range(5))
    assert run.results(timeout=60) == [0, 1, 4, 9, 16]
    assert run.status() == "done" and run.counts()["done"] == 5
    record = Run.open(run.id).record
    assert (
        record.backend == detached_backend and record.apparatus == "detached" and record.kind == "spawn_map"
    )
    assert record.function == "tests.runs.functions:square"
    assert [call.args for call in record.calls] == [f"x={i}" for i in range(5)]
    assert all(job.backend_id for job in Run.open(run.id)), "every call has its backend's id"
    assert record.project_root == str(project) and record.git_commit is None and record.launched is not None


def test_spawned_async_functions_are_awaited(app):
    assert app.spawn(functions.async_square, 3).result(timeout=60) == 9
    assert app.spawn_map(functions.async_square, range(3)).results(timeout=60) == [0, 1, 4]


def test_spawn_refuses_a_generator_function_and_points_at_stream(app):
    with pytest.raises(TypeError, match="stream"):
        app.spawn(functions.count_to, 3)


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


def test_asking_for_the_result_of_a_running_call_says_so(app, tmp_path):
    release = tmp_path / "release"
    job = app.spawn(functions.wait_for_file, str(release))
    wait_until(lambda: job.status() == "running", what="the call to start")
    with pytest.raises(CallNotFinished, match="is still running"):
        job.result(timeout=0)
    release.touch()
    assert set(job.result(timeout=60)) == {"pid", "sid"}


def test_options_timeout_retries_and_env_apply_to_detached_calls(app, tmp_path):
    timed_out = app.w(timeout=0.5).spawn(functions.wait_for_file, str(tmp_path / "never"))
    retried = app.w(retries=1).spawn(functions.fail_first_time, str(tmp_path / "marker"))
    with_env = app.w(env={"MINI_TEST_VALUE": "42"}).spawn(functions.environment_variable, "MINI_TEST_VALUE")
    assert isinstance(timed_out.exception(timeout=60), CallTimeoutError)
    assert retried.result(timeout=60) == "second attempt"
    assert with_env.result(timeout=60) == "42"


def test_the_record_names_git_commit_and_dirty_state(detached_backend, project):
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "pyproject.toml"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=project, check=True
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout
    with make_detached(detached_backend, "git") as app:
        clean = app.spawn(functions.square, 2)
        (project / "new_file.py").write_text("x = 1\n")
        dirty = app.spawn(functions.square, 3)
    data = json.loads((clean.run.folder.path / "run.json").read_text())
    assert data["git_commit"] == head.strip() and data["git_dirty"] is False
    assert dirty.run.record.git_dirty is True
    assert clean.result(timeout=60) == 4 and dirty.result(timeout=60) == 9


def test_arguments_that_cannot_be_pickled_fail_before_anything_is_recorded(app, project):
    import threading

    from mini import SerializationError

    with pytest.raises(SerializationError, match="argument 'x' .* cannot be pickled"):
        app.spawn_map(functions.square, [1, threading.Lock()])
    assert not (project / ".mini" / "runs").exists() or not any((project / ".mini" / "runs").iterdir())


def test_cancel_stops_a_call_that_has_not_finished(app, tmp_path):
    job = app.spawn(functions.wait_for_file, str(tmp_path / "never"))
    wait_until(lambda: job.status() == "running", what="the call to start")
    assert job.cancel() is True
    assert Job.open(job.id).status() == "cancelled"
    with pytest.raises(CallCancelled, match="was cancelled"):
        job.result(timeout=0)
    assert job.cancel() is False, "a settled call cannot be cancelled again"
