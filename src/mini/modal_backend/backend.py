"""`ModalBackend`: calls run in Modal containers (on GPUs if asked), one ephemeral app per function."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from mini import _loop
from mini.backend import Backend, Capabilities
from mini.modal_backend import options as modal_options
from mini.modal_backend.session import Entry, Session, function_name

if TYPE_CHECKING:
    from mini.dispatch import Dispatch
    from mini.options import Options
    from mini.runs.launcher import Launcher
    from mini.volumes import VolumeStore

# Inputs in flight per map: enough to keep many containers busy, few enough to bound memory.
_WINDOW = 512


def _entry(fn: Callable[..., Any], options: Options) -> Entry:
    from mini._batching import parameter_names
    from mini._maprun import yields

    target = inspect.unwrap(fn.func if isinstance(fn, functools.partial) else fn)
    is_async = inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)
    if yields(fn):
        return Entry("stream", is_async=is_async)
    if options.max_batch_size:
        return Entry("batch", tuple(parameter_names(fn)))
    return Entry(is_async=is_async)


class ModalBackend(Backend):
    """The Modal session of a `ModalApparatus` and its `.w()` variants.

    >>> app = Apparatus("sweep", ModalBackend("sweep"))
    """

    kind: ClassVar[str] = "modal"
    # Modal retries failed inputs itself (its retry policy), and containers are other machines.
    # and forms batches itself (`@modal.batched`).
    capabilities = Capabilities(retries=True, own_memory=True, batching=True)

    def __init__(self, name: str) -> None:
        self.session = Session(name)

    def check(self, options: Options) -> None:
        modal_options.check(options)

    async def open_dispatch(
        self, fn: Callable[..., Any], fn_blob: bytes, options: Options, *, ordered: bool
    ) -> Dispatch:
        from mini.modal_backend.dispatch import ModalDispatch

        kind = _entry(fn, options)
        name = function_name(fn, fn_blob, options, list(self.session.volumes))
        function = await self.session.function_for(name, fn_blob, options, kind)
        startup = options.startup_timeout or modal_options.DEFAULT_STARTUP_TIMEOUT
        watched = options.on_report is not None or bool(
            options.progress or (options.progress is None and sys.stderr.isatty())
        )
        return ModalDispatch(
            function,
            window=_WINDOW,
            startup_timeout=startup,
            queue=self.session.queue,
            live=watched,
            stream=kind.kind == "stream",
        )

    def launcher(self, name: str, options: Options) -> Launcher:
        from mini.modal_backend.runs import ModalLauncher

        return ModalLauncher(self.session, name, options)

    def volume_store(self, name: str) -> VolumeStore:
        return self.session.volume(name)

    def close(self) -> None:
        _loop.close(self.session.aclose())
