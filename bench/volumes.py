"""Volumes: `upload` and `download` of a large file stream, so the caller's memory stays flat.

Each backend runs in a fresh `python -m bench.volumes BACKEND SIZE_MB` so that its peak RSS is its own. It
first moves a file of a quarter of the size up and back down (the baseline peak, with every library loaded
and warmed up), then the full file; a transfer that held the file in memory would grow the peak by about
three quarters of the file's size. For `modal`, the emulator runs in a process of its own
(`python -m tests.emulator`), so what it holds is not counted; its own peak is reported beside.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.emulator import emulator_process
from bench.harness import peak_rss_mb, process_peak_rss_mb

if TYPE_CHECKING:
    from bench.workloads import Sizes

FULL_MB = 1024
QUICK_MB = 32
FLAT_MB = (
    32.0  # growth allowed from the baseline file's peak to the large file's before it counts as unbounded
)
_REPOSITORY = Path(__file__).resolve().parents[1]
_BLOCK = 1 << 20


def run(sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Per backend: the file size, peak RSS after the baseline and the large transfers, growth, throughput.

    >>> run(FULL)["modal"]["growth_mb"]
    3.1
    """
    size_mb = QUICK_MB if sizes.map_items < 10_000 else FULL_MB
    results = {"local": _child("local", size_mb, os.environ)}
    with emulator_process() as (environment, pid):
        results["modal"] = _child("modal", size_mb, environment)
        results["modal"]["emulator_peak_mb"] = process_peak_rss_mb(pid)
    return results


def _child(backend: str, size_mb: int, environment: Any) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.volumes", backend, str(size_mb)]
    child = subprocess.run(
        command, cwd=_REPOSITORY, env=dict(environment), capture_output=True, text=True, timeout=1800
    )
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed ({child.returncode}):\n{child.stderr}")
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    figures["growth_mb"] = figures["peak_mb"] - figures["peak_after_baseline_mb"]
    figures["flat"] = figures["growth_mb"] <= FLAT_MB
    return figures


def _measure(backend: str, size_mb: int) -> dict[str, Any]:
    from mini import LocalApparatus, ModalApparatus

    app = LocalApparatus("bench-volumes") if backend == "local" else ModalApparatus("bench-volumes")
    volume = app.volume(f"bench-{uuid.uuid4().hex[:10]}")
    with tempfile.TemporaryDirectory(prefix="mini-bench-volumes-") as folder:
        baseline, big = Path(folder, "baseline.bin"), Path(folder, "big.bin")
        _write(baseline, max(1, size_mb // 4))
        _write(big, size_mb)
        _round_trip(volume, baseline, Path(folder, "baseline-copy.bin"))
        after_baseline = peak_rss_mb()
        up = _timed(lambda: volume.upload(big, "big.bin"))
        after_upload = peak_rss_mb()
        copy = Path(folder, "big-copy.bin")
        down = _timed(lambda: volume.download("big.bin", copy))
        intact = _digest(copy) == _digest(big)
        volume.remove("")
    if backend == "local":
        import shutil

        shutil.rmtree(volume.path, ignore_errors=True)
    app.close()
    return {
        "file_mb": size_mb,
        "baseline_mb": max(1, size_mb // 4),
        "peak_after_baseline_mb": after_baseline,
        "peak_after_upload_mb": after_upload,
        "peak_mb": peak_rss_mb(),
        "upload_mb_per_s": size_mb / up,
        "download_mb_per_s": size_mb / down,
        "intact": intact,
    }


def _round_trip(volume: Any, source: Path, copy: Path) -> None:
    volume.upload(source, source.name)
    volume.download(source.name, copy)


def _write(path: Path, size_mb: int) -> None:
    block = os.urandom(_BLOCK)
    with path.open("wb") as sink:
        for _ in range(size_mb):
            sink.write(block)


def _timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], int(sys.argv[2]))))
