"""The result cache (`.w(cache=NAME)`), the same on every backend: a call found in the cache is not run again.

Executions are counted through files the calls leave (`calls.tally`), never through mini's own counts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from mini import Apparatus, LocalApparatus, clear_cache
from mini.progress import Counts, listening
from tests.behaviour import calls
from tests.runs.conftest import wait_until


@pytest.fixture
def cache_name() -> Iterator[str]:
    name = f"suite-{uuid.uuid4().hex[:12]}"
    yield name
    clear_cache(name)


@pytest.fixture
def cached(app: Apparatus, cache_name: str) -> Apparatus:
    return app.w(cache=cache_name)


def executions(folder: Path) -> Counter[int]:
    """How many times each input has run so far."""
    return Counter(int(path.name.split("-")[1]) for path in folder.glob("ran-*"))


def test_a_second_identical_map_executes_nothing(cached, tmp_path):
    folder = str(tmp_path)
    assert list(cached.map(calls.tally, range(6), [folder] * 6)) == [x * x for x in range(6)]
    assert executions(tmp_path) == Counter(range(6))

    seen: list[Counts] = []
    with listening(lambda _, counts: seen.append(counts)):
        assert list(cached.map(calls.tally, range(6), [folder] * 6)) == [x * x for x in range(6)]
    assert executions(tmp_path) == Counter(range(6)), "the second map ran calls again"
    last = seen[-1]
    assert (last.cached, last.submitted, last.done, last.finished) == (6, 0, 0, True)

    async def async_twins():
        mapped = [x async for x in cached.amap(calls.tally, range(3), [folder] * 3)]
        starred = [x async for x in cached.astarmap(calls.tally, [(4, folder), (5, folder)])]
        return mapped, starred, await cached.arun(calls.tally, 1, folder)

    assert cached.run(calls.tally, 2, folder) == 4
    assert list(cached.starmap(calls.tally, [(3, folder), (0, folder)])) == [9, 0]
    assert asyncio.run(async_twins()) == ([0, 1, 4], [16, 25], 1)
    assert executions(tmp_path) == Counter(range(6)), "run, starmap and the async twins hit the cache too"


@pytest.mark.parametrize("how", ["break", "an exception"])
def test_an_interrupted_map_reruns_only_the_rest(cached, tmp_path, how):
    folder = str(tmp_path)
    # Inputs 0-2 return at once; 3-6 block until released. Every backend here runs two calls at a time. With
    # a timeout, process mode sends calls one at a time (no quick result waits in a batch for a blocked one);
    # a timeout is not part of the key, so the rerun below finds these calls without one.
    results = cached.w(timeout=300).map(calls.tally_or_block, range(7), [folder] * 7, [3] * 7)
    received = []
    try:
        for value in results:
            received.append(value)
            if len(received) == 3:
                # Both slots are taken by blocked calls: nothing else can start before the map is left.
                wait_until(lambda: sum(executions(tmp_path)[x] for x in range(3, 7)) == 2, what="two calls")
                if how == "break":
                    break
                raise KeyError("the caller's own code failed")
    except KeyError:
        pass
    finally:
        results.close()
    assert received == [0, 1, 4]
    before = executions(tmp_path)

    (tmp_path / "release").touch()
    assert list(cached.map(calls.tally_or_block, range(7), [folder] * 7, [3] * 7)) == [
        x * x for x in range(7)
    ]
    rerun = executions(tmp_path) - before
    assert rerun == Counter(range(3, 7)), "the rerun should run exactly the calls that had not finished"


def test_adding_configurations_executes_only_the_new_ones(cached, tmp_path):
    folder = str(tmp_path)
    assert list(cached.map(calls.tally, range(0, 8, 2), [folder] * 4)) == [0, 4, 16, 36]
    # Hits and misses interleaved: the results still come in input order.
    assert list(cached.map(calls.tally, range(8), [folder] * 8)) == [x * x for x in range(8)]
    assert executions(tmp_path) == Counter(range(8)), "only the odd inputs were new"
    unordered = cached.map(calls.tally, range(10), [folder] * 10, order_outputs=False)
    assert sorted(unordered) == [x * x for x in range(10)]
    assert executions(tmp_path) == Counter(range(10))


def test_editing_the_function_body_re_executes(cached, tmp_path):
    folder = str(tmp_path)
    source = tmp_path / "edited_experiment.py"
    module_name = f"edited_experiment_{uuid.uuid4().hex[:8]}"

    def load(body: str):
        source.write_text(
            textwrap.dedent(f"""
            from pathlib import Path
            import uuid

            def step(x, folder):
                Path(folder, f"ran-{{x}}-{{uuid.uuid4().hex}}").touch()
                {body}
            """)
        )
        spec = importlib.util.spec_from_file_location(module_name, source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        cloudpickle.register_pickle_by_value(module)  # it ships by value, as a script's code does
        return module

    try:
        first = load("return x * 10")
        assert list(cached.map(first.step, range(3), [folder] * 3)) == [0, 10, 20]
        same = load("return x * 10")  # imported again, unchanged: the same function as far as the cache knows
        assert list(cached.map(same.step, range(3), [folder] * 3)) == [0, 10, 20]
        assert executions(tmp_path) == Counter(range(3))
        edited = load("return x * 10 + 1")
        assert list(cached.map(edited.step, range(3), [folder] * 3)) == [1, 11, 21]
        assert executions(tmp_path) == Counter({0: 2, 1: 2, 2: 2}), "an edited body must run again"
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[module_name])
        del sys.modules[module_name]


def test_a_failure_is_not_kept_and_re_executes(cached, tmp_path):
    folder = str(tmp_path)
    first = list(
        cached.map(calls.tally_failing_once, range(4), [folder] * 4, [2] * 4, return_exceptions=True)
    )
    assert first[:2] == [0, 1] and isinstance(first[2], ValueError) and first[3] == 9
    assert list(cached.map(calls.tally_failing_once, range(4), [folder] * 4, [2] * 4)) == [0, 1, 4, 9]
    assert executions(tmp_path) == Counter({0: 1, 1: 1, 2: 2, 3: 1}), "only the failed call ran again"

    with pytest.raises(ValueError, match="fails once"):
        cached.run(calls.tally_failing_once, 7, folder, 7)
    assert cached.run(calls.tally_failing_once, 7, folder, 7) == 49
    assert cached.run(calls.tally_failing_once, 7, folder, 7) == 49
    assert executions(tmp_path)[7] == 2


def test_a_batched_map_keeps_and_finds_each_input_on_its_own(cached, tmp_path):
    folder = str(tmp_path)
    batched = cached.w(max_batch_size=4, batch_wait_ms=50)
    assert list(batched.map(calls.tally_columns, range(0, 12, 2), [folder] * 6)) == [
        x * x for x in range(0, 12, 2)
    ]
    # The odd inputs are new: they run, batched among themselves; the even ones come from the cache, whatever
    # batch they ran in.
    assert list(batched.map(calls.tally_columns, range(12), [folder] * 12)) == [x * x for x in range(12)]
    assert executions(tmp_path) == Counter(range(12)), "a batched call ran again, or a batch was kept whole"
    # The batch size is not part of the key.
    resized = cached.w(max_batch_size=3, batch_wait_ms=10)
    assert list(resized.map(calls.tally_columns, range(12), [folder] * 12)) == [x * x for x in range(12)]
    assert executions(tmp_path) == Counter(range(12))


def test_a_sweep_started_on_one_backend_finishes_on_another(cached, backend, cache_name, tmp_path):
    folder = str(tmp_path)
    assert list(cached.map(calls.tally, range(4), [folder] * 4)) == [0, 1, 4, 9]
    other_mode = "process" if backend == "thread" else "thread"
    with LocalApparatus("elsewhere", workers=2, mode=other_mode).w(cache=cache_name, timeout=60) as other:
        assert list(other.map(calls.tally, range(8), [folder] * 8)) == [x * x for x in range(8)]
    assert executions(tmp_path) == Counter(range(8)), "the other backend reran calls the first had finished"
    # And back: everything is found, whichever backend computed it.
    assert list(cached.map(calls.tally, range(8), [folder] * 8)) == [x * x for x in range(8)]
    assert executions(tmp_path) == Counter(range(8))
