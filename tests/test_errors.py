"""One root for mini's errors: `except mini.MiniError` handles everything mini raises on its own behalf."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import mini
from mini import LocalApparatus, MiniError, OptionError
from mini._loop import NeedsLoop
from mini.errors import ArgumentError, RemoteTraceback
from mini.local._worker_process import Overdue
from mini.modal_backend._invocation import OutputExpired
from mini.modal_backend.entry import CallFailed
from mini.runtime import StreamStopped

# Exceptions that never reach user code: the text of a remote traceback (shown as an exception's cause), a
# user's error on its way out of a Modal container (raised there so that Modal's retries apply), a
# detached Modal call's expired output (caught where it is raised, in the run monitor), a run that must go
# through mini's loop after all (caught by `Apparatus.run`), and a lent worker's overdue answer (caught by
# its dispatch, which turns it into the call's CallTimeoutError).
NEVER_REACH_USERS = {RemoteTraceback, CallFailed, OutputExpired, StreamStopped, NeedsLoop, Overdue}


def mini_exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in a module of mini."""
    found = []
    for module_info in pkgutil.walk_packages(mini.__path__, "mini."):
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_every_error_class_of_mini_is_a_mini_error() -> None:
    classes = mini_exception_classes()
    names = {cls.__name__ for cls in classes}
    assert {"ImageSpecError", "SourcesError", "TrustStoreError", "RunNotFound", "OptionError"} <= names
    strays = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if cls not in NEVER_REACH_USERS and not issubclass(cls, MiniError)
    ]
    assert not strays, strays


@pytest.mark.parametrize("arguments", [{"workers": 0}, {"workers": True}, {"mode": "cluster"}])
def test_a_bad_local_apparatus_setting_is_an_option_error(arguments) -> None:
    with pytest.raises(OptionError) as caught:
        LocalApparatus("bad", **arguments)
    assert isinstance(caught.value, ValueError)  # as before, for code that caught ValueError


def test_an_unknown_backend_is_an_option_error() -> None:
    from mini.backends import make

    with pytest.raises(OptionError, match="unknown app 'cloud'"):
        make("cloud", "x")


def test_misused_api_arguments_are_argument_errors_and_type_errors() -> None:
    with pytest.raises(ArgumentError, match="non-empty name"):
        LocalApparatus("")
    app = LocalApparatus("arguments")
    with pytest.raises(ArgumentError, match="callable"):
        app.run(42)
    with pytest.raises(ArgumentError, match="at least one iterable"):
        app.map(abs)
    assert issubclass(ArgumentError, TypeError)
