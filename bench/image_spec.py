"""Benchmark: deriving the image spec, cold (runs `uv export`) and cached (no uv), on a 1,000-file `src/`.

The project is this repository's own `pyproject.toml` and `uv.lock` (about 70 exported pins) with a
generated source tree. Run it alone with `uv run python bench/image_spec.py`; `./go bench` calls `run()`.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mini.image import derive_image_spec

_REPOSITORY = Path(__file__).resolve().parents[1]
_FILES = 1_000
_COLD_RUNS = 5
_CACHED_RUNS = 30


def run() -> dict:
    """Time cold and cached derivations; return the figures in milliseconds.

    figures = run()   # {"files": 1000, "cold_ms_median": ..., "cached_ms_median": ..., ...}
    """
    with tempfile.TemporaryDirectory(prefix="mini-bench-image-") as folder:
        root = _make_project(Path(folder))
        cold = []
        for _ in range(_COLD_RUNS):
            shutil.rmtree(root / ".mini", ignore_errors=True)
            cold.append(_timed(root, expect_cached=False))
        cached = [_timed(root, expect_cached=True) for _ in range(_CACHED_RUNS)]
        spec = derive_image_spec(root)
    return {
        "files": len(spec.source_files),
        "pins": len(spec.requirements),
        "cold_ms_median": round(statistics.median(cold), 1),
        "cold_ms_min": round(min(cold), 1),
        "cached_ms_median": round(statistics.median(cached), 1),
        "cached_ms_min": round(min(cached), 1),
    }


def _make_project(folder: Path) -> Path:
    root = folder / "project"
    root.mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(_REPOSITORY / name, root / name)
    # The repository's build-backend settings ship `mini` and `experiment`: split the files between them.
    for index in range(_FILES):
        package = "mini" if index % 2 == 0 else "experiment"
        module = root / "src" / package / f"part_{index // 50:02d}" / f"module_{index:04d}.py"
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(f'"""Generated module {index}."""\n\n' + f"VALUE_{index} = {index}\n" * 60)
    return root


def _timed(root: Path, *, expect_cached: bool) -> float:
    start = time.perf_counter()
    spec = derive_image_spec(root)
    elapsed = (time.perf_counter() - start) * 1000
    assert spec.cached is expect_cached
    return elapsed


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:18} {value}")
