"""The states of detached calls and runs, and how a run's state follows from its calls' (pure logic).

>>> run_status([CallState("done"), CallState("running")])
'running'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Status = Literal["pending", "running", "done", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("pending", "running", "done", "failed", "cancelled")
SETTLED: frozenset[str] = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True)
class CallState:
    """Where one call stands. `detail` says why, for failures (`ValueError: boom`, `process vanished`)."""

    status: Status
    detail: str = ""
    started: float | None = None
    finished: float | None = None

    @property
    def settled(self) -> bool:
        return self.status in SETTLED


def run_status(states: Iterable[CallState]) -> Status:
    """One word for a whole run: active while any call is; once all settled, the worst outcome wins."""
    counts = Counter(state.status for state in states)
    if counts["running"] or (counts["pending"] and sum(counts.values()) > counts["pending"]):
        return "running"
    if counts["pending"]:
        return "pending"
    for status in ("failed", "cancelled"):
        if counts[status]:
            return status
    return "done"


def count_statuses(states: Iterable[CallState]) -> dict[str, int]:
    """`{"pending": 0, "running": 1, "done": 3, ...}`, every status present."""
    counts = Counter(state.status for state in states)
    return {status: counts[status] for status in STATUSES}
