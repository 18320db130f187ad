"""What can go wrong when looking up or reading a detached run."""

from __future__ import annotations

from mini.errors import MiniError


class RunError(MiniError):
    """Base class of the errors about detached runs."""


class RunNotFound(RunError, LookupError):
    """No run with that id in this checkout's registry; the message says what is known instead."""


class CallNotFinished(RunError, TimeoutError):
    """A result was asked for before the call settled (or before the `timeout` given to `result`)."""


class CallCancelled(RunError):
    """The call was cancelled before it produced a result."""
