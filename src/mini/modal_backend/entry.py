"""The generic entry every Modal function runs: one user call, pickled by mini, run in the container.

This module is shipped with mini's sources and imported by reference in the container; it must not import
`modal`, so that it stays cheap and backend-neutral.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mini.serialization import Call, loads, run_call

_functions: dict[bytes, Callable[..., Any]] = {}


class CallFailed(Exception):
    """A user call raised; carries its position in the map and the encoded error with its traceback."""

    def __init__(self, index: int, error: bytes) -> None:
        super().__init__(f"call #{index} failed")
        self.index = index
        self.error = error

    def __reduce__(self) -> tuple[type, tuple[int, bytes]]:
        return type(self), (self.index, self.error)


def run(fn_blob: bytes, index: int, payload: bytes) -> tuple[int, bytes]:
    """Run call `index` of the pickled function; return `(index, pickled result)` or raise `CallFailed`."""
    fn = _functions.get(fn_blob)
    if fn is None:
        fn = _functions[fn_blob] = loads(fn_blob)
    outcome = run_call(fn, Call(index, payload))
    if not outcome.ok:  # raised, not returned, so Modal's retry policy sees the failure
        raise CallFailed(index, outcome.data)  # type: ignore[arg-type]
    return index, outcome.data  # type: ignore[return-value]


def bind(fn_blob: bytes) -> Callable[[int, bytes], tuple[int, bytes]]:
    """The function registered with Modal: the user's pickled function travels once, in this closure."""

    def mini_entry(index: int, payload: bytes) -> tuple[int, bytes]:
        return run(fn_blob, index, payload)

    return mini_entry
