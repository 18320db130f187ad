"""Timing and memory primitives: interleaved rounds with a discarded warm-up, medians, peak RSS.

The machine is shared and noisy, so runners are measured round-robin (every runner once per round) and
only figures taken in the same run are compared.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def clock(action: Callable[[], object]) -> float:
    """Seconds one call of `action` takes.

    >>> clock(lambda: sum(range(1000)))
    2.1e-05
    """
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def interleaved(
    subjects: Sequence[T],
    measure: Callable[[T], list[float]],
    rounds: int,
    name: Callable[[T], str],
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Samples per subject: a warm-up round (discarded) unless `warmup=False`, then `rounds` rounds.

    >>> interleaved(runners, lambda r: [clock(lambda: r.run(noop))], rounds=5, name=lambda r: r.name)
    {'mini thread': [0.00041, ...], ...}
    """
    samples: dict[str, list[float]] = {name(subject): [] for subject in subjects}
    first = 0 if warmup else 1
    for round_number in range(first, rounds + 1):
        for subject in subjects:
            figures = measure(subject)
            if round_number:
                samples[name(subject)].extend(figures)
    return samples


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (VmHWM), in MB."""
    return _status_field("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident set size now (VmRSS), in MB."""
    return _status_field("VmRSS") or peak_rss_mb()


def process_peak_rss_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of process `pid`, in MB; None where /proc is missing."""
    return _status_field("VmHWM", str(pid))


def children_peak_rss_mb() -> list[float]:
    """Peak RSS (VmHWM) of each live child process, in MB; empty where /proc is missing."""
    pids: list[str] = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += children.read_text().split()
    peaks = [_status_field("VmHWM", pid) for pid in pids]
    return [peak for peak in peaks if peak is not None]


def _status_field(field: str, pid: str = "self") -> float | None:
    # Linux only; ru_maxrss is the portable fallback for our own peak.
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
