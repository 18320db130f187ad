"""Exceptions mini raises on its own behalf (a user's exception comes back as its own type)."""

from __future__ import annotations


class MiniError(Exception):
    """Base class of mini's own errors."""


class OptionError(MiniError, ValueError, TypeError):
    """An unknown or invalid option was given to an apparatus (see `Apparatus.w`).

    Both a `TypeError` (an unknown name, like an unexpected keyword argument) and a `ValueError` (a bad
    value).
    """


class ArgumentError(MiniError, TypeError):
    """A function of mini's API got an argument it cannot use: a function that is not callable, nothing to
    map over, an apparatus name that is not a non-empty string."""


class SerializationError(MiniError, TypeError):
    """An argument, function or result could not cross the serialisation boundary (cloudpickle)."""


class WorkerCrashed(MiniError):
    """The worker process running a call died (os._exit, a signal, the OOM killer) before it answered."""


class CallTimeoutError(MiniError, TimeoutError):
    """A call ran longer than the apparatus's `timeout`."""


class RemoteError(MiniError):
    """A call failed with an exception that could not be brought back as its own type.

    `type_name` names the original exception type; the remote traceback is attached as the cause.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.type_name, self.message)


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised where the call ran; shown as the cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + self.text


class NotSupportedError(MiniError, NotImplementedError):
    """The backend cannot do what was asked (for example detached runs on a backend without a launcher)."""


class BatchError(MiniError, ValueError):
    """A batched function's result does not fit its batch (not a list with one result per input)."""


class BackendError(MiniError):
    """The backend itself failed while running calls (a lost connection, a stopped app), not a call."""


class StartupTimeoutError(BackendError, TimeoutError):
    """No call finished within the apparatus's `startup_timeout`: the workers may be failing to start."""


class ModalAuthError(MiniError):
    """Modal refused or found no token."""
