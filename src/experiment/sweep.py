"""A learning-rate by width sweep over `experiment.train.train`, run on whatever apparatus it is given.

Run it with `bin/mini run experiment.sweep` (add `--plot curves.png` for the loss curves); the same file
runs on a GPU with `--app modal --gpu A100`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from experiment.config import TrainConfig

if TYPE_CHECKING:
    from mini import Apparatus


def grid(
    learning_rates: Iterable[float] = (1e-3, 1e-2, 1e-1),
    widths: Iterable[int] = (16, 64),
    steps: int = TrainConfig.steps,
) -> list[TrainConfig]:
    """Every combination of learning rate and hidden width, each trained for `steps` steps.

    Example:
        >>> [(c.learning_rate, c.hidden) for c in grid([1e-2], [8, 32], steps=50)]
        [(0.01, 8), (0.01, 32)]
    """
    return [
        TrainConfig(learning_rate=lr, hidden=width, steps=steps)
        for lr, width in itertools.product(learning_rates, widths)
    ]


def sweep(app: Apparatus, configs: Iterable[TrainConfig]) -> list[dict[str, Any]]:
    """Train one model per config on `app`, in parallel as far as it allows; one result per config, in order.

    Example:
        >>> from mini import LocalApparatus
        >>> with LocalApparatus("spirals", workers=2) as app:
        ...     results = sweep(app, grid([1e-2], [8, 16], steps=100))
    """
    # Imported here rather than at the top: it pulls in JAX, which takes seconds to import, and the process
    # that only dispatches the sweep (or just plots its results) never needs it.
    from experiment.train import train

    return list(app.map(train, configs))


def main(app: Apparatus) -> list[dict[str, Any]]:
    """The default sweep (six configs); what `bin/mini run experiment.sweep` calls.

    Example:
        >>> from mini import LocalApparatus
        >>> with LocalApparatus("spirals", workers=2) as app:
        ...     results = main(app)
    """
    return sweep(app, grid())


def plot(results: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write the loss curve of every result in `results` to a PNG at `path`, one line per config.

    Example:
        >>> plot(results, "curves.png")
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plot() needs matplotlib, which is in the project's `local` dependency group: run `uv sync`"
        ) from error
    if not results:
        raise ValueError("plot() needs at least one result; the sweep returned none")
    # A bare Figure renders PNGs with Agg and leaves pyplot's global backend and figure list alone, so this
    # works without a display and does not disturb a notebook's own plotting.
    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.subplots()
    for result in results:
        ax.plot(result["losses"], label=_label(result), linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (binary cross-entropy)")
    ax.set_title(f"Two spirals on {results[0]['device']}")
    ax.legend(fontsize="small")
    fig.savefig(path, format="png", dpi=120)


def _label(result: dict[str, Any]) -> str:
    return f"lr={result['learning_rate']:g}, width={result['hidden']} (acc {result['accuracy']:.2f})"
