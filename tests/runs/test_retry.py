"""`Run.retry()` and `mini retry RUN`: a settled run's failed, cancelled and lost calls launched again, on the
run's own backend and options, on every backend with detached runs (`DETACHED_BACKENDS`). `Run.retry()`'s
answer (the jobs launched) is shown in docs/concepts.md, which tests/test_docs.py runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from mini.cli import main as mini_main
from mini.runs import Run, RunError
from tests.runs import functions
from tests.runs.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]


def executions(folder: Path) -> Counter[str]:
    return Counter(path.name.split("-")[1] for path in folder.glob("ran-*"))


def test_retry_launches_again_exactly_the_failed_cancelled_and_lost_calls(app, tmp_path, capsys):
    kinds = ["ok", "raise", "exit", "block"]
    run = app.w(timeout=600).spawn_map(functions.until_fixed, kinds, [str(tmp_path)] * 4)
    wait_until(lambda: [job.status() for job in run][:3] == ["done", "failed", "failed"], what="three calls")
    wait_until(lambda: executions(tmp_path)["block"] == 1, what="the blocked call to start")
    assert run[3].cancel()
    assert [state.status for state in run.states()] == ["done", "failed", "failed", "cancelled"]

    (tmp_path / "fixed").touch()  # the bug is fixed
    assert mini_main(["retry", run.id]) == 0
    assert (
        f"run {run.id}: launched 3 call(s) again on {run.record.backend} (#1, #2, #3)"
        in capsys.readouterr().out
    )
    reopened = Run.open(run.id)
    assert reopened.results(timeout=120) == kinds, "each call's latest attempt"
    assert executions(tmp_path) == Counter({"ok": 1, "raise": 2, "exit": 2, "block": 2}), "ok ran once only"
    assert [job.attempt for job in reopened] == [1, 2, 2, 2]
    assert reopened.record.settings["timeout"] == 600, "the run's own options"
    earlier = json.loads((run.folder.call_dir(1) / "attempts" / "1" / "outcome.json").read_text())
    assert earlier["ok"] is False and "not fixed yet" in earlier["error"]

    assert mini_main(["status", run.id]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(number for number, line in enumerate(lines) if "STATUS" in line)
    assert lines[header].replace("┃", " ").split()[:3] == ["#", "STATUS", "ATTEMPT"]
    rows = [line.replace("│", " ").split()[:3] for line in lines[header + 2 : header + 6]]
    assert rows == [["0", "done", "1"], ["1", "done", "2"], ["2", "done", "2"], ["3", "done", "2"]]
    assert mini_main(["results", run.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == kinds


def test_a_run_with_nothing_to_retry_says_so(app, capsys):
    run = app.spawn_map(functions.square, range(3))
    assert run.results(timeout=120) == [0, 1, 4]
    assert run.retry() == []
    assert mini_main(["retry", run.id]) == 0
    assert "nothing to retry" in capsys.readouterr().out
    assert [job.attempt for job in Run.open(run.id)] == [1, 1, 1]


def test_a_run_still_under_way_is_not_retried(app, tmp_path):
    release = tmp_path / "release"
    run = app.spawn_map(functions.wait_for_file, [str(release)])
    with pytest.raises(RunError, match=r"still has 1 call\(s\) pending or running"):
        run.retry()
    release.touch()
    assert run.results(timeout=120)[0]["pid"] > 0


EXPERIMENT = textwrap.dedent(
    """
    import os
    from pathlib import Path

    def square(x):
        return x * x

    def main(app):
        if not Path(os.environ["FIXED"]).exists():
            raise RuntimeError("not fixed yet")
        return list(app.w(cache="experiment").map(square, range(3)))
    """
)


def test_mini_retry_runs_a_failed_detached_experiment_again(project, tmp_path):
    (project / "exp.py").write_text(EXPERIMENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FIXED": str(tmp_path / "fixed")}

    def mini(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "mini"), *args]
        return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120, env=env)

    run_id = mini("run", "exp.py", "--detach").stdout.strip()
    assert mini("watch", run_id).returncode == 1
    (tmp_path / "fixed").touch()
    retried = mini("retry", run_id)
    assert retried.returncode == 0 and "launched 1 call(s) again" in retried.stdout, retried.stderr
    assert mini("watch", run_id).returncode == 0
    results = mini("results", run_id, "--json")
    assert json.loads(results.stdout) == [0, 1, 4]
    status = mini("status", run_id).stdout.splitlines()
    header = next(number for number, line in enumerate(status) if "STATUS" in line)
    assert status[header + 2].replace("│", " ").split()[:3] == ["0", "done", "2"]
    assert "main(app) made 3 calls (done 3 · running 0 · queued 0 · failed 0) in 1 map" in status[-1]

    again = mini("run", "exp.py", "--detach").stdout.strip()  # a new run: its calls are all in the cache
    assert mini("watch", again).returncode == 0
    assert json.loads(mini("results", again, "--json").stdout) == [0, 1, 4]
    expected = "main(app) made 3 calls (done 0 · running 0 · queued 0 · failed 0 · cached 3) in 1 map"
    assert expected in mini("status", again).stdout
