"""A multilayer perceptron for binary classification, as pure functions of a parameter pytree."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Params = list[dict[str, jax.Array]]


def init_mlp(key: jax.Array, sizes: list[int]) -> Params:
    """Random weights for an MLP with layer widths `sizes` (input first, output last).

    Example:
        >>> params = init_mlp(jax.random.key(0), [2, 16, 1])
        >>> [layer["w"].shape for layer in params]
        [(2, 16), (16, 1)]
    """
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for layer_key, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        # Scaled so that tanh units start in their linear range whatever the width.
        w = jax.random.normal(layer_key, (fan_in, fan_out)) / jnp.sqrt(fan_in)
        params.append({"w": w, "b": jnp.zeros(fan_out)})
    return params


def logits(params: Params, x: jax.Array) -> jax.Array:
    """The MLP's output before the sigmoid, one value per row of `x`."""
    *hidden, last = params
    for layer in hidden:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return (x @ last["w"] + last["b"])[:, 0]


def loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of the predictions on `x` against labels `y` in {0, 1}."""
    z = logits(params, x)
    # Written in terms of logits so that confident predictions do not overflow log(sigmoid).
    return jnp.mean(jax.nn.softplus(z) - y * z)


def accuracy(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of rows of `x` whose predicted class matches `y`."""
    return jnp.mean((logits(params, x) > 0) == (y > 0.5))
