"""The apparatus as an object: lifecycle, import cost, progress display."""

from __future__ import annotations

import subprocess
import sys

from tests.behaviour import calls


def test_context_manager_closes_and_the_apparatus_can_be_used_again(app):
    with app:
        assert app.run(calls.square, 2) == 4
    assert app.run(calls.square, 3) == 9


def test_progress_is_shown_on_request_and_silent_otherwise(app, capsys):
    list(app.map(calls.square, range(5)))
    assert capsys.readouterr().err == ""
    list(app.w(progress=True).map(calls.square, range(5)))
    err = capsys.readouterr().err
    assert "done 5" in err and "failed 0" in err


def test_import_mini_is_light():
    code = (
        "import sys, mini; "
        "heavy = [m for m in ('modal', 'cloudpickle', 'rich', 'asyncio', 'mini.image') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
