"""Workloads (a)–(d) of issue 8, each measured on every runner in the same run.

(a) one call on a warm pool, (b) a map of many trivial calls, (c) pure-Python calls that hold the GIL,
(d) a 100 MB NumPy array as argument and as result. (e) needs a real `__main__`: see `bench.closures`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import tasks
from bench.competitors import Runner, SerialRunner, open_all, open_isolated
from bench.harness import clock, interleaved, median


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; `QUICK` is a smoke run in seconds."""

    latency_rounds: int = 5
    calls_per_round: int = 40
    map_items: int = 10_000
    map_rounds: int = 3
    spin_calls: int = 40
    spin_seconds: float = 0.05
    spin_rounds: int = 3
    array_bytes: int = 100_000_000
    array_rounds: int = 5
    memory_inputs: int = 1_000_000
    memory_checkpoint: int = 10_000
    cache_rounds: int = 15


FULL = Sizes()
QUICK = Sizes(1, 5, 200, 1, 4, 0.005, 1, 1_000_000, 1, 20_000, 2_000, 1)


def run(sizes: Sizes) -> dict[str, Any]:
    """Measure (a)–(d) on every runner; figures per workload, keyed by runner name.

    >>> run(QUICK)["one_call"]["values"]["mini process"]
    310.5
    """
    runners = open_all()
    # Isolated workers move buffers as process-mode ones do, from another interpreter: (d) only.
    isolated = open_isolated()
    try:
        return {
            "one_call": one_call(runners, sizes),
            "map_trivial": map_trivial(runners, sizes),
            "gil_bound": gil_bound([SerialRunner(), *runners], sizes),
            "array_argument": array_argument([SerialRunner(), *runners, isolated], sizes),
            "array_result": array_result([SerialRunner(), *runners, isolated], sizes),
        }
    finally:
        for runner in [*runners, isolated]:
            runner.close()


def one_call(runners: list[Runner], sizes: Sizes) -> dict[str, Any]:
    def measure(runner: Runner) -> list[float]:
        return [clock(lambda: runner.run(tasks.noop, 1)) for _ in range(sizes.calls_per_round)]

    samples = _samples(runners, measure, sizes.latency_rounds)
    return _figures(
        "a) one call, warm pool",
        "µs",
        "lower",
        {name: median(s) * 1e6 for name, s in samples.items()},
        samples,
    )


def map_trivial(runners: list[Runner], sizes: Sizes) -> dict[str, Any]:
    items = range(sizes.map_items)

    def measure(runner: Runner) -> list[float]:
        results: list[Any] = []
        seconds = clock(lambda: results.extend(runner.map(tasks.noop, items)))
        _check(runner, results == list(items), "map returned wrong results")
        return [seconds]

    samples = _samples(runners, measure, sizes.map_rounds)
    return _figures(
        f"b) map of {sizes.map_items:,} trivial calls",
        "items/s",
        "higher",
        {name: sizes.map_items / median(s) for name, s in samples.items()},
        samples,
    )


def gil_bound(runners: list[Runner], sizes: Sizes) -> dict[str, Any]:
    iterations = _calibrate_spin(sizes.spin_seconds)
    work = [iterations] * sizes.spin_calls

    def measure(runner: Runner) -> list[float]:
        return [clock(lambda: runner.map(tasks.spin, work))]

    # Workers are warm already, and a warm-up round here would cost as much as the measurement.
    samples = _samples(runners, measure, sizes.spin_rounds, warmup=False)
    serial = median(samples["serial"])
    figures = _figures(
        f"c) {sizes.spin_calls} × {sizes.spin_seconds * 1000:g} ms pure-Python calls: speedup over serial",
        "×",
        "higher",
        {name: serial / median(s) for name, s in samples.items() if name != "serial"},
        samples,
    )
    figures["serial_seconds"] = serial
    # Calibrated on the least busy of five probes: a slower serial run means other processes took CPU,
    # and then no runner can reach a speedup of 2.
    figures["calibrated_seconds"] = sizes.spin_calls * sizes.spin_seconds
    return figures


def array_argument(runners: list[Runner], sizes: Sizes) -> dict[str, Any]:
    array = tasks.make_array(sizes.array_bytes // 8)

    def measure(runner: Runner) -> list[float]:
        total: list[float] = []
        seconds = clock(lambda: total.append(runner.run(tasks.array_sum, array)))
        _check(runner, total == [array.size], "the array's sum came back wrong")
        return [seconds]

    return _array_figures("argument, returns its sum", runners, measure, sizes)


def array_result(runners: list[Runner], sizes: Sizes) -> dict[str, Any]:
    items = sizes.array_bytes // 8

    def measure(runner: Runner) -> list[float]:
        result: list[np.ndarray] = []
        seconds = clock(lambda: result.append(runner.run(tasks.make_array, items)))
        _check(runner, result[0].shape == (items,) and bool(result[0][-1] == 1.0), "wrong array returned")
        return [seconds]

    return _array_figures("returned", runners, measure, sizes)


def _array_figures(
    what: str, runners: list[Runner], measure: Callable[[Runner], list[float]], sizes: Sizes
) -> dict[str, Any]:
    samples = _samples(runners, measure, sizes.array_rounds)
    seconds = {name: median(s) for name, s in samples.items()}
    figures = _figures(
        f"d) {sizes.array_bytes / 1e6:g} MB NumPy array {what}", "s", "lower", seconds, samples
    )
    # The serial row is the work itself (summing, allocating); the rest of a runner's time is transport.
    figures["bytes"] = sizes.array_bytes
    figures["gb_per_s"] = {name: sizes.array_bytes / 1e9 / s for name, s in seconds.items() if s > 0}
    return figures


def _calibrate_spin(seconds: float) -> int:
    probe = 200_000
    elapsed = min(clock(lambda: tasks.spin(probe)) for _ in range(5))
    return max(1, round(probe * seconds / elapsed))


def _samples(
    runners: list[Runner], measure: Callable[[Runner], list[float]], rounds: int, warmup: bool = True
) -> dict[str, list[float]]:
    return interleaved(runners, measure, rounds, name=lambda runner: runner.name, warmup=warmup)


def _figures(
    title: str, unit: str, better: str, values: dict[str, float], samples: dict[str, list[float]]
) -> dict[str, Any]:
    return {
        "title": title,
        "unit": unit,
        "better": better,
        "values": values,
        "samples": {name: len(s) for name, s in samples.items()},
    }


def _check(runner: Runner, ok: bool, problem: str) -> None:
    if not ok:
        raise AssertionError(f"{runner.name}: {problem}; its timings would be meaningless")
