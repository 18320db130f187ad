"""The one primitive a backend implements: turn submitted calls into outcomes.

Everything a user can observe about ordering, errors, retries and cancellation is decided above this line,
once, in `mini.apparatus`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from mini.serialization import Call, Outcome


class Dispatch(ABC):
    """One map's connection to a backend. All methods run on mini's private event loop."""

    @abstractmethod
    def capacity(self) -> int:
        """How many calls may be submitted and not yet consumed; re-read as the map runs."""

    @abstractmethod
    def running(self) -> int:
        """How many submitted calls are executing now (for the progress display)."""

    @abstractmethod
    def submit(self, calls: Sequence[Call]) -> None:
        """Hand calls over without waiting; their outcomes arrive through `outcomes`."""

    def finish(self) -> None:  # noqa: B027 - only streaming backends need to hear it
        """No more calls will be submitted (a streaming backend can end its input stream)."""

    @abstractmethod
    async def outcomes(self) -> list[Outcome]:
        """Wait for at least one outcome and return every outcome ready now."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop every outstanding call of this map and release what it holds; idempotent."""
