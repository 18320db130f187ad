"""Live reports from inside calls: `mini.report`, `on_report`, printed lines and where each call ran."""

from __future__ import annotations

import re
import sys

import pytest

import mini
from tests.behaviour import calls


def test_reports_arrive_while_the_call_runs_in_order_with_its_index(app, tmp_path):
    seen: list[mini.Report] = []

    def on_report(report: mini.Report) -> None:
        seen.append(report)
        if report.metrics["step"] == 0:  # the call waits for this before it reports again and returns
            (tmp_path / f"seen-{report.index}").touch()

    out = list(app.w(on_report=on_report).map(calls.reporting, range(3), [str(tmp_path)] * 3))
    assert out == [0, 1, 2]
    for x in range(3):
        assert [r.metrics for r in seen if r.index == x] == [
            {"step": 0, "x": x},
            {"step": 1, "x": x, "phase": "done"},
        ]


def test_a_report_says_when_and_where_its_call_runs(app, tmp_path):
    seen: list[mini.Report] = []

    def on_report(report: mini.Report) -> None:
        seen.append(report)
        (tmp_path / f"seen-{report.index}").touch()

    assert app.w(on_report=on_report).run(calls.reporting, 0, str(tmp_path)) == 0
    first = seen[0]
    assert first.placement is not None
    assert first.placement.started <= first.time
    assert first.placement.cpus >= 1 and first.placement.host
    assert isinstance(first.placement.gpus, tuple)
    assert first.attempt == 1 and first.coalesced == 0


def test_printed_lines_reach_the_caller_while_the_call_runs(app, tmp_path, monkeypatch):
    class Listening:
        """sys.stdout, telling each call (through a file) that its line has arrived here."""

        def __init__(self, real):
            self.real = real

        def write(self, text: str) -> int:
            for match in re.finditer(r"(?:\[(\d+)\] )?hello from (\d+)", text):
                (tmp_path / f"heard-{match[2]}").touch()
            return self.real.write(text)

        def flush(self) -> None:
            self.real.flush()

        def __getattr__(self, name):
            return getattr(self.real, name)

    monkeypatch.setattr(sys, "stdout", Listening(sys.stdout))
    assert list(app.map(calls.printing, range(2), [str(tmp_path)] * 2)) == [0, 1]


def test_a_metric_that_is_not_a_number_or_a_string_is_a_type_error_naming_it(app):
    with pytest.raises(TypeError, match=r"mini.report\(loss=...\) got a list"):
        app.run(calls.bad_report)


def test_report_outside_a_call_does_nothing():
    assert mini.report(step=1) is None
    with pytest.raises(TypeError, match="loss"):
        mini.report(loss=object())  # checked even so: the same code fails the same way in a call


def test_reports_of_a_sweep_without_on_report_cost_nothing_to_the_result(app, tmp_path):
    for x in range(2):
        (tmp_path / f"seen-{x}").touch()
    assert list(app.map(calls.reporting, range(2), [str(tmp_path)] * 2)) == [0, 1]
