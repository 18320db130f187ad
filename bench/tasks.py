"""The functions every runner executes. They live in an importable module so process pools that pickle
functions by reference (ProcessPoolExecutor) can run them too."""

from __future__ import annotations

import numpy as np


def noop(value: object = None) -> object:
    return value


def spin(iterations: int) -> int:
    """Pure-Python work that holds the GIL for as long as `iterations` takes."""
    total = 0
    for step in range(iterations):
        total += step & 7
    return total


def array_sum(array: np.ndarray) -> float:
    return float(array.sum())


def make_array(items: int) -> np.ndarray:
    return np.ones(items, dtype=np.float64)
