"""Leaving early stops outstanding work: break, close, task cancellation."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest

from tests.behaviour import calls


def _started(folder: Path) -> list[Path]:
    return sorted(folder.glob("started-*"))


def test_a_failure_stops_feeding_new_inputs(app, tmp_path):
    pulled = itertools.count()

    def endless():
        for i in itertools.count():
            next(pulled)
            yield i

    with pytest.raises(ValueError):
        list(app.map(calls.fail_on, endless(), itertools.repeat(0)))
    assert next(pulled) < 5000


def test_breaking_out_stops_outstanding_calls(app, backend, tmp_path):
    folder = str(tmp_path)
    results = app.map(calls.quick_or_block, range(20), [folder] * 20, order_outputs=False)
    for value in results:
        assert value == 0
        break
    results.close()
    started = {p.name for p in _started(tmp_path)}
    assert len(started) <= 2  # one per worker at most were running; the rest never start
    if backend != "thread":  # threads cannot be stopped; worker processes and containers are killed
        assert _eventually(lambda: pids_alive(tmp_path) == [])
    (tmp_path / "release").touch()
    assert list(app.map(calls.square, [3, 4])) == [9, 16]  # still usable; stale calls were dropped
    final = {p.name for p in _started(tmp_path)}
    assert len(final) <= 2  # no call started after the loop was left, beyond the ones already running
    if backend != "thread":
        assert final == started
    # (a thread that had already picked its call up may write its marker just after `started` was read)


def test_cancelling_the_task_cancels_the_call(app, tmp_path):
    async def scenario():
        task = asyncio.ensure_future(app.arun(calls.mark_and_block, 0, str(tmp_path)))
        while not _started(tmp_path):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    (tmp_path / "release").touch()
    assert app.run(calls.square, 2) == 4


def test_closing_an_async_map_early(app):
    async def scenario():
        results = app.amap(calls.square, itertools.count())
        first = [await results.__anext__() for _ in range(3)]
        await results.aclose()
        return first

    assert asyncio.run(scenario()) == [0, 1, 4]


def pids_alive(folder: Path) -> list[int]:
    pids = [int(p.read_text()) for p in _started(folder)]
    return [pid for pid in pids if pid != os.getpid() and Path(f"/proc/{pid}").exists()]


def _eventually(condition, limit: float = 20.0) -> bool:
    """Poll `condition` until it holds or `limit` seconds pass (a remote stop is asynchronous)."""
    import time

    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
