"""Failures: the user's exception type with the remote traceback, return_exceptions, bad arguments."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mini import RemoteError, SerializationError
from mini.errors import RemoteTraceback
from tests.behaviour import calls


def test_a_failing_call_raises_its_own_type_with_the_remote_traceback(app):
    with pytest.raises(ValueError, match="bad input 3") as caught:
        app.run(calls.fail_on, 3, 3)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on" in cause.text and "raise ValueError" in cause.text


def test_map_raises_after_yielding_the_results_before_the_failure(app):
    seen = []
    with pytest.raises(ValueError, match="bad input 2"):
        for value in app.map(calls.fail_on, range(6), [2] * 6):
            seen.append(value)
    assert seen == [0, 1]


def test_return_exceptions_yields_the_exception_in_place(app):
    out = list(app.map(calls.fail_on, range(4), [1] * 4, return_exceptions=True))
    assert out[0] == 0 and out[2:] == [2, 3]
    assert isinstance(out[1], ValueError) and str(out[1]) == "bad input 1"


def test_an_exception_that_cannot_be_rebuilt_keeps_its_type_name(app):
    with pytest.raises(RemoteError, match="NeedsTwoArgs: x-y") as caught:
        app.run(calls.raise_needs_two_args)
    assert caught.value.type_name.endswith("NeedsTwoArgs")
    assert "raise NeedsTwoArgs" in caught.value.__cause__.text


def test_the_callee_works_on_a_copy(app):
    mine = [1, 2]
    returned = app.run(calls.append_and_return, mine)
    assert mine == [1, 2]
    assert returned == [1, 2, 99]


def test_an_unpicklable_argument_fails_before_any_work_naming_it(app, tmp_path):
    with pytest.raises(SerializationError, match=r"argument 'folder' \(position 1\)"):
        app.run(calls.mark, 1, threading.Lock())
    with pytest.raises(SerializationError, match="keyword argument 'folder'"):
        list(app.map(calls.mark, [1, 2], kwargs={"folder": threading.Lock()}))
    with pytest.raises(SerializationError, match=r"argument 'folder' \(position 1\) of call #1"):
        list(app.map(calls.mark, [1, 2], [str(tmp_path), threading.Lock()]))
    assert not list(Path(tmp_path).iterdir())


def test_an_unpicklable_result_is_reported_as_such(app):
    with pytest.raises(SerializationError, match="cannot be pickled"):
        app.run(threading.Lock)


def test_a_function_that_is_not_callable_is_refused(app):
    with pytest.raises(TypeError, match="callable"):
        app.run(42)
