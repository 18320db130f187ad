"""One training run's hyperparameters, kept free of JAX so that building a sweep is cheap."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run of `experiment.train.train`.

    Example:
        >>> TrainConfig(learning_rate=1e-2, hidden=32, steps=200).hidden
        32
    """

    learning_rate: float = 1e-2
    hidden: int = 64
    depth: int = 2
    steps: int = 1000
    seed: int = 0

    @property
    def name(self) -> str:
        """A name for the run, usable as a folder name.

        Example:
            >>> TrainConfig(learning_rate=1e-2, hidden=32, steps=200).name
            'lr0.01-h32-d2-s200-seed0'
        """
        return f"lr{self.learning_rate:g}-h{self.hidden}-d{self.depth}-s{self.steps}-seed{self.seed}"

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        for name in ("hidden", "depth", "steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
