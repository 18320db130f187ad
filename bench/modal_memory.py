"""Memory on Modal: the caller's peak RSS over a `map` of a generator of 100,000 small inputs, mini beside
raw modal's `f.map`, each against the emulator in a process of its own.

Each subject runs in a fresh `python -m bench.modal_memory SUBJECT INPUTS WARMUP` so that its peak RSS is
its own. A first map of WARMUP inputs loads and warms everything; its peak is the baseline, and the growth
is what the large map adds to it. mini keeps a bounded number of inputs in flight, so its peak should not
move; raw modal reads its input iterator ahead without bound. Raw modal's map is stopped once it has read
its whole generator (its read-ahead can only shrink from there), which keeps the section's time in bounds;
mini's runs to its last result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.emulator import emulator_process
from bench.harness import peak_rss_mb

if TYPE_CHECKING:
    from bench.workloads import Sizes

INPUTS = 100_000
WARMUP = 5_000
QUICK = (2_000, 500)
FLAT_MB = 10.0  # growth allowed over the baseline before the map counts as unbounded
_REPOSITORY = Path(__file__).resolve().parents[1]


def run(sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Per subject: peak RSS after the warm-up map and after the large one, growth, whether it stayed flat.

    >>> run(FULL)["mini"]["growth_mb"]
    0.8
    """
    inputs, warmup = QUICK if sizes.map_items < 10_000 else (INPUTS, WARMUP)
    with emulator_process() as (environment, _):
        return {subject: _child(subject, inputs, warmup, environment) for subject in ("mini", "raw modal")}


def _child(subject: str, inputs: int, warmup: int, environment: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.modal_memory", subject, str(inputs), str(warmup)]
    child = subprocess.run(
        command, cwd=_REPOSITORY, env=environment, capture_output=True, text=True, timeout=1800
    )
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed ({child.returncode}):\n{child.stderr}")
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    figures["growth_mb"] = figures["peak_mb"] - figures["peak_after_warmup_mb"]
    figures["flat"] = figures["growth_mb"] <= FLAT_MB
    return figures


class _Counted:
    """A generator of inputs that counts what was read from it."""

    def __init__(self, inputs: int) -> None:
        self.read = 0
        self.total = inputs

    def __iter__(self) -> Iterator[int]:
        for value in range(-self.total, 0):
            self.read += 1
            yield value


def _measure(subject: str, inputs: int, warmup: int) -> dict[str, Any]:
    import modal

    from bench.modal_overhead import _trivial
    from mini import ModalApparatus

    app = ModalApparatus("bench-memory", max_containers=2)
    raw_app = modal.App("bench-memory-raw")
    raw = raw_app.function(serialized=True, image=modal.Image.debian_slim(), max_containers=2)(_trivial())
    with raw_app.run():

        def mapped(items: Any) -> Iterator[int]:
            return app.map(abs, items) if subject == "mini" else raw.map(items)

        for _ in mapped(iter(_Counted(warmup))):
            pass
        after_warmup = peak_rss_mb()
        source = _Counted(inputs)
        results = 0
        started = time.perf_counter()
        for _ in mapped(iter(source)):
            results += 1
            if subject != "mini" and source.read == source.total:
                break  # raw modal has read everything ahead: its peak is behind it
        seconds = time.perf_counter() - started
    app.close()
    return {
        "inputs": inputs,
        "warmup": warmup,
        "results_read": results,
        "peak_after_warmup_mb": after_warmup,
        "peak_mb": peak_rss_mb(),
        "items_per_s": results / seconds,
    }


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
