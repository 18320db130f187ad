"""A worker process: `python -m mini.local._worker FD [--isolated]` runs batches of calls sent over socket FD.

It imports only the stdlib before it can report, so that a broken environment (an isolated one missing a
dependency) is reported to the parent with its traceback instead of dying silently.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from mini.local import _framing
from mini.local._environ import applied
from mini.local._isolation import explain


class _Unloadable:
    """A function that could not be unpickled here; every call to it fails with the same error."""

    def __init__(self, error: bytes) -> None:
        self.error = error


def _die_with_parent() -> None:
    # Linux: if the parent is killed outright, the kernel kills this worker too.
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def main() -> None:
    # `python -m` puts the working directory first on sys.path; workers import only what PYTHONPATH names,
    # so an isolated worker cannot pick up unshipped modules that happen to sit in the directory.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    sock = socket.socket(fileno=int(sys.argv[1]))
    # Ctrl-C reaches the whole foreground process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    # The pool may close its end (it is shutting down, or gone): then there is no one left to answer, and a
    # traceback here would only bury the error the user is reading.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        _serve(sock, isolated="--isolated" in sys.argv[2:])


def _calling(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _explaining(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, with a note on the errors an isolated worker raises because it is not your shell or checkout."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (KeyError, FileNotFoundError) as exc:
            explain(exc)
            raise

    return call


def _serve(sock: socket.socket, isolated: bool) -> None:
    try:
        from mini.runtime import LOCAL, CallContext
        from mini.serialization import Call, encode_error, fresh_buffer, loads, run_call
    except BaseException:
        _framing.send(sock, ("failed", traceback.format_exc()))
        sys.exit(1)
    _framing.send(sock, ("ready", sys.version_info[:2]))
    prepare = _explaining if isolated else _calling
    # Which functions stay loaded is the pool's decision alone: it says what to drop and when to resend.
    functions: dict[int, object] = {}
    while (message := _framing.receive(sock, fresh_buffer)) is not None:
        key, fn_blob, dropped, env, calls = message
        started = time.perf_counter()
        for old in dropped:
            del functions[old]
        if fn_blob is not None:
            try:
                functions[key] = prepare(loads(fn_blob))
            except BaseException as exc:  # e.g. the function's module is not importable here
                functions[key] = _Unloadable(encode_error(exc))
        fn = functions[key]
        if isinstance(fn, _Unloadable):
            _framing.send(sock, ([(index, False, fn.error, []) for index, _, _ in calls], 0.0))
            continue
        with applied(env):
            outcomes = [
                run_call(
                    fn,  # type: ignore[arg-type]
                    Call(index, payload, buffers),
                    out_of_band=True,
                    context=CallContext(index, LOCAL),
                )
                for index, payload, buffers in calls
            ]
        elapsed = time.perf_counter() - started
        replies = [
            (o.index, o.ok, o.data, [pickle.PickleBuffer(b) for b in o.buffers] if o.buffers else ())
            for o in outcomes
        ]
        _framing.send(sock, (replies, elapsed))


if __name__ == "__main__":
    main()
