"""Execution models: what dynamic batching and input concurrency buy, in process mode and on the emulator.

Batching pays off when each invocation has a cost of its own whatever its size (a kernel launch, a forward
pass): the function here sleeps `INVOCATION_MS` per invocation and does nothing per input, so the map of
tiny inputs measures how well mini amortises that fixed cost (`max_batch_size=100`) against the same map
unbatched. The same maps of a function that costs nothing
are measured beside it (no target: there batching only saves mini's and Modal's per-call overhead).
Concurrency: `CONCURRENT_CALLS` calls that each wait `WAIT_MS` on one worker (one process, or
one container) with `concurrent_inputs=50`; the target is five times the ideal (four rounds of 50).
Both run in this process against an emulator serving in a thread (containers are its subprocesses).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bench.workloads import Sizes

INVOCATION_MS = 2.0
BATCH = 100
CONCURRENT_CALLS = 200
CONCURRENCY = 50
WAIT_MS = 50.0


def run(sizes: Sizes) -> dict[str, Any]:
    """Per backend: unbatched and batched seconds and their ratio; the concurrent map's seconds.

    >>> run(FULL)["process"]["batching"]["speedup"]
    48.1
    """
    import cloudpickle
    from tests.emulator.server import run_emulator

    from mini import LocalApparatus, ModalApparatus

    # The emulator's containers cannot import this folder: the functions travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    inputs = sizes.map_items
    results: dict[str, Any] = {}
    with (
        LocalApparatus("bench-models", workers=2, mode="process") as app,
        LocalApparatus("bench-models-one", workers=1, mode="process") as one_worker,
    ):
        results["process"] = _measure(app, one_worker, inputs)
    with run_emulator() as emulator, emulator.client_environment():
        app = ModalApparatus("bench-models", max_containers=2)
        try:
            results["modal"] = _measure(app, app.w(max_containers=1), inputs)
        finally:
            app.close()
    return results


def _measure(app: Any, one_worker: Any, inputs: int) -> dict[str, Any]:
    batched = app.w(max_batch_size=BATCH, batch_wait_ms=20)
    # Warm: workers or containers up, both functions loaded, before anything is timed.
    list(app.map(one_invocation, range(4)))
    list(batched.map(batch_invocation, range(4)))
    unbatched_s = _timed(lambda: _check(list(app.map(one_invocation, range(inputs))), inputs))
    batched_s = _timed(lambda: _check(list(batched.map(batch_invocation, range(inputs))), inputs))
    list(app.map(trivial, range(4)))
    list(batched.map(trivial_batch, range(4)))
    trivial_s = _timed(lambda: _check(list(app.map(trivial, range(inputs))), inputs))
    trivial_batched_s = _timed(lambda: _check(list(batched.map(trivial_batch, range(inputs))), inputs))
    single = one_worker.w(concurrent_inputs=CONCURRENCY)
    list(single.map(wait, range(CONCURRENCY)))
    concurrent_s = _timed(lambda: _check(list(single.map(wait, range(CONCURRENT_CALLS))), CONCURRENT_CALLS))
    ideal_s = CONCURRENT_CALLS / CONCURRENCY * WAIT_MS / 1000
    return {
        "batching": {
            "inputs": inputs,
            "invocation_ms": INVOCATION_MS,
            "max_batch_size": BATCH,
            "unbatched_s": unbatched_s,
            "batched_s": batched_s,
            "speedup": unbatched_s / batched_s,
            "trivial_unbatched_s": trivial_s,
            "trivial_batched_s": trivial_batched_s,
            "trivial_speedup": trivial_s / trivial_batched_s,
        },
        "concurrency": {
            "calls": CONCURRENT_CALLS,
            "wait_ms": WAIT_MS,
            "concurrent_inputs": CONCURRENCY,
            "seconds": concurrent_s,
            "ideal_s": ideal_s,
            "times_ideal": concurrent_s / ideal_s,
        },
    }


def one_invocation(x: int) -> int:
    time.sleep(INVOCATION_MS / 1000)
    return x


def batch_invocation(xs: list[int]) -> list[int]:
    time.sleep(INVOCATION_MS / 1000)
    return xs


def trivial(x: int) -> int:
    return x


def trivial_batch(xs: list[int]) -> list[int]:
    return xs


def wait(x: int) -> int:
    time.sleep(WAIT_MS / 1000)
    return x


def _check(results: list[int], expected: int) -> None:
    if sorted(results) != list(range(expected)):
        raise AssertionError(f"the map answered {len(results)} of {expected} inputs, or not with themselves")


def _timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started
