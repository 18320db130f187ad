"""Curves of what a run's calls reported: `mini plot RUN --metric loss` (matplotlib, never a window).

>>> plot_metric(Run.open("20261123-1701"), "loss", "curves.png")
PosixPath('curves.png')
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mini.errors import MiniError
from mini.runs.errors import RunError

if TYPE_CHECKING:
    from mini.reports import Report
    from mini.runs.handles import Run

_LABEL = 40  # characters of a call's arguments in the legend


def plot_metric(run: Run[Any], metric: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Draw one line per call of `run` that reported `metric` (for a detached experiment, per call its
    main(app) made), against its `step` metric where each of
    those reports has one, else against the report's number (1, 2, ...); write a PNG to `path` (default:
    `RUN-METRIC.png` in the working directory) and return where it went.

    A metric no call reported is a `RunError` naming the metrics that were; no matplotlib, a `MiniError`.
    """
    curves = []
    reported: set[str] = set()
    for call, history in zip(run.record.calls, run.histories(), strict=True):
        several_maps = len({map_number for map_number, _ in history.series if map_number is not None}) > 1
        for (map_number, index), reports in history.series.items():
            for report in reports:
                reported.update(report.metrics)
            points = curve(reports, metric)
            if not points[0]:
                continue
            if map_number is None:
                label = f"#{index} {_cut(call.args)}".rstrip()
            else:  # a call that a detached experiment's main(app) made
                label = f"map {map_number} #{index}" if several_maps else f"#{index}"
            curves.append((label, points))
    if not curves:
        known = ", ".join(sorted(reported)) if reported else "nothing yet"
        raise RunError(f"no call of run {run.id} reported a number as {metric!r}; they reported: {known}.")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MiniError(
            "mini plot draws with matplotlib, which is not installed in this environment: add it to the "
            "project (mini's own checkout has it in the `local` dependency group: `uv sync --group local`)."
        ) from None
    target = Path(path) if path is not None else Path(f"{run.id}-{_file_part(metric)}.png")
    # A bare Figure renders with Agg and leaves pyplot's global state alone: no display needed, none opened.
    figure = Figure(figsize=(7, 4.5), layout="tight")
    axes = figure.subplots()
    by_step = all(steps for _, (_, _, steps) in curves)
    for label, (xs, ys, _) in curves:
        axes.plot(xs, ys, label=label, linewidth=1.4, marker="." if len(xs) < 30 else None)
    axes.set_xlabel("step" if by_step else "report")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} · run {run.id} ({run.record.function})", fontsize="medium")
    if len(curves) <= 20:
        axes.legend(fontsize="small")
    figure.savefig(target, format="png", dpi=120)
    return target


def curve(reports: Sequence[Report], metric: str) -> tuple[list[float], list[float], bool]:
    """The points of `metric` in one call's reports: (xs, ys, whether xs are its `step` metric). Reports
    without `metric`, or with a value that is not a number, are left out."""
    chosen = [r for r in reports if isinstance(r.metrics.get(metric), (int, float))]
    by_step = bool(chosen) and all(isinstance(r.metrics.get("step"), (int, float)) for r in chosen)
    if by_step:
        xs = [float(r.metrics["step"]) for r in chosen]
    else:
        numbers = {id(r): n for n, r in enumerate(reports, 1)}
        xs = [float(numbers[id(r)]) for r in chosen]
    return xs, [float(r.metrics[metric]) for r in chosen], by_step


def _cut(text: str) -> str:
    return text if len(text) <= _LABEL else text[: _LABEL - 1] + "…"


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "metric"
