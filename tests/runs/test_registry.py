"""The run registry: atomic writes, ids that never collide, and clear answers for unknown runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mini.runs import RunError, RunNotFound
from mini.runs.process_identity import identify, is_alive
from mini.runs.registry import (
    CallRecord,
    RunFolder,
    RunRecord,
    list_runs,
    new_run_folder,
    note_launch,
    open_run,
)
from mini.runs.state import CallState, run_status

ROOT = Path(__file__).resolve().parents[2]


def record_for(folder: RunFolder, function: str) -> RunRecord:
    return RunRecord(
        id=folder.id,
        kind="spawn",
        backend="local",
        apparatus="test",
        function=function,
        monitor="mini.runs.local_launcher:LocalMonitor",
        created=0.0,
        project_root="/nowhere",
        image_hash=None,
        git_commit=None,
        git_dirty=None,
        calls=(CallRecord(0, "x=1", "123"),),
    )


def test_an_interrupted_write_leaves_the_previous_record_readable(project, monkeypatch):
    folder = new_run_folder(project)
    folder.write_record(record_for(folder, "first"))

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folder.write_record(record_for(folder, "second"))
    monkeypatch.undo()
    assert folder.record().function == "first"
    assert sorted(p.name for p in folder.path.iterdir()) == ["calls", "run.json"], "no partial file is left"


def test_a_writer_killed_mid_write_leaves_the_previous_record_readable(project):
    folder = new_run_folder(project)
    folder.write_record(record_for(folder, "first"))
    # The writer dies between writing the new content and renaming it into place, as in a power cut.
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from mini.project import atomic_write
        os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        atomic_write(Path({str(folder.path / "run.json")!r}), b'{{"half": ')
    """)
    writer = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert writer.returncode == -9
    assert folder.record().function == "first"
    assert [f.id for f in list_runs(project)] == [folder.id]


def test_concurrent_launches_in_the_same_second_get_their_own_folders(project, monkeypatch):
    tokens = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr("mini.runs.registry.secrets.token_hex", lambda n: next(tokens))
    first = new_run_folder(project, now=0)
    second = new_run_folder(project, now=0)
    assert first.id.endswith("-aaaa") and second.id.endswith("-bbbb")


def test_concurrent_launching_processes_never_clobber_each_other(project):
    code = textwrap.dedent("""
        from mini import LocalApparatus
        from tests.runs import functions
        print(LocalApparatus("race").spawn_map(functions.square, range(3)).id)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launchers = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=project, stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(4)
    ]
    ids = [launcher.communicate(timeout=120)[0].strip() for launcher in launchers]
    assert len(set(ids)) == 4
    for run_id in ids:
        from mini.runs import Run

        assert Run.open(run_id).results(timeout=60) == [0, 1, 4]


def test_an_unknown_id_lists_the_known_ones(project):
    folders = [new_run_folder(project) for _ in range(2)]
    for folder in folders:
        folder.write_record(record_for(folder, "f"))
    with pytest.raises(RunNotFound) as caught:
        open_run("no-such-run", project)
    assert all(folder.id in str(caught.value) for folder in folders)
    with pytest.raises(RunNotFound, match="matches several runs"):
        open_run(folders[0].id[:8], project)


def test_a_unique_prefix_names_a_run(project, monkeypatch):
    tokens = iter(["aaaa", "bbbb"])
    monkeypatch.setattr("mini.runs.registry.secrets.token_hex", lambda n: next(tokens))
    first, second = new_run_folder(project, now=0), new_run_folder(project, now=0)
    for folder in (first, second):
        folder.write_record(record_for(folder, folder.id))
    assert open_run(first.id[:-3], project).id == first.id
    assert open_run(second.id[:-2], project).id == second.id


def test_no_runs_yet_says_where_it_looked(project):
    with pytest.raises(RunNotFound, match=r"no runs are recorded in .*\.mini/runs yet"):
        open_run("anything", project)


def test_a_run_from_another_checkout_names_that_checkout(project, tmp_path):
    other = tmp_path / "other-checkout"
    other.mkdir()
    folder = new_run_folder(other)
    folder.write_record(record_for(folder, "f"))
    note_launch(folder.id, other)
    with pytest.raises(RunNotFound, match=f"launched from another checkout, {other}"):
        open_run(folder.id, project)


def test_a_deleted_entry_says_it_was_deleted(project):
    folder = new_run_folder(project)
    folder.write_record(record_for(folder, "f"))
    note_launch(folder.id, project)
    shutil.rmtree(folder.path)
    with pytest.raises(RunNotFound, match="has been deleted"):
        open_run(folder.id, project)


def test_a_folder_without_a_record_is_reported_damaged(project):
    folder = new_run_folder(project)
    assert list_runs(project) == [], "a run whose launch has not written its record is not listed"
    with pytest.raises(RunNotFound, match="no record in it"):
        open_run(folder.id, project).record()


def test_a_record_edited_into_nonsense_gets_a_clear_error(project):
    folder = new_run_folder(project)
    (folder.path / "run.json").write_text('{"format": 1, "id": ')
    with pytest.raises(RunError, match="cannot be read"):
        folder.record()


def test_a_reused_pid_is_not_mistaken_for_the_recorded_process():
    me = identify(os.getpid())
    assert is_alive(me)
    assert not is_alive({**me, "start": me["start"] + 1}), "same pid, later start time: a different process"
    assert not is_alive({**me, "boot": "another-boot"}), "a record from before a reboot"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = identify(finished.pid)
    finished.wait()
    assert not is_alive(identity)


def test_a_run_is_active_while_any_call_is_and_then_reports_its_worst_outcome():
    assert run_status([CallState("done"), CallState("pending")]) == "running"
    assert run_status([CallState("pending"), CallState("pending")]) == "pending"
    assert run_status([CallState("done"), CallState("cancelled"), CallState("failed")]) == "failed"
    assert run_status([CallState("done"), CallState("cancelled")]) == "cancelled"
    assert run_status([CallState("done")]) == "done"


def test_outcomes_stored_in_one_batch_read_back_as_those_stored_one_by_one(project):
    from mini.serialization import Outcome, dump_result, encode_error

    folder = new_run_folder(project)
    folder.store_outcome(0, Outcome(0, True, dump_result(1)))
    summaries = folder.store_outcomes(
        [Outcome(1, True, dump_result(2)), Outcome(2, False, encode_error(ValueError("boom")))]
    )
    assert [summary["ok"] for summary in summaries] == [True, False]
    assert summaries[1]["error"] == "ValueError: boom"
    for index in range(3):
        assert folder.outcome_summary(index) is not None
        assert folder.load_outcome(index).ok == (index != 2)
    assert folder.outcome_summary(1)["error"] is None
    assert folder.outcome_summary(2)["error"] == summaries[1]["error"]
