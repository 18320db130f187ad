"""The one primitive a backend implements: turn submitted calls into outcomes (and, while calls run, their
events).

Everything a user can observe about ordering, errors, retries and cancellation is decided above this line,
once, in `mini._maprun`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mini.serialization import Call, Outcome

EventKind = Literal["started", "report", "output", "item"]


@dataclass(slots=True)
class CallEvent:
    """Something a running call said before its outcome.

    - `started`: it started; `data` is a `mini.reports.Placement` (where, when, on what).
    - `report`: `mini.report(...)`; `data` is `(time, metrics, coalesced)`.
    - `output`: a line it printed; `data` is `(stream, text)` with stream "stdout" or "stderr".
    - `item`: a value its generator yielded, pickled; `data` is the bytes.
    """

    index: int
    kind: EventKind
    data: Any


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
    async def outcomes(self) -> list[Outcome | CallEvent]:
        """Wait for at least one outcome or event and return every one ready now, each call's events in
        the order the call sent them and before its outcome."""

    def consumed(self, index: int, items: int) -> None:  # noqa: B027 - only generators need to hear it
        """The caller has read `items` more values of call `index`'s generator: it may yield as many more."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop every outstanding call of this map and release what it holds; idempotent."""
