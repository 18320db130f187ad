"""`ModalBackend`: calls run in Modal containers (on GPUs if asked), one ephemeral app per function."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from mini import _loop
from mini.backend import Backend, Capabilities
from mini.modal_backend import options as modal_options
from mini.modal_backend.session import Session, function_name

if TYPE_CHECKING:
    from mini.dispatch import Dispatch
    from mini.options import Options
    from mini.runs.launcher import Launcher
    from mini.volumes import VolumeStore

# Inputs in flight per map: enough to keep many containers busy, few enough to bound memory.
_WINDOW = 512


class ModalBackend(Backend):
    """The Modal session of a `ModalApparatus` and its `.w()` variants.

    >>> app = Apparatus("sweep", ModalBackend("sweep"))
    """

    kind: ClassVar[str] = "modal"
    # Modal retries failed inputs itself (its retry policy), and containers are other machines.
    capabilities = Capabilities(retries=True, own_memory=True)

    def __init__(self, name: str) -> None:
        self.session = Session(name)

    def check(self, options: Options) -> None:
        modal_options.check(options)

    async def open_dispatch(
        self, fn: Callable[..., Any], fn_blob: bytes, options: Options, *, ordered: bool
    ) -> Dispatch:
        from mini.modal_backend.dispatch import ModalDispatch

        name = function_name(fn, fn_blob, options, list(self.session.volumes))
        function = await self.session.function_for(name, fn_blob, options)
        startup = options.startup_timeout or modal_options.DEFAULT_STARTUP_TIMEOUT
        return ModalDispatch(function, window=_WINDOW, startup_timeout=startup)

    def launcher(self, name: str, options: Options) -> Launcher:
        from mini.modal_backend.runs import ModalLauncher

        return ModalLauncher(self.session, name, options)

    def volume_store(self, name: str) -> VolumeStore:
        return self.session.volume(name)

    def close(self) -> None:
        _loop.close(self.session.aclose())
