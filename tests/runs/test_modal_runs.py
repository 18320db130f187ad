"""What only Modal's detached runs show: calls that outlive the launching process in a detached app, found
again by function-call id from fresh processes, outcomes kept locally, cancel on Modal's side, and
read-only questions that create nothing.

The shared promises (results, errors, options, cancel) are in test_behaviour.py, which runs on Modal
too; everything here goes through the real modal client and the emulator (`tests/emulator`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mini.image import derive_image_spec
from mini.runs import Job, Run, RunError
from mini.runs.registry import CallRecord, RunRecord, new_run_folder
from tests.runs import functions
from tests.runs.conftest import make_detached, wait_until

ROOT = Path(__file__).resolve().parents[2]

# Launches a run of two calls that each wait for a file, prints its id and exits: the launching client
# is gone before the calls can finish.
LAUNCH = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mini import ModalApparatus

    def held_square(x, release):
        while not Path(release).exists():
            time.sleep(0.02)
        print("squaring", x, flush=True)
        return x * x

    with ModalApparatus("detached", max_containers=2).w(gpu="A100") as app:
        run = app.spawn_map(held_square, [3, 4], kwargs={"release": sys.argv[1]})
    print(run.id)
    """
)


def client_env(modal_emulator, **overrides: str) -> dict[str, str]:
    return {**os.environ, **modal_emulator.client_variables(), "PYTHONPATH": str(ROOT), **overrides}


