"""The generic entry every Modal function runs: one user call, its result pickled by mini, in the container.

Modal unpickles each input's arguments itself: mini sends its own pickle of `(args, kwargs)` as the input,
so they are pickled once, not twice. The entry returns mini's pickle of the result (bytes, which Modal's
pickle wraps at the cost of a copy) so that results and errors keep mini's semantics on every backend.

The volumes mini mounts for the function (`mini.modal_backend.volumes`) travel in the closure as
`modal.Volume` objects: each call reloads them first and commits them after (`synced`).

This module is shipped with mini's sources and imported by reference in the container; it must not import
`modal`, so that it stays cheap and backend-neutral.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mini.errors import MiniError
from mini.modal_backend.volumes import MOUNTED
from mini.runtime import MODAL, CallContext
from mini.serialization import encode_error, invoke, loads

# The container does not learn the input's position in the map; the caller knows each input by its id.
_IN_A_CONTAINER = CallContext(None, MODAL, volumes=MOUNTED)

_functions: dict[bytes, Callable[..., Any]] = {}


class CallFailed(Exception):
    """A user call raised; carries mini's encoding of the error, with its traceback."""

    def __init__(self, error: bytes) -> None:
        super().__init__("the call raised (mini's encoded error travels with this exception)")
        self.error = error

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        return type(self), (self.error,)


def run(fn_blob: bytes, args: tuple[Any, ...], kwargs: dict[str, Any], volumes: Sequence[Any] = ()) -> bytes:
    """Run the pickled function on arguments Modal unpickled, between a reload and a commit of `volumes`;
    return the pickled result or raise `CallFailed`."""
    fn = _functions.get(fn_blob)
    if fn is None:
        try:
            fn = _functions[fn_blob] = loads(fn_blob)
        except Exception as exc:  # e.g. its module is not shipped: the call's error, as mini encodes it
            raise CallFailed(encode_error(exc)) from None
    # The position in the map is the output's `idx`, known to the client; the entry does not need it.
    try:
        with synced(volumes):
            outcome = invoke(fn, -1, args, kwargs, context=_IN_A_CONTAINER)
    except MiniError as exc:
        raise CallFailed(encode_error(exc)) from None
    if not outcome.ok:  # raised, not returned, so Modal's retry policy sees the failure
        raise CallFailed(outcome.data)  # type: ignore[arg-type]
    return outcome.data  # type: ignore[return-value]


def bind(fn_blob: bytes, volumes: Sequence[Any] = ()) -> Callable[..., bytes]:
    """The function registered with Modal: the user's pickled function travels once, in this closure, with
    the `modal.Volume`s mini mounts for it."""
    volumes = tuple(volumes)

    def mini_entry(*args: Any, **kwargs: Any) -> bytes:
        return run(fn_blob, args, kwargs, volumes)

    return mini_entry


# Calls running in this container now: more than one only under input concurrency.
_running = 0
_running_lock = threading.Lock()


@contextlib.contextmanager
def synced(volumes: Sequence[Any]) -> Iterator[None]:
    """Reload `volumes` before a call, so that it sees what earlier calls committed, and commit them once it
    has returned or raised, so that the caller and later calls see what it wrote (a failed call's partial
    writes included) as soon as its outcome is back.

    Under input concurrency only a call that starts alone reloads: a reload fails while a file of the
    volume is open, and would change the files under a call still running. A call that starts beside others
    sees the container's copy as it is (with what the others wrote, and what was committed up to the last
    reload). A failed reload or commit is a `MiniError`, the call's error.
    """
    global _running
    if not volumes:
        yield
        return
    with _running_lock:
        alone = _running == 0
        _running += 1
    try:
        if alone:
            for volume in volumes:
                _sync(volume.reload, "reload", volume)
        yield
    finally:
        with _running_lock:
            _running -= 1
        for volume in volumes:
            _sync(volume.commit, "commit", volume)


def _sync(operation: Callable[[], Any], verb: str, volume: Any) -> None:
    try:
        operation()
    except Exception as exc:
        name = getattr(volume, "name", None) or "a volume"
        hint = (
            " A file of the volume is still open in this container: close the files a call opens on a "
            "volume before it returns."
            if verb == "reload" and "open files" in str(exc)
            else ""
        )
        raise MiniError(f"mini could not {verb} {name} around this call: {exc}.{hint}") from exc
