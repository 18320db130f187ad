"""A learning-rate by width sweep over `experiment.train.train`, run on whatever apparatus it is given.

Run it with `bin/mini run experiment.sweep` (add `--plot curves.png` for the loss curves); the same file
runs on a GPU with `--app modal --gpu A100`. Each training call writes its parameters and loss curve to the
volume `spirals` and returns a small summary; one more call on the same apparatus (`summarise`) reads the
volume, picks the best configuration and gathers the curves the plot draws. `main` keeps each training
call's summary in the result cache `spirals-v1`, so running it again (or after an interruption) trains only
what is missing.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from experiment.config import TrainConfig

if TYPE_CHECKING:
    from mini import Apparatus, Volume

VOLUME = "spirals"


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


def sweep(app: Apparatus, configs: Iterable[TrainConfig], runs: Volume | None = None) -> list[dict[str, Any]]:
    """Train one model per config on `app`, in parallel as far as it allows; one result per config, in order.
    With `runs`, each call writes its parameters and loss curve there and returns only its summary.

    Example:
        >>> from mini import LocalApparatus
        >>> with LocalApparatus("spirals", workers=2) as app:
        ...     results = sweep(app, grid([1e-2], [8, 16], steps=100))
    """
    # Imported here rather than at the top: it pulls in JAX, which takes seconds to import, and the process
    # that only dispatches the sweep (or just plots its results) never needs it.
    from experiment.train import train

    return list(app.map(train, configs, kwargs={"runs": runs}))


def summarise(runs: Volume, names: Sequence[str]) -> list[dict[str, Any]]:
    """Run as a call: read the runs `names` from the volume, mark the best (highest held-out accuracy, then
    lowest final loss) with `best="yes"`, and return each summary with its loss curve for the plot.

    Example:
        >>> rows = app.run(summarise, app.volume("spirals"), [config.name for config in configs])
    """
    rows = []
    for name in names:
        folder = runs.path / name
        summary = json.loads((folder / "summary.json").read_text())
        rows.append({**summary, "best": "", "losses": json.loads((folder / "losses.json").read_text())})
    if rows:
        max(rows, key=lambda row: (row["accuracy"], -row["final_loss"]))["best"] = "yes"
    return rows


# The functions `train` calls (model, data, optimiser) are not part of a cached call's key: when they change
# what training returns, change this name (or `bin/mini cache clear spirals-v1`).
CACHE = "spirals-v1"


def main(app: Apparatus) -> list[dict[str, Any]]:
    """The default sweep (six configs) into the volume `spirals`, then `summarise` as one more call; what
    `bin/mini run experiment.sweep` calls. Configs trained before, with this code and into this volume, come
    from the result cache `CACHE` instead of being trained again.

    Example:
        >>> from mini import LocalApparatus
        >>> with LocalApparatus("spirals", workers=2) as app:
        ...     results = main(app)
    """
    runs = app.volume(VOLUME)
    configs = grid()
    sweep(app.w(cache=CACHE), configs, runs)
    return app.run(summarise, runs, [config.name for config in configs])


def plot(results: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write the loss curve of every result in `results` to a PNG at `path`, one line per config (the
    best, if `summarise` marked one, drawn thicker). Drawn where it is called: matplotlib is in the `local`
    group, never shipped to a call.

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
        ax.plot(result["losses"], label=_label(result), linewidth=2.8 if result.get("best") else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (binary cross-entropy)")
    ax.set_title(f"Two spirals on {results[0]['device']}")
    ax.legend(fontsize="small")
    fig.savefig(path, format="png", dpi=120)


def _label(result: dict[str, Any]) -> str:
    best = ", best" if result.get("best") else ""
    return f"lr={result['learning_rate']:g}, width={result['hidden']} (acc {result['accuracy']:.2f}{best})"
