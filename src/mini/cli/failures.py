"""How a `mini` command ends on an error: mini's own errors as a short message and an exit code per kind.

An error raised by the user's own code (in `main(app)` or in a call, with its remote traceback) is not
mini's: it keeps its traceback, and so does an `ArgumentError` (mini's API called wrongly, as a
`TypeError` would be). Asked (`mini --traceback`, or `MINI_DEBUG=1`), mini prints every error's traceback.
docs/cli.md shows the table of exit codes; `_kinds` is where it is kept.
"""

from __future__ import annotations

import os
from typing import Any

from mini.errors import MiniError

INTERRUPTED = 130
BROKEN_PIPE = 141  # what a shell reports for a program ended by SIGPIPE, as `yes | head` is


class UsageError(MiniError):
    """The command line asks for something that cannot be done (flags that do not apply, ...)."""


def _kinds() -> list[tuple[int, tuple[type[BaseException], ...], str]]:
    # Imported when an error is being reported, so that a command that succeeds loads none of this.
    from mini.cli.experiment import ExperimentError
    from mini.errors import CallTimeoutError, ModalAuthError, OptionError, SerializationError, WorkerCrashed
    from mini.image.errors import ImageSpecError, UvCommandError, UvNotFoundError
    from mini.runs.errors import RunError
    from mini.tls import TrustStoreError

    # First match wins: a subclass comes before the class it refines (uv's errors are ImageSpecErrors).
    return [
        (
            2,
            (UsageError, OptionError, ExperimentError),
            "the command line: a flag, an option value, the experiment",
        ),
        (4, (UvNotFoundError, UvCommandError), "uv is missing, or a uv command failed"),
        (3, (ImageSpecError,), "the project: no pyproject.toml, a stale or missing uv.lock, src/"),
        (5, (ModalAuthError,), "Modal's token: missing or rejected"),
        (6, (TrustStoreError,), "the trust store mini builds for Modal's client"),
        (7, (RunError,), "a detached run: an unknown run or call, a damaged record"),
        (8, (WorkerCrashed, CallTimeoutError, SerializationError), "a call mini could not run or finish"),
        (9, (MiniError,), "any other error of mini's own"),
    ]


def exit_code(error: BaseException) -> int | None:
    """The exit code for one of mini's own errors; None for any other (the user's code raised it).

    exit_code(OptionError("option timeout=-5.0 must be ..."))   # 2
    """
    from mini.errors import ArgumentError, RemoteError

    # The user's exception brought back by name, or mini's API called wrongly: where it happened matters.
    if isinstance(error, (RemoteError, ArgumentError)):
        return None
    for code, kinds, _ in _kinds():
        if isinstance(error, kinds):
            return code
    return None


def exit_code_table() -> list[tuple[int, str, str]]:
    """(code, meaning, error classes) for each kind: what docs/cli.md shows."""
    rows = [(code, meaning, ", ".join(kind.__name__ for kind in kinds)) for code, kinds, meaning in _kinds()]
    return sorted(rows)


def traceback_wanted(args: Any) -> bool:
    """Whether `--traceback` was given or `MINI_DEBUG` is set (to anything but empty or 0)."""
    return bool(getattr(args, "traceback", False)) or os.environ.get("MINI_DEBUG", "") not in ("", "0")
