"""Live reports from inside calls: `mini.report(step=120, loss=0.31)`, and what the caller gets of them.

In the callee:

    def train(cfg):
        for step in range(steps):
            ...
            mini.report(step=step, loss=float(loss))     # never blocks, never fails the call

On the caller's side every report of a map arrives, in the order each call sent it, as a `Report` (with
`app.w(on_report=fn)`, in the live display, and kept with detached runs); where each call ran arrives as a
`Placement` when the call starts.
"""

from __future__ import annotations

import numbers
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from mini.errors import ArgumentError
from mini.runtime import current

# Short strings only: a report is a line of a live display, not a place for data (use a volume).
MAX_STRING = 200


@dataclass(frozen=True)
class Placement:
    """Where a call runs: when it started, on which host or container, with how many CPUs and which GPUs."""

    started: float
    host: str
    cpus: int
    gpus: tuple[str, ...] = ()

    def describe(self) -> str:
        """`"2 × H100 · 8 CPUs · modal-ta-123"`, for a display."""
        gpus = f"{len(self.gpus)} × {self.gpus[0]} · " if self.gpus else ""
        return f"{gpus}{self.cpus} CPUs · {self.host}"


@dataclass(frozen=True)
class Report:
    """One `mini.report(...)` of a running call, as the caller receives it.

    `index`: the call's position in the map; `metrics`: what it reported; `time`: when (the callee's clock,
    seconds since the epoch); `attempt`: 1 unless the call is being retried; `placement`: where it runs,
    once known; `coalesced`: how many earlier reports this one replaces (0 unless reports came faster than
    the transport could carry them, in which case the latest values won).
    """

    index: int
    metrics: dict[str, float | int | str]
    time: float
    attempt: int = 1
    placement: Placement | None = None
    coalesced: int = field(default=0, compare=False)


def report(**metrics: Any) -> None:
    """Report metrics of the running call to its caller: numbers and short strings, such as
    `step=120, loss=0.31`. Outside a call it does nothing.

    >>> mini.report(step=step, loss=float(loss), phase="warmup")

    A value that is neither a number nor a string is a `TypeError` naming its key. Reporting never
    blocks the call and never fails it: when the way to the caller is slow, reports are coalesced.
    """
    checked = {key: _checked(key, value) for key, value in metrics.items()}
    context = current()
    if context is None or context.events is None or not checked:
        return
    context.events.emit(context.index, "report", (time.time(), checked, 0))


def _checked(key: str, value: Any) -> float | int | str:
    kind = type(value)
    if kind is float or kind is int:  # the common case, before the slower checks of numbers' ABCs
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else value[: MAX_STRING - 1] + "…"
    raise ArgumentError(
        f"mini.report({key}=...) got a {type(value).__name__}: report numbers or short strings "
        "(convert arrays with float(x); write larger data to a volume)."
    )


_placement: Placement | None = None


def placement_here() -> Placement:
    """Where this process runs, now (host and hardware are looked up once per process)."""
    global _placement
    if _placement is None:
        _placement = Placement(0.0, _host(), _cpu_count(), _gpu_names())
    return Placement(time.time(), _placement.host, _placement.cpus, _placement.gpus)


def _host() -> str:
    task = os.environ.get("MODAL_TASK_ID")  # set in Modal containers
    return f"modal {task}" if task else socket.gethostname()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _gpu_names() -> tuple[str, ...]:
    # nvidia-smi lists the GPUs this container was given; the driver's /proc listing is the fallback.
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            done = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None and done.returncode == 0:
            return _visible(tuple(line.strip() for line in done.stdout.splitlines() if line.strip()))
    root = "/proc/driver/nvidia/gpus"
    names = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return ()
    for entry in entries:
        try:
            with open(os.path.join(root, entry, "information")) as info:
                for line in info:
                    if line.startswith("Model:"):
                        names.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return _visible(tuple(names))


def _visible(names: tuple[str, ...]) -> tuple[str, ...]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to this process (when it lists indices)."""
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return names
    indices = [int(part) for part in chosen.split(",") if part.strip().isdigit()]
    if len(indices) != len([part for part in chosen.split(",") if part.strip()]):
        return names  # GPU UUIDs: not worth resolving for a display
    return tuple(names[i] for i in indices if i < len(names))


def describe(report: Report | None, placement: Placement | None) -> str:
    """A running call in one line: its latest metrics, where it runs and for how long."""
    parts = []
    if report is not None:
        parts.append(" ".join(f"{key}={_short(value)}" for key, value in report.metrics.items()))
    if placement is not None:
        parts.append(placement.describe())
        parts.append(_elapsed(time.time() - placement.started))
    return " · ".join(parts)


def _elapsed(seconds: float) -> str:
    minutes, seconds = divmod(max(int(seconds), 0), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
