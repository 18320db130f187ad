"""run / map / starmap and their async twins: the same semantics on every backend."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.behaviour import calls


def test_run_returns_the_result_and_passes_keywords(app):
    assert app.run(calls.square, 7) == 49
    assert app.run(calls.add, 1, 2, bias=10) == 13


def test_arun(app):
    assert asyncio.run(app.arun(calls.add, 2, 3)) == 5


def test_map_zips_like_builtin_map_and_stops_at_the_shortest(app):
    assert list(app.map(calls.add, [1, 2, 3], [10, 20])) == [11, 22]
    assert list(app.map(calls.add, range(3), range(3), kwargs={"bias": 100})) == [100, 102, 104]


def test_map_of_nothing_is_empty(app):
    assert list(app.map(calls.square, [])) == []


def test_map_needs_an_iterable(app):
    with pytest.raises(TypeError, match="at least one iterable"):
        app.map(calls.square)


def test_starmap_spreads_tuples(app):
    assert list(app.starmap(calls.add, [(1, 2), (3, 4)], kwargs={"bias": 1})) == [4, 8]


def test_amap_and_astarmap(app):
    async def collect():
        mapped = [x async for x in app.amap(calls.square, range(5))]
        starred = [x async for x in app.astarmap(calls.add, [(1, 1), (2, 2)])]
        return mapped, starred

    assert asyncio.run(collect()) == ([0, 1, 4, 9, 16], [2, 4])


def test_results_come_in_input_order_by_default(app, tmp_path):
    assert list(app.map(calls.first_waits_for_second, [0, 1], [str(tmp_path)] * 2)) == [0, 1]


def test_unordered_map_yields_in_completion_order(app, tmp_path):
    results = app.map(calls.zero_blocks, [0, 1], [str(tmp_path)] * 2, order_outputs=False)
    assert next(results) == 1  # call 0 is still blocked, so only call 1 can have completed
    (tmp_path / "release").touch()
    assert list(results) == [0]


def test_inputs_are_consumed_lazily(app):
    pulled = itertools.count()

    def endless():
        for i in itertools.count():
            next(pulled)
            yield i

    results = app.map(calls.square, endless())
    first = [next(results) for _ in range(5)]
    results.close()
    assert first == [0, 1, 4, 9, 16]
    assert next(pulled) < 5000  # bounded in flight: an endless generator is not materialised


def test_many_trivial_calls(app, backend):
    # The subprocess test backend starts a Python process per call: a tenth of the calls shows the same.
    n = 300 if backend == "subprocess" else 3000
    assert sum(app.map(calls.square, range(n))) == sum(i * i for i in range(n))


def test_calls_from_inside_a_running_event_loop(app):
    async def notebook_cell():
        return app.run(calls.square, 6), list(app.map(calls.square, [1, 2]))

    assert asyncio.run(notebook_cell()) == (36, [1, 4])


def test_run_accepts_lambdas_and_closures(app):
    offset = 5
    assert app.run(lambda x: x + offset, 1) == 6
    assert list(app.map(lambda x: x * offset, [1, 2])) == [5, 10]


def test_registering_a_module_by_value_after_a_first_call_takes_effect(app, backend):
    import cloudpickle

    import tests.behaviour.by_reference as module

    if backend in ("isolated", "modal"):  # by reference: tests/ is not shipped there
        with pytest.raises(ModuleNotFoundError):
            app.run(module.double, 2)
    else:
        assert app.run(module.double, 2) == 4
    cloudpickle.register_pickle_by_value(module)
    try:
        assert app.run(module.double, 3) == 6  # by value: works where tests/ is not shipped
    finally:
        cloudpickle.unregister_pickle_by_value(module)


BIG = 100_000  # float64 elements: 800 kB, large enough to travel out of band


def test_a_large_array_argument_is_the_callees_own_copy(app):
    import numpy

    array = numpy.arange(BIG, dtype=numpy.float64)
    assert app.run(calls.zero_first_and_sum, array) == float(array.sum())
    assert array[0] == 0.0 and array[1] == 1.0
    array[0] = 7.0
    assert app.run(calls.zero_first_and_sum, array) == float(array.sum())
    assert array[0] == 7.0


def test_a_generator_reusing_one_array_sends_its_value_at_each_step(app):
    import numpy

    shared = numpy.zeros(BIG)

    def steps():
        for value in range(4):
            shared[:] = value
            yield shared

    assert list(app.map(calls.zero_first_and_sum, steps())) == [float(v * BIG) for v in range(4)]


def test_large_results_are_writable_and_independent(app):
    first, second = app.map(calls.ones, [BIG, BIG])
    first[0] = 5.0
    assert second[0] == 1.0 and first.flags.writeable


KINDS = {
    "thread": "local",
    "process": "local",
    "isolated": "local",
    "modal": "modal",
    "subprocess": "subprocess",
}


def test_a_call_knows_it_is_in_a_call_and_where(app, backend):
    from mini.runtime import current

    seen = list(app.map(calls.where_am_i, range(3)))
    assert {kind for _, kind in seen} == {KINDS[backend]}
    # Modal does not tell a container the input's position; its caller knows each input by its id.
    assert [index for index, _ in seen] == ([None] * 3 if backend == "modal" else [0, 1, 2])
    assert current() is None  # and outside any call there is none
