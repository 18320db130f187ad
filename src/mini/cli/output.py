"""Everything the `mini` verbs draw, through rich (no colour): an experiment's result, tables (runs, calls,
`mini doctor`'s checks) and live progress (`mini watch`). No verb aligns columns or redraws a line itself.

print(render_result([{"lr": 0.1, "loss": 0.25}]))     # records become a table
print(render_table(["RUN", "STATUS"], [["20261123-170102-a3f9", "done"]]))
with live_progress("20261123-170102-a3f9") as show:
    show(3, 8, "running 2", [("#4", "step=100 loss=0.31")])   # 3 of 8 done, a line for call 4
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

_PRETTY_WIDTH = 120
_UNWRAPPED = 1000  # in a pipe a table keeps its natural width, one line per row


def render_result(result: Any) -> str:
    """Records (a list of flat dicts) become a table; list-valued fields such as loss curves are left out."""
    from rich.pretty import Pretty

    if _is_records(result):
        return _render(_records_table(result), _table_width())
    return _render(Pretty(result), _PRETTY_WIDTH)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: int = 0) -> str:
    """Rows of text under a header, in columns: the terminal's width, or unwrapped in a pipe."""
    from rich.padding import Padding

    table = _table(header, rows, numeric=())
    return _render(Padding(table, (0, 0, 0, indent)) if indent else table, _table_width())


Show = Callable[[int, "int | None", str, Sequence[tuple[str, str]]], None]


@contextlib.contextmanager
def live_progress(label: str, **options: Any) -> Iterator[Show]:
    """A progress bar on the terminal while the block runs (the one a map draws, `mini.progress.rich_bar`).
    The block redraws it with `show(completed, total, text, calls)`; a total of None draws a bar of unknown
    length; `calls` are lines under the bar, one per running call: (label, what it says). `options` go to
    the bar (a `console`, ...).
    """
    from mini.progress import rich_bar

    with rich_bar(**options) as bar:
        task = bar.add_task(label, total=None, counts="")

        def show(completed: int, total: int | None, text: str, calls: Sequence[tuple[str, str]] = ()) -> None:
            bar.calls = list(calls)
            bar.update(task, completed=completed, total=total, counts=text)

        yield show


def _render(renderable: Any, width: int) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip().splitlines())


def _table_width() -> int:
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else _UNWRAPPED


def _is_records(result: Any) -> bool:
    return isinstance(result, list) and bool(result) and all(isinstance(r, Mapping) for r in result)


def _records_table(records: list[Mapping[str, Any]]) -> Any:
    columns: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in columns and not isinstance(value, (list, tuple, dict)):
                columns.append(key)
    numeric = {c for c in columns if all(isinstance(r.get(c), (int, float)) for r in records)}
    rows = [[_cell(record.get(column)) for column in columns] for record in records]
    return _table(columns, rows, numeric)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Any) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False)
    for column in header:
        table.add_column(Text(column), justify="right" if column in numeric else "left")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: a `[` in a cell is not rich markup
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