def mini(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`mini ARGS` in a fresh process, as a user types it in another shell."""
    command = [str(Path(sys.executable).parent / "mini"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def launch_and_exit(project: Path, env: dict[str, str], release: Path) -> str:
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCH, str(release)], cwd=project, env=env, capture_output=True, text=True
    )
    assert launched.returncode == 0, launched.stderr
    return launched.stdout.strip()


def test_calls_outlive_the_launching_process_and_answer_fresh_processes(
    modal_project, modal_emulator, tmp_path
):
    env = client_env(modal_emulator)
    release = tmp_path / "release"
    run_id = launch_and_exit(modal_project, env, release)

    app_id = json.loads((modal_project / ".mini" / "runs" / run_id / "modal.json").read_text())["app_id"]
    assert modal_emulator.recorder.apps[app_id].states[-1] == "detached", "the client left; the app did not"
    status = json.loads(mini("status", run_id, "--json", cwd=modal_project, env=env).stdout)
    assert status["backend"] == "modal" and status["status"] == "running"
    assert [call["status"] for call in status["calls"]] == ["running", "running"]
    assert all(call["backend_id"].startswith("fc-") for call in status["calls"])
    assert status["settings"]["gpu"] == "A100" and status["settings"]["max_containers"] == 2
    assert status["image_hash"] == derive_image_spec(modal_project).image_hash

    release.touch()
    watched = mini("watch", run_id, cwd=modal_project, env=env)
    assert watched.returncode == 0 and "done 2" in watched.stdout
    results = mini("results", run_id, "--json", cwd=modal_project, env=env)
    assert results.returncode == 0, results.stderr
    assert json.loads(results.stdout) == [9, 16]
    assert [job.result(timeout=0) for job in Run.open(run_id)] == [9, 16]


def test_fetched_outcomes_are_kept_locally_and_questions_create_nothing_on_modal(
    modal_project, modal_emulator, tmp_path
):
    env = client_env(modal_emulator)
    release = tmp_path / "release"
    run_id = launch_and_exit(modal_project, env, release)

    with modal_emulator.recorder.counting() as asked:
        assert mini("status", run_id, cwd=modal_project, env=env).returncode == 0
        assert mini("logs", run_id, cwd=modal_project, env=env).returncode == 0
    assert asked["FunctionCallFetch"] == 1 and not asked["FunctionGetOutputs"], (
        f"one listing answers for the run's calls while they run: {dict(asked)}"
    )
    # `logs` reads the run's Dict: looked up by name (without creating it), each call's next entry asked for.
    assert set(asked) <= {"ClientHello", "FunctionCallFetch", "DictGetOrCreate", "DictGet"}, (
        f"questions created something: {asked}"
    )

    release.touch()
    assert mini("watch", run_id, cwd=modal_project, env=env).returncode == 0
    with modal_emulator.recorder.counting() as asked:
        results = mini("results", run_id, "--json", cwd=modal_project, env=env)
        assert mini("status", run_id, cwd=modal_project, env=env).returncode == 0
    assert results.returncode == 0 and json.loads(results.stdout) == [9, 16]
    assert not asked, "settled calls are answered from the run folder, whatever Modal still keeps"
    outcomes = sorted((modal_project / ".mini" / "runs" / run_id).glob("calls/*/outcome.pkl"))
    assert len(outcomes) == 2


def test_status_of_a_run_asks_modal_once_and_each_finished_call_once(modal_project, modal_emulator, tmp_path):
    release = tmp_path / "release"
    with make_detached("modal", "many") as app:
        run = app.spawn_map(functions.wait_for_file, [str(release)] * 30)
    recorder = modal_emulator.recorder

    def running() -> int:
        functions = [f for f in list(recorder.functions.values()) if f.name.startswith("wait-for-file-")]
        return functions[-1].peak_running if functions else 0

    wait_until(lambda: running() == 2, timeout=120, what="two calls running")
    with recorder.counting() as asked:
        states = run.states()
    assert asked["FunctionCallFetch"] == 1 and not asked["FunctionGetOutputs"], dict(asked)
    details = [state.detail for state in states]
    assert details.count("running on Modal") == 2 and details.count("queued on Modal") == 28, details
    assert all(state.started for state in states if state.detail == "running on Modal")

    release.touch()
    with recorder.counting() as asked:
        assert len(run.results(timeout=120)) == 30
        assert run.status() == "done"
    assert asked["FunctionGetOutputs"] == 30, f"each finished call's output is fetched once: {dict(asked)}"
    with recorder.counting() as asked:
        assert run.counts()["done"] == 30
    assert not asked, "settled calls are answered from the run folder"


def test_cancel_from_a_fresh_process_stops_the_call_on_modal(modal_project, modal_emulator, tmp_path):
    import modal

    env = client_env(modal_emulator)
    release = tmp_path / "release"
    run_id = launch_and_exit(modal_project, env, release)
    call_ids = [job.backend_id for job in Run.open(run_id)]

    cancelled = mini("cancel", run_id, cwd=modal_project, env=env)
    assert cancelled.returncode == 0 and "cancelled 2 of 2 calls" in cancelled.stdout
    release.touch()  # a call still running would now finish and return its square
    for call_id in call_ids:
        with pytest.raises(modal.exception.RemoteError, match="cancelled"):
            modal.FunctionCall.from_id(call_id).get(timeout=30)
    assert json.loads(mini("status", run_id, "--json", cwd=modal_project, env=env).stdout)["status"] == (
        "cancelled"
    )


def test_a_failed_call_reports_its_traceback_and_where_its_logs_are(modal_project, modal_emulator):
    with make_detached("modal", "failing") as app:
        job = app.spawn(functions.fail, "boom")
    assert isinstance(job.exception(timeout=60), ValueError)
    env = client_env(modal_emulator)
    logs = mini("logs", job.id, cwd=modal_project, env=env).stdout
    app_id = json.loads((job.run.folder.path / "modal.json").read_text())["app_id"]
    # The call printed nothing of its own; the traceback Modal's runtime prints for it may or may not be
    # among its lines yet, depending on when the container's last events went out.
    if logs.startswith("(nothing printed yet;"):
        assert f"`bin/modal app logs {app_id}`" in logs
        assert job.backend_id in logs and "fail-" in logs, "names the call and the dashboard's function name"
    else:
        assert logs.startswith("Traceback"), logs
    assert "raise ValueError(message)" in logs and "ValueError: boom" in logs


def test_what_a_call_printed_before_it_failed_comes_before_its_traceback(modal_project, modal_emulator):
    with make_detached("modal", "failing") as app:
        job = app.spawn(functions.print_then_fail, "boom")
    assert isinstance(job.exception(timeout=60), ValueError)
    logs = mini("logs", job.id, cwd=modal_project, env=client_env(modal_emulator)).stdout
    assert logs.startswith("about to fail\nTraceback"), logs
    assert logs.rstrip().endswith("ValueError: boom")


def test_a_rejected_token_when_asking_gets_one_clear_line(modal_project, modal_emulator, tmp_path):
    run_id = launch_and_exit(modal_project, client_env(modal_emulator), tmp_path / "release")
    asked = mini("status", run_id, cwd=modal_project, env=client_env(modal_emulator, MODAL_TOKEN_SECRET="x"))
    assert asked.returncode == 5 and "Modal rejected the token in MODAL_TOKEN_ID" in asked.stderr
    assert "Traceback" not in asked.stderr and len(asked.stderr.strip().splitlines()) == 1


def test_a_call_id_modal_does_not_know_is_reported_clearly(modal_project):
    folder = new_run_folder(modal_project)
    record = RunRecord(
        id=folder.id,
        kind="spawn",
        backend="modal",
        apparatus="elsewhere",
        function="tests.runs.functions:square",
        monitor="mini.modal_backend.runs:ModalMonitor",
        created=time.time(),
        project_root=str(modal_project),
        image_hash=None,
        git_commit=None,
        git_dirty=None,
        calls=(CallRecord(0, "x=2", "fc-from-another-workspace"),),
        launched=time.time(),
    )
    folder.write_record(record)
    with pytest.raises(RunError, match="Modal does not know function call fc-from-another-workspace"):
        Job.open(folder.id).status()


def test_a_run_is_one_detached_app_with_one_function_whatever_its_size(modal_project, modal_emulator):
    with make_detached("modal", "sized") as app, modal_emulator.recorder.counting() as rpcs:
        run = app.spawn_map(functions.square, range(20))
    assert rpcs["AppCreate"] == 1 and rpcs["FunctionCreate"] == 1, f"RPCs of the launch: {dict(rpcs)}"
    assert run.results(timeout=60) == [x * x for x in range(20)]
    assert len({job.backend_id for job in run}) == 20, "each call has its own function-call id"


# Launches 400 calls that each wait for a file: long enough to stop the launcher while it spawns.
LONG_LAUNCH = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mini import ModalApparatus

    def wait_for(release):
        while not Path(release).exists():
            time.sleep(0.02)

    ModalApparatus("long").spawn_map(wait_for, [sys.argv[1]] * 400)
    """
)


