"""Issue 16's result-cache figures, on a process-mode `LocalApparatus` (2 workers), in a project of its own:

- a fully cached map of `map_items` trivial calls (items/s), each round with the cache's index read from disk
  again, as a rerun of a sweep in a new process finds it;
- what a cache miss adds to a process-mode map of as many trivial calls: the map with a new, empty cache
  against the same map without a cache, interleaved round by round (a ratio of medians).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import tasks
from bench.harness import clock, interleaved, median
from bench.workloads import Sizes


def run(sizes: Sizes) -> dict[str, Any]:
    """Measure both figures.

    >>> run(QUICK)["miss_ratio"]
    1.04
    """
    from mini import LocalApparatus
    from mini.cache.folders import cache_folder
    from mini.cache.store import forget_store

    items = range(sizes.map_items)
    expected = list(items)
    with _own_project(), LocalApparatus("bench-cache", workers=2, mode="process") as app:
        list(app.map(tasks.noop, items))  # warm workers
        hit = app.w(cache="bench-hits")
        assert list(hit.map(tasks.noop, items)) == expected

        def measure(subject: str) -> list[float]:
            if subject == "plain":
                return [clock(lambda: _check(app.map(tasks.noop, items), expected))]
            if subject == "miss":
                fresh = app.w(cache=f"bench-miss-{uuid.uuid4().hex[:8]}")
                return [clock(lambda: _check(fresh.map(tasks.noop, items), expected))]
            forget_store(cache_folder("bench-hits"))  # the index is read from the segments again
            return [clock(lambda: _check(hit.map(tasks.noop, items), expected))]

        samples = interleaved(["plain", "miss", "hit"], measure, sizes.cache_rounds, name=str)
    plain, miss, cached = (median(samples[name]) for name in ("plain", "miss", "hit"))
    return {
        "items": sizes.map_items,
        "rounds": sizes.cache_rounds,
        "load": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "plain_items_per_s": sizes.map_items / plain,
        "miss_items_per_s": sizes.map_items / miss,
        "cached_items_per_s": sizes.map_items / cached,
        "miss_ratio": miss / plain,
        "samples": samples,
    }


def _check(results: Iterator[Any], expected: list[Any]) -> None:
    if list(results) != expected:
        raise AssertionError("a map returned wrong results")


@contextlib.contextmanager
def _own_project() -> Iterator[None]:
    """A temporary project for the caches (`MINI_PROJECT`): the benchmark leaves nothing in the checkout."""
    before = os.environ.get("MINI_PROJECT")
    with tempfile.TemporaryDirectory(prefix="mini-bench-cache-") as folder:
        (Path(folder) / "pyproject.toml").write_text('[project]\nname = "bench-cache"\nversion = "0"\n')
        os.environ["MINI_PROJECT"] = folder
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("MINI_PROJECT", None)
            else:
                os.environ["MINI_PROJECT"] = before
