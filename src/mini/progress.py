"""The progress of each map (and single call): counts for whoever listens, and a bar on a terminal.

Every backend reports through `Progress`: queued, running, done and failed calls, and those answered from the
result cache without running (`cached`). On a terminal (or when
asked) it draws a rich bar, with the lines the calls print shown above it. Code that wants the counts, such
as the process driving a detached experiment, which records the calls the experiment makes, listens:

    with listening(lambda progress_id, counts: print(counts.done, "of", counts.total)):
        app.map(train, configs)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Counts:
    """Where one map stands. `total` is its number of inputs when known in advance (their `len()`);
    `cached` calls were answered from the result cache and never submitted; `finished` once it is over,
    every call settled or, when it was stopped early, `cancelled`."""

    label: str
    total: int | None
    submitted: int
    running: int
    done: int
    failed: int
    cancelled: int = 0
    finished: bool = False
    cached: int = 0
    # The running calls worth a line of their own: (index, what they last reported, where, for how long).
    calls: tuple[tuple[int, str], ...] = ()

    @property
    def queued(self) -> int:
        return max(self.submitted - self.running - self.done - self.failed - self.cancelled, 0)


Listener = Callable[[int, Counts], None]  # (this map's id within the process, its counts)

_listeners: list[Listener] = []
_ids = itertools.count()


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Tell `listener` of every change of every map in this process, for the duration of the block.

    It is called from whichever thread drives the map: keep it quick and thread-safe.
    """
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class Progress:
    """One map's counts: told to listeners, and drawn as a rich bar when stderr is a terminal (or when
    `enabled`), with what the calls print going above the bar rather than through it."""

    def __init__(self, label: str, enabled: bool | None, total: int | None = None) -> None:
        self._id = next(_ids)
        self._label = label
        self._total = total
        self._last: Counts | None = None
        self._bar: Any = None
        self._task: Any = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if not enabled:
            return
        from rich.console import Console

        self._bar = rich_bar(console=Console(file=sys.stderr), redirect_stdout=True, redirect_stderr=True)
        self._task = self._bar.add_task(label, total=total, counts="")
        self._bar.start()

    def update(
        self,
        *,
        submitted: int,
        running: int,
        done: int,
        failed: int,
        cached: int = 0,
        finished: bool = False,
        calls: Sequence[tuple[int, str]] = (),
    ) -> None:
        """New counts; `calls`: the running calls worth a line of their own under the bar, as
        (index, what they last reported and where they run)."""
        if self._bar is None and not _listeners:  # nobody to tell: most single calls and quiet maps
            return
        counts = Counts(
            self._label,
            self._total,
            submitted,
            running,
            done,
            failed,
            finished=finished,
            cached=cached,
            calls=tuple(calls),
        )
        self._tell(counts)
        if self._bar is None:
            return
        text = f"queued {counts.queued} · running {running} · done {done} · failed {failed}"
        if cached:
            text = f"cached {cached} · {text}"
        total = self._total if self._total is not None else (submitted + cached if finished else None)
        self._bar.calls = [(f"#{index}", line) for index, line in calls]
        self._bar.update(self._task, completed=done + failed + cached, total=total, counts=text)

    @property
    def watched(self) -> bool:
        """Whether anyone sees these counts (a bar, a listener): if not, `update` can be skipped."""
        return self._bar is not None or bool(_listeners)

    def close(self) -> None:
        last = self._last
        if last is not None and not last.finished:  # stopped early: what had not settled was cancelled
            stopped = last.submitted - last.done - last.failed
            self._tell(dataclasses.replace(last, running=0, cancelled=stopped, finished=True))
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _tell(self, counts: Counts) -> None:
        self._last = counts
        for listener in list(_listeners):
            listener(self._id, counts)


# Running calls shown by name under the bar; the rest are counted.
SHOWN_CALLS = 8


def rich_bar(**options: Any) -> Any:
    """The bar every progress display draws (a map's here, `mini watch`'s in `mini.cli.output`): the label,
    the bar, done of total, a text field `counts`, the time elapsed; and under it a line per running call in
    `bar.calls` (label, text). `options` go to `rich.progress.Progress`.

        with rich_bar() as bar:
            task = bar.add_task("train", total=8, counts="")
            bar.calls = [("#3", "step=120 loss=0.31 · 8 CPUs · vm")]
            bar.update(task, completed=3, counts="running 2")
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress
    from rich.table import Table

    class BarWithCalls(RichProgress):
        calls: list[tuple[str, str]] = []

        def get_renderables(self) -> Iterator[Any]:
            yield self.make_tasks_table(self.tasks)
            if self.calls:
                table = Table.grid(padding=(0, 2))
                for label, text in self.calls[:SHOWN_CALLS]:
                    table.add_row(f"  {label}", text)
                if len(self.calls) > SHOWN_CALLS:
                    table.add_row("", f"… and {len(self.calls) - SHOWN_CALLS} more running")
                yield table

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
    return BarWithCalls(*columns, TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), **options)
