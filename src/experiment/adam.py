"""The Adam optimiser (Kingma and Ba, 2015) over any pytree of parameters."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

_BETA1 = 0.9
_BETA2 = 0.999
_EPS = 1e-8


class AdamState(NamedTuple):
    """Running moment estimates, shaped like the parameters, and the step count."""

    mu: Any
    nu: Any
    step: jax.Array


def adam_init(params: Any) -> AdamState:
    """A fresh optimiser state for `params`.

    Example:
        >>> state = adam_init({"w": jnp.zeros(3)})
        >>> int(state.step)
        0
    """
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdamState(mu=zeros, nu=zeros, step=jnp.zeros((), jnp.int32))


def adam_update(params: Any, grads: Any, state: AdamState, learning_rate: float) -> tuple[Any, AdamState]:
    """One Adam step: the updated parameters and optimiser state.

    Example:
        >>> params = {"w": jnp.ones(3)}
        >>> params, state = adam_update(params, {"w": jnp.ones(3)}, adam_init(params), 0.1)
        >>> [round(float(v), 3) for v in params["w"]]
        [0.9, 0.9, 0.9]
    """
    step = state.step + 1
    mu = jax.tree.map(lambda m, g: _BETA1 * m + (1 - _BETA1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: _BETA2 * v + (1 - _BETA2) * g * g, state.nu, grads)
    # Bias correction: the moments start at zero and would otherwise underestimate early steps.
    mu_scale = 1 / (1 - _BETA1**step)
    nu_scale = 1 / (1 - _BETA2**step)
    params = jax.tree.map(
        lambda p, m, v: p - learning_rate * (m * mu_scale) / (jnp.sqrt(v * nu_scale) + _EPS), params, mu, nu
    )
    return params, AdamState(mu=mu, nu=nu, step=step)
