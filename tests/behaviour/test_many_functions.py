"""Many distinct functions through one apparatus while a map runs, as a notebook calling many helpers does."""

from __future__ import annotations

import asyncio

from tests.behaviour import calls

# More distinct functions than a worker process keeps loaded, so a worker must drop some while the map's
# function is still needed on it.
DISTINCT_FUNCTIONS = 20
MAP_INPUTS = 24


def test_distinct_functions_interleaved_with_a_running_map(app, tmp_path):
    async def scenario():
        # Occupy one worker, so that the map and every other function share the remaining one.
        blocker = asyncio.ensure_future(app.arun(calls.mark_and_block, 0, str(tmp_path)))
        while not (tmp_path / "started-0").exists():
            await asyncio.sleep(0.01)

        async def mapped() -> list[float]:
            # Calls of 30 ms each travel one per message, so the map's function is sent to the worker
            # between every two of the other functions.
            return [x async for x in app.amap(calls.sleep_for, [0.03] * MAP_INPUTS)]

        helpers = [app.arun(calls.offset_by(i), 100) for i in range(DISTINCT_FUNCTIONS)]
        results = await asyncio.gather(mapped(), *helpers)
        (tmp_path / "release").touch()
        assert await blocker == 0
        return results

    mapped, *helped = asyncio.run(scenario())
    assert mapped == [0.03] * MAP_INPUTS
    assert helped == [100 + i for i in range(DISTINCT_FUNCTIONS)]
