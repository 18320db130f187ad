"""What a backend implements: the whole contract between `Apparatus` and a place where calls run.

A backend is one object, shared by an apparatus and all its `.w()` variants, that

- declares what it does itself as data (`Capabilities`), so the base does the rest;
- refuses options it cannot honour (`check`);
- opens one `Dispatch` per map: calls in, outcomes out (`open_dispatch`, see `mini.dispatch`);
- names the `Launcher` that starts its detached calls (`launcher`, see `mini.runs.launcher`);
- provides the storage behind `app.volume(name)` (`volume_store`, see `mini.volumes`);
- releases what it holds (`close`).

Everything users can observe about ordering, errors, retries and cancellation is written once above this
line, in `mini._maprun`. A new backend is one package implementing this class:

    class InlineBackend(Backend):
        kind = "inline"
        capabilities = Capabilities(caller_thread=True)
        async def open_dispatch(self, fn, fn_blob, options, *, ordered): return InlineDispatch(fn_blob)
        def close(self): pass

    app = Apparatus("debug", InlineBackend())
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mini.errors import NotSupportedError

if TYPE_CHECKING:
    from mini.dispatch import Dispatch
    from mini.options import Options
    from mini.runs.launcher import Launcher
    from mini.volumes import VolumeStore


@dataclass(frozen=True)
class Capabilities:
    """What a backend does itself. Each flag that is False is taken care of by the base (or not needed)."""

    buffers: bool = False
    """Its dispatch carries `Call.buffers`: large buffers (NumPy arrays) travel beside the pickle."""
    own_memory: bool = False
    """Calls run in another address space, so a callee can never write to the caller's memory (argument
    buffers of a `run` are then lent rather than copied)."""
    retries: bool = False
    """It retries failed calls itself (the `retries` option); otherwise the base resubmits them."""
    caller_thread: bool = False
    """A single `run` may be driven on the caller's thread (`mini._loop.drive`): only for a dispatch that
    waits on nothing but `mini._loop.Blocking`s (Signals, or its own blocking work). `open_dispatch` may
    raise `mini._loop.NeedsLoop` there (nothing it can run the call on right now, from that thread): the
    run then goes through mini's loop."""
    batching: bool = False
    """It forms batches itself (`max_batch_size`, `batch_wait_ms`), from single inputs; otherwise the base
    forms them (`mini._batching`) and the backend runs one call per batch."""


class Backend(ABC):
    """Where calls run. See the module docstring for the contract."""

    kind: ClassVar[str]
    """The backend's name in run records and on the command line ("local", "modal")."""

    capabilities: Capabilities = Capabilities()

    def check(self, options: Options) -> None:  # noqa: B027 - most backends accept every option
        """Raise `OptionError` for options this backend cannot honour; called by every `.w()`."""

    @abstractmethod
    async def open_dispatch(
        self, fn: Callable[..., Any], fn_blob: bytes, options: Options, *, ordered: bool
    ) -> Dispatch:
        """Start one map of `fn` (pickled once as `fn_blob`) under `options`; runs on mini's loop.

        `ordered` only says whether the caller wants input order (the base reorders either way); a backend
        may use it to choose a cheaper way of fetching outcomes."""

    def launcher(self, name: str, options: Options) -> Launcher:
        """The launcher for detached calls (`spawn`, `spawn_map`) of apparatus `name` under `options`;
        a backend without detached runs keeps this default."""
        raise NotSupportedError(
            f"the {self.kind} backend ({type(self).__name__}) cannot launch detached runs; "
            "use LocalApparatus or ModalApparatus for spawn and spawn_map."
        )

    def volume_store(self, name: str) -> VolumeStore:
        """The storage of volume `name` (already checked by `mini.volumes.check_name`), made on first use,
        persistent, and seen by every call of this backend; a backend without volumes keeps this default."""
        raise NotSupportedError(
            f"the {self.kind} backend ({type(self).__name__}) has no volumes; "
            "use LocalApparatus or ModalApparatus for app.volume()."
        )

    @abstractmethod
    def close(self) -> None:
        """Stop workers and release resources; the backend can be used again afterwards."""

    def describe(self) -> dict[str, Any]:
        """Settings worth showing in the apparatus's repr (e.g. `{"workers": 2}`)."""
        return {}
