"""The task: two interleaved spirals, a classic that no linear model can separate."""

from __future__ import annotations

import functools

import numpy as np

_TURNS = 2.5


def two_spirals(n_per_class: int, *, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points on two interleaved spirals and their class labels (0 or 1), shuffled.

    Returns `(x, y)` with `x` of shape `(2 * n_per_class, 2)` (float32, roughly in [-1, 1]) and `y` of
    shape `(2 * n_per_class,)` (float32). The same seed always gives the same data.

    Example:
        >>> x, y = two_spirals(100, seed=1)
        >>> x.shape, y.shape
        ((200, 2), (200,))
    """
    rng = np.random.default_rng(seed)
    # An arm's length grows with its radius; square-root spacing spreads points evenly along it.
    radius = np.sqrt(rng.uniform(0.0, 1.0, n_per_class)) * 0.9 + 0.05
    # Enough turns that a small network must work for it and the sweep's configs come out different.
    angle = radius * _TURNS * 2.0 * np.pi
    arm = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    x = np.concatenate([arm, -arm]) + rng.normal(0.0, noise, (2 * n_per_class, 2))
    y = np.concatenate([np.zeros(n_per_class), np.ones(n_per_class)])
    order = rng.permutation(2 * n_per_class)
    return x[order].astype(np.float32), y[order].astype(np.float32)


@functools.lru_cache(maxsize=8)
def training_set(n_per_class: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`two_spirals(n_per_class, seed=seed)`, made once per worker process or container and reused by every
    call it runs after: the portable form of setting up once per worker (a module-level cache in a shipped
    package, as Modal's `@modal.enter` does for a class). Treat the arrays as read-only.

    Example:
        >>> training_set(100) is training_set(100)
        True
    """
    return two_spirals(n_per_class, seed=seed)
