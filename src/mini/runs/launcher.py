"""What a backend implements for detached runs: a `Launcher` to start calls (and a `Monitor` to watch
them, in `mini.runs.monitor`).

The two halves are separate because they run in different processes: the launcher lives in the process
that called `spawn`, with an apparatus and its options; the monitor is loaded later, in any process on
the same checkout, from nothing but the run record (whose `monitor` field names its class). Everything
else (the registry, handles, waiting, the CLI) is written once, in `mini.runs`.

A backend plugs in with
    class ModalLauncher(Launcher):
        backend = "modal"
        monitor = "mini.modal_backend.runs:ModalMonitor"
        def launch(self, run, fn_blob, calls): ...        # spawn in a detached app; return call ids
    class ModalMonitor(Monitor): ...                       # state/cancel/logs from those ids
and its `mini.backend.Backend.launcher` returning a `ModalLauncher`; `Launcher.start` records the run and
calls `launch`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from mini.options import Options
    from mini.runs.handles import Run
    from mini.runs.registry import RunFolder
    from mini.serialization import Call


class Launcher(ABC):
    """Starts calls that outlive the launching process. One per `spawn`/`spawn_map`."""

    backend: ClassVar[str]
    monitor: ClassVar[str]  # "module:Class" of the matching Monitor, stored in each run record

    @abstractmethod
    def launch(self, run: RunFolder, fn_blob: bytes, calls: Sequence[Call]) -> list[str | None]:
        """Start every call detached and return at once with each call's backend id, in order (None for
        an id the backend assigns only when the call starts; `Monitor.backend_id` then reports it).

        `run` already holds `function.pkl` and each call's `payload.pkl`. Raise before starting anything
        if the calls cannot be started (bad options, no credentials), so no half-launched run is left.
        """

    def settings(self) -> dict[str, Any]:
        """What to record about how the calls run (workers, GPU, ...): JSON-serialisable."""
        return {}

    def relaunch(self) -> tuple[dict[str, Any], Options] | None:
        """How to make this launcher again in another process, for `mini retry`: the keyword arguments of
        the backend's apparatus (`mini.backends.make(self.backend, name, **settings)`, JSON-serialisable)
        and the options the calls run under. None: its runs cannot be retried."""
        return None

    def start(
        self,
        apparatus: str,
        fn: Callable[..., Any],
        arg_tuples: Iterable[Iterable[Any]],
        kwargs: Mapping[str, Any] | None,
        *,
        kind: str,
        label: str | None = None,
        backend: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Run[Any]:
        """Record a run of `fn` over `arg_tuples` (for apparatus `apparatus`) and launch its calls here;
        see `mini.runs.launch.launch` for `label`, `backend` and `settings`.

        >>> run = backend.launcher("sweep", options).start("sweep", train, [(1e-3,)], None, kind="spawn_map")
        """
        from mini.runs.launch import launch

        return launch(
            self,
            apparatus,
            fn,
            arg_tuples,
            kwargs,
            kind=kind,
            label=label,
            backend=backend,
            settings=settings,
        )

    def image_hash(self) -> str | None:
        """The content hash of the image the calls run in, or None when there is no image (local)."""
        return None
