"""Train one MLP on the two-spirals task and report what happened, in plain Python types."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

import mini
from experiment import model
from experiment.adam import AdamState, adam_init, adam_update
from experiment.config import TrainConfig
from experiment.data import training_set

if TYPE_CHECKING:
    from mini import Volume

REPORT_EVERY = 100  # steps between two reports of the step reached and its loss
_TRAIN_POINTS = 1024
_TEST_POINTS = 1024


def train(config: TrainConfig, runs: Volume | None = None) -> dict[str, Any]:
    """Fit an MLP with full-batch Adam and return its config, metrics and loss curve.

    The result holds only floats, ints and strings (and `losses`, a list of floats), so it pickles cheaply
    across any backend: the config's fields, `final_loss` (training loss at the last step), `accuracy` (on
    held-out points), `wall_time_s` (including JIT compilation), `device` (where JAX ran it, e.g. `"cpu"` or
    `"gpu (NVIDIA A100-SXM4-40GB)"`) and `losses` (the training loss at every step).

    While it trains, it reports the step reached and the training loss there every 100 steps
    (`mini.report(step=..., loss=...)`), which the caller sees live and a detached run keeps.

    With `runs`, a `mini.Volume`, the trained parameters (`params.npz`), the loss curve (`losses.json`) and
    the rest of the result (`summary.json`) are written to its folder `config.name`, where the call runs,
    and the result is that small summary: the loss curve stays on the volume.

    Example:
        >>> result = train(TrainConfig(learning_rate=1e-2, hidden=16, steps=100))
        >>> result["final_loss"] < result["losses"][0]
        True
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() takes an experiment.config.TrainConfig, got {type(config).__name__}")
    start = time.perf_counter()
    points, labels = training_set((_TRAIN_POINTS + _TEST_POINTS) // 2, seed=config.seed)
    x, y = jnp.asarray(points), jnp.asarray(labels)
    x_train, y_train = x[:_TRAIN_POINTS], y[:_TRAIN_POINTS]
    x_test, y_test = x[_TRAIN_POINTS:], y[_TRAIN_POINTS:]
    sizes = [2, *[config.hidden] * config.depth, 1]
    params = model.init_mlp(jax.random.key(config.seed), sizes)
    params, losses = _fit(params, x_train, y_train, config.learning_rate, config.steps)
    accuracy = float(model.accuracy(params, x_test, y_test))
    curve = np.asarray(losses).tolist()
    summary = {
        **dataclasses.asdict(config),
        "final_loss": curve[-1],
        "accuracy": accuracy,
        "wall_time_s": time.perf_counter() - start,
        "device": _device_name(next(iter(losses.devices()))),
    }
    if runs is None:
        return {**summary, "losses": curve}
    folder = runs.path / config.name
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        f"{name}{i}": np.asarray(layer[name]) for i, layer in enumerate(params) for name in ("w", "b")
    }
    np.savez(folder / "params.npz", **arrays)
    (folder / "losses.json").write_text(json.dumps(curve))
    (folder / "summary.json").write_text(json.dumps(summary))
    return summary


def _fit(
    params: model.Params, x: jax.Array, y: jax.Array, learning_rate: float, steps: int
) -> tuple[model.Params, jax.Array]:
    """Train for `steps` steps, `REPORT_EVERY` at a time, reporting the step reached and its loss after
    each stretch (`mini.report`: seen live by the caller, kept with a detached run, nothing elsewhere)."""
    state = adam_init(params)
    curves = []
    for start in range(0, steps, REPORT_EVERY):
        stretch = min(REPORT_EVERY, steps - start)
        params, state, losses = _stretch(params, state, x, y, learning_rate, stretch)
        curves.append(losses)
        mini.report(step=start + stretch, loss=float(losses[-1]))
    return params, jnp.concatenate(curves)


@functools.partial(jax.jit, static_argnames="steps")
def _stretch(
    params: model.Params, state: AdamState, x: jax.Array, y: jax.Array, learning_rate: float, steps: int
) -> tuple[model.Params, AdamState, jax.Array]:
    # One compiled loop over a stretch of steps: a Python loop would pay dispatch overhead on every step,
    # which dominates for a network this small. The learning rate is traced, so a sweep over it compiles
    # once (twice when the last stretch is shorter).
    def step(
        carry: tuple[model.Params, AdamState], _: None
    ) -> tuple[tuple[model.Params, AdamState], jax.Array]:
        params, state = carry
        loss, grads = jax.value_and_grad(model.loss)(params, x, y)
        params, state = adam_update(params, grads, state, learning_rate)
        return (params, state), loss

    (params, state), losses = jax.lax.scan(step, (params, state), length=steps)
    return params, state, losses


def _device_name(device: jax.Device) -> str:
    if device.device_kind.lower() == device.platform:
        return device.platform
    return f"{device.platform} ({device.device_kind})"
