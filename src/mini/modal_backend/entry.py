"""The generic entry every Modal function runs: one user call, its result pickled by mini, in the container.

Modal unpickles each input's arguments itself: mini sends its own pickle of `(args, kwargs)` as the input,
so they are pickled once, not twice. The entry returns mini's pickle of the result (bytes, which Modal's
pickle wraps at the cost of a copy) so that results and errors keep mini's semantics on every backend.

This module is shipped with mini's sources and imported by reference in the container; it must not import
`modal`, so that it stays cheap and backend-neutral.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mini.runtime import MODAL, CallContext
from mini.serialization import encode_error, invoke, loads

# The container does not learn the input's position in the map; the caller knows each input by its id.
_IN_A_CONTAINER = CallContext(None, MODAL)

_functions: dict[bytes, Callable[..., Any]] = {}


class CallFailed(Exception):
    """A user call raised; carries mini's encoding of the error, with its traceback."""

    def __init__(self, error: bytes) -> None:
        super().__init__("the call raised (mini's encoded error travels with this exception)")
        self.error = error

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        return type(self), (self.error,)


def run(fn_blob: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Run the pickled function on arguments Modal unpickled; return the pickled result or raise
    `CallFailed`."""
    fn = _functions.get(fn_blob)
    if fn is None:
        try:
            fn = _functions[fn_blob] = loads(fn_blob)
        except Exception as exc:  # e.g. its module is not shipped: the call's error, as mini encodes it
            raise CallFailed(encode_error(exc)) from None
    # The position in the map is the output's `idx`, known to the client; the entry does not need it.
    outcome = invoke(fn, -1, args, kwargs, context=_IN_A_CONTAINER)
    if not outcome.ok:  # raised, not returned, so Modal's retry policy sees the failure
        raise CallFailed(outcome.data)  # type: ignore[arg-type]
    return outcome.data  # type: ignore[return-value]


def bind(fn_blob: bytes) -> Callable[..., bytes]:
    """The function registered with Modal: the user's pickled function travels once, in this closure."""

    def mini_entry(*args: Any, **kwargs: Any) -> bytes:
        return run(fn_blob, args, kwargs)

    return mini_entry
