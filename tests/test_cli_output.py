"""`mini.cli.output`: what the verbs draw, through rich."""

from __future__ import annotations

import pytest

from mini.cli.output import live_progress, render_table


def test_a_table_aligns_its_columns_under_the_header() -> None:
    rows = [["ok", "Python", "3.11"], ["FAIL", "DNS", "x"]]
    lines = render_table(["", "CHECK", "RESULT"], rows).splitlines()
    cells = [[cell.strip() for cell in line.split("│")] for line in lines[2:]]
    assert cells == rows
    assert len({line.index("│") for line in lines[2:]}) == 1, "the separators line up"
    assert "CHECK" in lines[0]


def test_live_progress_shows_the_last_counts_it_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    with live_progress("run-1") as show:
        show(1, None, "starting")
        show(3, 8, "running 2")
    out = capsys.readouterr().out
    assert "run-1" in out and "3/8" in out and "running 2" in out
    assert "starting" not in out
