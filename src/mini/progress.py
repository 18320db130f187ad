"""The progress display shared by every backend: queued, running, done and failed counts on stderr."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A rich progress bar when stderr is a terminal (or when asked), nothing otherwise."""

    def __init__(self, label: str, enabled: bool | None) -> None:
        self._bar: Any = None
        self._task: Any = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._task = self._bar.add_task(label, total=None, counts="")
        self._bar.start()

    def update(self, *, submitted: int, running: int, done: int, failed: int, finished: bool = False) -> None:
        if self._bar is None:
            return
        queued = max(submitted - running - done - failed, 0)
        counts = f"queued {queued} · running {running} · done {done} · failed {failed}"
        self._bar.update(
            self._task, completed=done + failed, total=submitted if finished else None, counts=counts
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
