"""What only worker processes can do: survive crashes, kill overrunning calls, never outlive the parent."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mini import LocalApparatus, WorkerCrashed
from mini.local.processes import FUNCTIONS_PER_WORKER
from tests.behaviour import calls


@pytest.fixture
def app():
    with LocalApparatus("processes", workers=2, mode="process") as apparatus:
        yield apparatus


def test_a_crashed_worker_fails_only_its_call_and_is_replaced(app):
    out = list(app.map(calls.crash_on, range(6), [3] * 6, return_exceptions=True))
    assert [x for i, x in enumerate(out) if i != 3] == [0, 1, 2, 4, 5]
    assert isinstance(out[3], WorkerCrashed) and "exit code 13" in str(out[3])
    assert list(app.map(calls.square, range(4))) == [0, 1, 4, 9]


def test_a_crash_inside_a_batch_of_tiny_calls_fails_only_the_culprit(app):
    list(app.map(calls.square, range(2000)))  # teaches the pool that calls are tiny, so it batches
    out = list(app.map(calls.crash_on, range(2000), [1500] * 2000, return_exceptions=True))
    crashed = [i for i, x in enumerate(out) if isinstance(x, WorkerCrashed)]
    assert crashed == [1500]
    assert all(out[i] == i for i in range(2000) if i != 1500)


def test_a_timed_out_call_is_killed(app, tmp_path):
    with pytest.raises(TimeoutError):
        app.w(timeout=0.3).run(calls.mark_and_block, 1, str(tmp_path))
    pid = int((tmp_path / "started-1").read_text())
    assert not Path(f"/proc/{pid}").exists()


def test_workers_do_not_outlive_a_killed_parent(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from mini import LocalApparatus
        from tests.behaviour import calls
        app = LocalApparatus("orphans", workers=2, mode="process")
        list(app.map(calls.mark_and_block, [1, 2], [{str(tmp_path)!r}] * 2))
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        while len(list(tmp_path.glob("started-*"))) < 2:
            assert parent.poll() is None, "the script ended early"
            os.sched_yield()
        pids = [int(p.read_text()) for p in tmp_path.glob("started-*")]
        parent.kill()
        parent.wait()
        for pid in pids:
            _wait_gone(pid)
    finally:
        parent.kill()
        (tmp_path / "release").touch()


def _wait_gone(pid: int) -> None:
    # The kernel delivers the parent-death signal asynchronously; poll /proc (bounded), never sleep blindly.
    for _ in range(2_000_000):
        status = Path(f"/proc/{pid}/status")
        try:
            if "State:\tZ" in status.read_text():
                return
        except FileNotFoundError:
            return
        os.sched_yield()
    raise AssertionError(f"worker {pid} outlived its parent")


def test_ctrl_c_stops_the_calls_of_a_running_map(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from mini import LocalApparatus
        from tests.behaviour import calls
        with LocalApparatus("interrupted", workers=2, mode="process") as app:
            try:
                list(app.map(calls.mark_and_block, [1, 2, 3, 4], [{str(tmp_path)!r}] * 4))
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                raise
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        while len(list(tmp_path.glob("started-*"))) < 2:
            assert parent.poll() is None, "the script ended early"
            os.sched_yield()
        pids = [int(p.read_text()) for p in tmp_path.glob("started-*")]
        parent.send_signal(signal.SIGINT)
        out, _ = parent.communicate(timeout=60)
        assert "interrupted" in out and parent.returncode != 0
        for pid in pids:  # the map's workers were stopped before KeyboardInterrupt reached the caller
            assert not Path(f"/proc/{pid}").exists()
        assert sorted(p.name for p in tmp_path.glob("started-*")) == ["started-1", "started-2"]
    finally:
        parent.kill()
        (tmp_path / "release").touch()


def test_many_functions_while_a_map_runs_on_one_worker():
    # The reproduction: one worker, a map over 40 inputs while 20 distinct functions run.
    async def scenario():
        async def mapped():
            return [x async for x in app.amap(calls.sleep_for, [0.01] * 40)]

        helpers = (app.arun(calls.offset_by(i), 1) for i in range(FUNCTIONS_PER_WORKER + 4))
        return await asyncio.gather(mapped(), *helpers)

    with LocalApparatus("many-functions", workers=1, mode="process") as app:
        mapped, *helped = asyncio.run(scenario())
    assert mapped == [0.01] * 40
    assert helped == [1 + i for i in range(FUNCTIONS_PER_WORKER + 4)]


def test_a_function_dropped_by_a_worker_is_sent_again_when_needed():
    with LocalApparatus("resend", workers=1, mode="process") as app:
        results = app.map(calls.square, range(20_000))
        assert next(results) == 0
        # Enough other functions that the worker must drop the map's, which has calls still to come.
        helped = [app.run(calls.offset_by(i), 1) for i in range(FUNCTIONS_PER_WORKER + 1)]
        assert list(results) == [i * i for i in range(1, 20_000)]
    assert helped == [1 + i for i in range(FUNCTIONS_PER_WORKER + 1)]


def test_a_worker_still_starting_when_its_map_fails_leaves_no_stray_traceback(tmp_path):
    # The interpreter the pool starts is a wrapper: the first worker starts once the second is waiting,
    # and the second waits until the pool has closed, which the first worker's failing call brings about.
    wrapper = tmp_path / "python"
    wrapper.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            if mkdir {tmp_path}/first 2>/dev/null; then
                while [ ! -e {tmp_path}/second ]; do sleep 0.01; done
                exec {sys.executable} "$@"
            fi
            echo $$ > {tmp_path}/.second && mv {tmp_path}/.second {tmp_path}/second
            while [ ! -e {tmp_path}/go ]; do sleep 0.01; done
            exec {sys.executable} "$@"
            """
        )
    )
    wrapper.chmod(0o755)
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from mini import LocalApparatus
        from tests.behaviour import calls
        from tests.test_local_processes import _wait_gone
        folder = Path({str(tmp_path)!r})
        sys.executable = str(folder / "python")
        try:
            with LocalApparatus("stray", workers=2, mode="process") as app:
                # Both calls fail and the first to finish ends the map: the second worker never runs one.
                list(app.map(calls.fail_on, range(2), range(2), order_outputs=False))
        except ValueError as error:
            print(error, file=sys.stderr)
        (folder / "go").touch()
        _wait_gone(int((folder / "second").read_text()))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr in ("bad input 0\n", "bad input 1\n")


