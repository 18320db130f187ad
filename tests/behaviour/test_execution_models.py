"""Modal's execution models, portable: async functions, generators, dynamic batching, input concurrency
and per-worker setup, with the same semantics on every backend."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from mini import CallTimeoutError
from mini.errors import BatchError, OptionError, RemoteTraceback
from tests.behaviour import calls

# ----- async functions ---------------------------------------------------------------------------------


def test_an_async_function_is_awaited_where_it_runs(app):
    assert app.run(calls.async_add, 1, 2) == 3
    assert list(app.map(calls.async_add, range(4), [10] * 4)) == [10, 11, 12, 13]
    assert asyncio.run(app.arun(calls.async_add, 5, 5)) == 10


def test_an_async_function_raises_its_own_error_with_the_remote_traceback(app):
    with pytest.raises(ValueError, match="negative input -1") as caught:
        app.run(calls.async_add, -1, 0)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "async_add" in caught.value.__cause__.text


# ----- generators --------------------------------------------------------------------------------------


def test_stream_yields_a_generators_values_as_they_are_produced(app, tmp_path):
    (tmp_path / "proceed-0").touch()
    seen = []
    for value in app.stream(calls.count_up, str(tmp_path)):
        # The generator waits for this file before each value: each one reached us before the next existed.
        assert not (tmp_path / f"yielded-{value + 1}").exists()
        seen.append(value)
        (tmp_path / f"proceed-{value + 1}").touch()
        if value == 4:
            break
    assert seen == [0, 1, 2, 3, 4]


def test_leaving_a_stream_early_stops_the_generator(app, tmp_path):
    (tmp_path / "proceed-0").touch()
    stream = app.stream(calls.count_up, str(tmp_path))
    assert next(stream) == 0
    stream.close()
    for i in range(1, 20):  # the generator may now go on, if it was not stopped
        (tmp_path / f"proceed-{i}").touch()
    pid = int((tmp_path / "yielded-0").read_text())
    _eventually(lambda: pid == os.getpid() or not Path(f"/proc/{pid}").exists() or _stopped_in(tmp_path))
    assert not (tmp_path / "yielded-3").exists(), "the generator went on after its consumer left"


def _stopped_in(folder: Path) -> bool:
    # Thread mode: the generator lives in this process; it stops at its next yield, a value or two later.
    return (folder / "yielded-1").exists()


def test_astream_and_async_generators(app):
    async def collect():
        return [value async for value in app.astream(calls.async_count, 4)]

    assert asyncio.run(collect()) == [0, 10, 20, 30]
    assert list(app.stream(calls.async_count, 3)) == [0, 10, 20]


def test_a_generator_that_raises_ends_its_stream_with_its_error(app):
    got = []
    with pytest.raises(RuntimeError, match="broke after 2"):
        for value in app.stream(calls.broken_generator, 2):
            got.append(value)
    assert got == [0, 1]


def test_run_and_map_refuse_a_generator_function_and_point_at_stream(app):
    with pytest.raises(TypeError, match="app.stream"):
        app.run(calls.count_up, "x")
    with pytest.raises(TypeError, match="app.stream"):
        list(app.map(calls.count_up, ["x"]))
    with pytest.raises(TypeError, match="not a generator function"):
        list(app.stream(calls.square, 2))


# ----- dynamic batching --------------------------------------------------------------------------------


def test_a_batched_map_gives_each_input_its_own_result_in_order(app):
    batched = app.w(max_batch_size=4, batch_wait_ms=50)
    out = list(batched.map(calls.sum_columns, range(10), range(10)))
    assert [total for total, _ in out] == [2 * x for x in range(10)]
    assert all(1 <= size <= 4 for _, size in out)
    assert max(size for _, size in out) > 1, "inputs were batched"


def test_concurrent_single_calls_are_batched_together(app):
    batched = app.w(max_batch_size=8, batch_wait_ms=200)

    async def many():
        return await asyncio.gather(*(batched.arun(calls.sum_columns, x, 1) for x in range(8)))

    out = asyncio.run(many())
    assert [total for total, _ in out] == [x + 1 for x in range(8)]  # each caller its own result
    assert max(size for _, size in out) > 1


def test_a_wrong_length_batch_result_fails_every_input_of_the_batch(app):
    out = list(
        app.w(max_batch_size=3, batch_wait_ms=100).map(calls.short_by_one, range(3), return_exceptions=True)
    )
    assert all(isinstance(error, BatchError) for error in out), out
    assert "returned 2 results" in str(out[0])


def test_a_batch_that_raises_fails_every_input_of_that_batch_and_says_so(app):
    # Ordered inputs, batches of at most 4: 7 is in the second batch of full ones; the others succeed.
    out = list(
        app.w(max_batch_size=4, batch_wait_ms=200).map(
            calls.refuses_batches_with_a_seven, range(12), return_exceptions=True
        )
    )
    failed = [x for x, outcome in enumerate(out) if isinstance(outcome, ValueError)]
    assert 7 in failed and 1 <= len(failed) <= 4, out
    assert all(outcome == x for x, outcome in enumerate(out) if x not in failed), out
    assert "every input of the batch fails with it" in " ".join(out[7].__notes__)


def test_batching_takes_positional_inputs_only(app):
    with pytest.raises(OptionError, match="positional"):
        list(app.w(max_batch_size=2).map(calls.sum_columns, [1], kwargs={"ys": 2}))


# ----- input concurrency -------------------------------------------------------------------------------


def test_each_worker_runs_n_inputs_at_once(app, backend, tmp_path):
    n = 3
    total = 2 * n
    folders, meets, totals = [str(tmp_path)] * total, [n] * total, [total] * total
    out = list(app.w(concurrent_inputs=n).map(calls.concurrent_meeting, range(total), folders, meets, totals))
    peak = max(running for _, running in out)
    # Thread mode has one process: its workers' threads all run in it.
    allowed = n * 2 if backend == "thread" else n
    assert n <= peak <= allowed, out


def test_a_timeout_under_concurrency_fails_only_its_input(app):
    concurrent = app.w(concurrent_inputs=2, timeout=2)
    out = list(concurrent.map(calls.block_or_return, range(4), return_exceptions=True))
    assert isinstance(out[0], CallTimeoutError)
    assert out[1:] == [1, 2, 3]


# ----- per-worker setup ---------------------------------------------------------------------------------


def test_a_module_level_loader_runs_once_per_worker(app, backend):
    out = list(app.map(calls.loads_once, range(12)))
    # Thread mode's workers share one process (and its cache): two first calls at once may both load.
    once = 2 if backend == "thread" else 1
    for pid in {pid for pid, _ in out}:
        assert max(loads for p, loads in out if p == pid) <= once, out


def _eventually(condition, limit: float = 30.0) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
