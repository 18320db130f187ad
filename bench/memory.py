"""Memory: peak RSS of a `map` over a generator of many small inputs stays flat (bounded in flight).

Each mode runs in a fresh `python -m bench.memory MODE INPUTS CHECKPOINT` so that its peak RSS is its own.
The peak after the first CHECKPOINT results is the baseline; a map that holds every input would grow by
hundreds of MB over 1,000,000 inputs. In process mode this is the parent's RSS, where inputs queue; the
workers' peak is reported beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import children_peak_rss_mb, peak_rss_mb, rss_mb

if TYPE_CHECKING:
    from bench.workloads import Sizes

FLAT_MB = 10.0  # growth allowed between the checkpoint and the end before the map counts as unbounded
_REPOSITORY = Path(__file__).resolve().parents[1]


def run(sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Per mode: peak RSS at the checkpoint and at the end, growth, and whether it stayed flat.

    >>> run(FULL)["process"]["growth_mb"]
    0.4
    """
    return {
        mode: _child(mode, sizes.memory_inputs, sizes.memory_checkpoint) for mode in ("thread", "process")
    }


def _child(mode: str, inputs: int, checkpoint: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.memory", mode, str(inputs), str(checkpoint)]
    child = subprocess.run(command, cwd=_REPOSITORY, capture_output=True, text=True, timeout=600)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed ({child.returncode}):\n{child.stderr}")
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    figures["growth_mb"] = figures["peak_mb"] - figures["peak_at_checkpoint_mb"]
    figures["flat"] = figures["growth_mb"] <= FLAT_MB
    return figures


def _measure(mode: str, inputs: int, checkpoint: int) -> dict[str, Any]:
    from bench import tasks
    from mini import LocalApparatus

    at_checkpoint = 0.0
    results = 0
    started = time.perf_counter()
    with LocalApparatus("bench-memory", workers=2, mode=mode) as app:
        for results, _ in enumerate(app.map(tasks.noop, (i for i in range(inputs))), 1):
            if results == checkpoint:
                at_checkpoint = peak_rss_mb()
        workers = children_peak_rss_mb()
    return {
        "inputs": results,
        "checkpoint": checkpoint,
        "peak_at_checkpoint_mb": at_checkpoint,
        "peak_mb": peak_rss_mb(),
        "rss_end_mb": rss_mb(),
        "items_per_s": results / (time.perf_counter() - started),
        "worker_peak_mb": max(workers, default=0.0),
    }


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