def test_a_worker_whose_pool_has_gone_exits_quietly():
    ours, theirs = socket.socketpair()
    ours.close()  # the pool is gone before the worker can say it is ready
    with theirs:
        done = subprocess.run(
            [sys.executable, "-m", "mini.local._worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("mode", ["process", "isolated"])
def test_under_concurrency_only_the_input_that_killed_its_worker_fails(mode):
    # The inputs that ran beside the culprit are run again, each alone: none of them is blamed.
    with LocalApparatus("crash-concurrent", workers=2, mode=mode) as app:
        out = list(app.w(concurrent_inputs=3).map(calls.crash_on, range(8), [1] * 8, return_exceptions=True))
    assert isinstance(out[1], WorkerCrashed) and "call #1 " in str(out[1])
    assert [out[x] for x in (0, 2, 3, 4, 5, 6, 7)] == [0, 2, 3, 4, 5, 6, 7]


def test_a_line_a_call_leaves_unfinished_is_shown_when_it_returns(app, capsys):
    assert list(app.map(calls.print_unfinished, range(3))) == [0, 1, 2]
    out, err = capsys.readouterr()
    for x in range(3):
        assert f"[{x}] unfinished {x} out" in out.splitlines()
        assert f"[{x}] unfinished {x} err" in err.splitlines()
