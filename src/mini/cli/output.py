"""Showing an experiment's result: a table for a list of records, a pretty print otherwise."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any


def render_result(result: Any) -> str:
    """Records (a list of flat dicts) become a table; list-valued fields such as loss curves are left out."""
    from rich.console import Console
    from rich.pretty import Pretty

    buffer = io.StringIO()
    console = Console(file=buffer, width=120, color_system=None)
    if _is_records(result):
        console.print(_table(result))
    else:
        console.print(Pretty(result))
    return buffer.getvalue().rstrip()


def _is_records(result: Any) -> bool:
    return isinstance(result, list) and bool(result) and all(isinstance(r, Mapping) for r in result)


def _table(records: list[Mapping[str, Any]]) -> Any:
    from rich.table import Table

    columns: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in columns and not isinstance(value, (list, tuple, dict)):
                columns.append(key)
    table = Table(show_edge=False)
    for column in columns:
        numeric = all(isinstance(r.get(column), (int, float)) for r in records)
        table.add_column(column, justify="right" if numeric else "left")
    for record in records:
        table.add_row(*(_cell(record.get(column)) for column in columns))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
