"""The callee's side: what code running inside a call can ask about the call it is in.

Every backend's worker or container entry runs a call inside `calling(CallContext(...))`; the functions
that experiment code calls from inside a call (`mini.report`, `Volume.path`, ...) look the context up with
`current()`. Outside a call, `current()` is None. The context is a `contextvars` variable, so threads and
asyncio tasks each see their own call.

    outcome = run_call(fn, call, context=CallContext(index=3, backend="local"))   # calling() inside

Only the stdlib and mini's own light modules are imported here: worker processes load it before the
user's code.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class CallContext:
    """Where a call is running: its position in the map (None where the backend does not tell the callee,
    as on Modal, whose caller knows each input by its id), and the backend's kind ("local", "modal")."""

    index: int | None
    backend: str


LOCAL = "local"
MODAL = "modal"

_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("mini_call", default=None)


def current() -> CallContext | None:
    """The call this code runs in, or None outside any call."""
    return _current.get()


@contextlib.contextmanager
def calling(context: CallContext) -> Iterator[CallContext]:
    """Run the block as the call `context` describes."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
