"""The `mini image` verb, run in-process through argparse as the CLI will run it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mini.image import derive_image_spec, record_dispatched_spec
from mini.image.report import add_parser, run


def mini_image(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mini")
    add_parser(parser.add_subparsers(dest="verb"))
    return run(parser.parse_args(["image", *argv]))


@pytest.fixture
def project(make_project, locked, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_project(
        {"src/app/__init__.py": "", "src/tool.py": ""}, '[dependency-groups]\ndev = ["idna"]\n', '["six"]'
    )
    locked(root)
    monkeypatch.chdir(root)
    return root


def test_json_has_exactly_the_documented_keys(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mini_image("--json") == 0
    first = json.loads(capsys.readouterr().out)
    assert mini_image("--json") == 0
    second = json.loads(capsys.readouterr().out)
    assert set(first) == {"python_version", "requirements", "packages", "image_hash", "source_hash", "cached"}
    assert [line.split("==")[0] for line in first["requirements"]] == ["six"]
    assert first["packages"] == ["app", "tool", "mini"]
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["image_hash"] == second["image_hash"] == derive_image_spec().image_hash


def test_summary_counts_pins_and_full_lists_them(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mini_image() == 0
    summary = capsys.readouterr().out
    assert "Pins         1 (exported from uv.lock)" in summary
    assert "Packages     app, tool, mini (" in summary
    assert "six==" not in summary
    assert mini_image("--full", "--group", "dev") == 0
    full = capsys.readouterr().out
    assert "Pins         2 (exported from uv.lock)" in full
    assert "\n  idna==" in full and "\n  six==" in full


def test_diff_reports_changes_since_the_recorded_dispatch(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mini_image("--diff") == 0
    assert "No dispatch recorded yet" in capsys.readouterr().out
    record_dispatched_spec(derive_image_spec())
    (project / "src" / "tool.py").write_text("X = 1\n")
    assert mini_image("--diff") == 0
    out = capsys.readouterr().out
    assert "the image is unchanged." in out
    assert "    ~ tool.py" in out


def test_bad_input_is_one_message_and_the_exit_code_of_a_project_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mini.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MINI_PROJECT", raising=False)
    assert main(["image"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mini image: no pyproject.toml in ")
    assert "Traceback" not in captured.err
