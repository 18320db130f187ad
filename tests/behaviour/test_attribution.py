"""Every failure belongs to exactly its own input, in ordered and unordered maps, and none is lost.

A platform failure (a timeout, a dead worker or container) used to be attributed to the oldest input
still outstanding on Modal. When a worker dies here, an older input is outstanding (it waits for the
caller to have seen the failure), so a wrong attribution shows up as an error naming another call, a
result seen twice, or a map that never ends. A timed-out input cannot have an older one outstanding
without that one running past the timeout too, so there the inputs only finish out of order around it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mini import CallTimeoutError, WorkerCrashed
from tests.behaviour import calls
from tests.conftest import SURVIVES_CRASHES

# Completion order 0, 2 (its worker dies), 3, 4, 5, 1: input 1 waits for 5, and 5 for the caller to have
# seen input 2's failure, so input 1 is outstanding from start to end.
AROUND_A_CRASH = [[], ["done-5"], [], ["done-0"], ["done-3"], ["done-4", "seen-2"]]
# Two workers: one is held by input 2 until its timeout, the other runs 0, 1, 3, 4, 5 meanwhile.
AROUND_A_TIMEOUT: list[list[str]] = [[]] * 6
ORDERED_WAITS = [[], ["done-5"], [], ["done-0"], ["done-3"], ["done-4"]]
ERRORS = {"stuck": CallTimeoutError, "crash": WorkerCrashed}


def _inputs(folder: Path, waits: list[list[str]], fate: str) -> list[tuple]:
    return [(x, str(folder), waits[x], fate if x == 2 else "") for x in range(6)]


@pytest.fixture(params=[0.0, 0.3], ids=["fast-consumer", "slow-consumer"])
def consumer_delay(request: pytest.FixtureRequest) -> float:
    return request.param


def _unordered(app, tmp_path: Path, fate: str, delay: float) -> dict[int, object]:
    seen: dict[int, object] = {}
    waits = AROUND_A_CRASH if fate == "crash" else AROUND_A_TIMEOUT
    results = app.starmap(
        calls.finish_after,
        _inputs(tmp_path, waits, fate),
        order_outputs=False,
        return_exceptions=True,
    )
    for value in results:
        if isinstance(value, BaseException):
            key = next(x for x in range(6) if f"call #{x} " in str(value))
            (tmp_path / f"seen-{key}").touch()
        else:
            key = value
        assert key not in seen, f"input {key} settled twice: {seen[key]!r}, then {value!r}"
        seen[key] = value
        time.sleep(delay)  # a caller that takes its time over each result, so outputs pile up meanwhile
    return seen


@pytest.mark.timeout(180)
def test_an_unordered_map_attributes_a_timeout_to_its_own_input(app, tmp_path, consumer_delay):
    seen = _unordered(app.w(timeout=2), tmp_path, "stuck", consumer_delay)
    assert sorted(seen) == list(range(6))
    assert isinstance(seen[2], CallTimeoutError), seen
    assert all(seen[x] == x for x in (0, 1, 3, 4, 5)), seen


@pytest.mark.timeout(180)
def test_an_ordered_map_attributes_a_timeout_to_its_own_input(app, tmp_path):
    inputs = _inputs(tmp_path, AROUND_A_TIMEOUT, "stuck")
    out = list(app.w(timeout=2).starmap(calls.finish_after, inputs, return_exceptions=True))
    assert [out[x] for x in (0, 1, 3, 4, 5)] == [0, 1, 3, 4, 5]
    assert isinstance(out[2], CallTimeoutError) and "call #2 " in str(out[2])


@pytest.mark.timeout(180)
def test_an_unordered_map_raises_the_timeout_of_the_input_that_ran_over(app, tmp_path):
    results = app.w(timeout=2).starmap(
        calls.finish_after, _inputs(tmp_path, AROUND_A_TIMEOUT, "stuck"), order_outputs=False
    )
    got = []
    with pytest.raises(CallTimeoutError, match="call #2 "):
        for value in results:
            got.append(value)
    assert sorted(got) == [0, 1, 3, 4, 5]


class TestDeadWorkers:
    """A call that kills its process fails alone, as `WorkerCrashed`, wherever the caller survives it."""

    @pytest.fixture(params=SURVIVES_CRASHES)
    def backend(self, request: pytest.FixtureRequest) -> str:
        return request.param

    @pytest.mark.timeout(180)
    def test_an_unordered_map_attributes_a_crash_to_its_own_input(self, app, tmp_path, consumer_delay):
        seen = _unordered(app, tmp_path, "crash", consumer_delay)
        assert sorted(seen) == list(range(6))
        assert isinstance(seen[2], WorkerCrashed), seen
        assert all(seen[x] == x for x in (0, 1, 3, 4, 5)), seen

    @pytest.mark.timeout(180)
    def test_an_ordered_map_attributes_a_crash_to_its_own_input(self, app, tmp_path):
        inputs = _inputs(tmp_path, ORDERED_WAITS, "crash")
        out = list(app.starmap(calls.finish_after, inputs, return_exceptions=True))
        assert [out[x] for x in (0, 1, 3, 4, 5)] == [0, 1, 3, 4, 5]
        assert isinstance(out[2], WorkerCrashed) and "call #2 " in str(out[2])

    @pytest.mark.timeout(180)
    def test_an_unordered_map_raises_the_crash_of_the_input_whose_worker_died(self, app, tmp_path):
        results = app.starmap(
            calls.finish_after, _inputs(tmp_path, AROUND_A_CRASH, "crash"), order_outputs=False
        )
        got = []
        with pytest.raises(WorkerCrashed, match="call #2 "):
            for value in results:
                got.append(value)
        assert 1 not in got and 5 not in got  # they wait for the caller to see #2's failure, which it raised

    def test_a_crashed_call_is_worker_crashed_for_run_too(self, app):
        with pytest.raises(WorkerCrashed):
            app.run(calls.crash_on, 1, 1)
        assert app.run(calls.square, 3) == 9  # the apparatus goes on


_THREAD_CRASH = """
import sys
from mini import LocalApparatus
from tests.behaviour import calls
from tests.conftest import SURVIVES_CRASHES

with LocalApparatus("t", workers=2) as app:
    print(list(app.map(calls.crash_on, range(3), [1] * 3)))
print("after the map")
"""


def test_in_thread_mode_a_crashing_call_ends_the_caller_too():
    # Documented: threads share the caller's process, so there is no worker to lose but the caller.
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _THREAD_CRASH], cwd=root, capture_output=True, text=True)
    assert done.returncode == 13, done
    assert "after the map" not in done.stdout