def start_long_launch(project: Path, env: dict[str, str], release: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", LONG_LAUNCH, str(release)], cwd=project, env=env, stderr=subprocess.PIPE
    )


def test_an_interrupted_launch_cancels_every_call_it_had_spawned(modal_project, modal_emulator, tmp_path):
    recorder = modal_emulator.recorder
    spawned_before = recorder.rpc_counts["FunctionMap"]  # a spawn is one FunctionMap request
    with recorder.counting() as rpcs:
        launcher = start_long_launch(modal_project, client_env(modal_emulator), tmp_path / "never")
        wait_until(lambda: recorder.rpc_counts["FunctionMap"] > spawned_before, what="a first spawn")
        launcher.send_signal(signal.SIGINT)
        launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    run = Run.open(next((modal_project / ".mini" / "runs").iterdir()).name)
    assert run.record.launched is None, "interrupted before every call was spawned"
    assert 0 < rpcs["FunctionMap"] < 400 and rpcs["FunctionCallCancel"] == rpcs["FunctionMap"], (
        f"each spawned call is cancelled on Modal: {dict(rpcs)}"
    )
    assert run.counts()["cancelled"] == 400


def test_calls_spawned_before_the_launcher_was_killed_can_be_found_and_cancelled(
    modal_project, modal_emulator, tmp_path
):
    runs = modal_project / ".mini" / "runs"
    launcher = start_long_launch(modal_project, client_env(modal_emulator), tmp_path / "never")
    wait_until(lambda: list(runs.glob("*/calls/*/modal_call_id")), what="a first call to be spawned")
    launcher.kill()
    launcher.communicate(timeout=60)
    noted = len(list(runs.glob("*/calls/*/modal_call_id")))

    run = Run.open(next(runs.iterdir()).name)
    counts = run.counts()
    assert run.record.launched is None and counts["running"] == noted and 0 < noted < 400
    assert counts["failed"] == 400 - noted, "calls never spawned are failed, not pending forever"
    with modal_emulator.recorder.counting() as rpcs:
        assert run.cancel() == noted
    assert rpcs["FunctionCallCancel"] == noted, "each call spawned before the kill is stopped on Modal"


EXPERIMENT = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    def square(x):
        return x * x

    def main(app):
        first = list(app.map(square, range(3)))
        while not Path(os.environ["RELEASE"]).exists():  # lets the test look at the run in between
            time.sleep(0.02)
        return first + [app.run(square, 10)]
    """
)


def test_a_detached_experiment_on_modal_is_a_modal_run_showing_the_calls_it_makes(
    modal_project, modal_emulator, tmp_path
):
    (modal_project / "exp.py").write_text(EXPERIMENT)
    release = tmp_path / "release"
    env = client_env(modal_emulator, RELEASE=str(release))
    launched = mini("run", "exp.py", "--app", "modal", "--detach", cwd=modal_project, env=env)
    assert launched.returncode == 0, launched.stderr
    run_id = launched.stdout.strip()
    assert "on modal in the background" in launched.stderr

    def inner() -> dict:
        status = json.loads(mini("status", run_id, "--json", cwd=modal_project, env=env).stdout)
        assert status["backend"] == "modal" and status["kind"] == "experiment"
        return status["calls"][0]["inner_calls"] or {}

    wait_until(lambda: inner().get("active") == 0 and inner().get("done") == 3, timeout=120, what="map 1")
    listed = mini("ls", "--app", "modal", cwd=modal_project, env=env).stdout
    assert run_id in listed and "exp.py:main" in listed
    assert run_id not in mini("ls", "--app", "local", cwd=modal_project, env=env).stdout
    text = mini("status", run_id, cwd=modal_project, env=env).stdout
    assert "experiment of exp.py:main on modal" in text
    assert "main(app) made 3 calls (done 3 · running 0 · queued 0 · failed 0) in 1 map" in text

    release.touch()
    watched = mini("watch", run_id, cwd=modal_project, env=env)
    assert watched.returncode == 0, watched.stdout
    assert "main(app) made 4 calls (done 4 · running 0 · queued 0 · failed 0) in 2 maps" in watched.stdout
    assert json.loads(mini("results", run_id, "--json", cwd=modal_project, env=env).stdout) == [0, 1, 4, 100]
    logs = mini("logs", run_id, cwd=modal_project, env=env).stdout
    assert "its calls ran on Modal, in the app mini-exp" in logs and "bin/modal app logs APP_ID" in logs
