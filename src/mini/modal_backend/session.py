"""The Modal side of an apparatus: its image spec, images and running apps, and how functions are named.

One `Session` is shared by a `ModalApparatus` and its `.w()` variants. A running Modal app cannot gain
functions, so each (function, options) pair gets an ephemeral app of its own; all share the images.

>>> session = Session("sweep")
>>> function = await session.function_for("train-3fa2c1", fn_blob, options)   # starts its app once
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import math
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mini import _loop
from mini.modal_backend import options as modal_options
from mini.modal_backend.auth import token_error
from mini.options import Options

if TYPE_CHECKING:
    from mini.image import ImageSpec
    from mini.modal_backend.volumes import ModalVolumeStore


# Sessions with a running app, held here so that an apparatus dropped without close() still has its apps
# stopped at exit; otherwise an ephemeral app lingers (and bills) until Modal notices missing heartbeats.
_with_running_apps: set[Session] = set()


def _stop_apps_at_exit() -> None:
    # Registered when the first app starts, after modal's own exit hooks (atexit runs in reverse order),
    # so it runs while both mini's loop and modal's client can still stop the apps.
    for session in list(_with_running_apps):
        with contextlib.suppress(Exception):
            _loop.wait(session.aclose())


class Session:
    """What an apparatus and its variants share: the image spec, images, volumes and the running apps."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._spec: Any = None
        self._images: dict[int, Any] = {}
        # Mounted in every function started from now on; a function's name covers them (`function_name`),
        # so a volume made after a function's app started gets that function a new app.
        self.volumes: dict[str, ModalVolumeStore] = {}
        # One ephemeral app per function (a running app cannot gain functions), each with its exit stack.
        self._running: dict[str, tuple[Any, contextlib.AsyncExitStack]] = {}
        self._lock: asyncio.Lock | None = None
        # Where the inputs of every function of the session put their events (`container.py`): an
        # ephemeral queue, one partition per function call, alive as long as the session.
        self._events: tuple[Any, contextlib.AsyncExitStack] | None = None

    @property
    def queue(self) -> Any:
        """The session's event queue (once a function has started)."""
        return self._events[0] if self._events is not None else None

    async def function_for(
        self, name: str, fn_blob: bytes, options: Options, kind: Entry | None = None
    ) -> Any:
        """The running Modal function `name`, for `fn_blob` under `options` (`kind`: which entry runs it);
        its app is started on first use."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if name not in self._running:
                if self._events is None:
                    self._events = await _open_queue()
                stack = contextlib.AsyncExitStack()
                try:
                    function = await self._start(name, fn_blob, options, stack, kind or Entry())
                except BaseException:
                    await stack.aclose()
                    raise
                self._running[name] = (function, stack)
                if not _with_running_apps:
                    atexit.unregister(_stop_apps_at_exit)
                    atexit.register(_stop_apps_at_exit)
                _with_running_apps.add(self)
            return self._running[name][0]

    def volume(self, name: str) -> ModalVolumeStore:
        """The store of mini volume `name`: a Modal Volume named after the project and `name`."""
        if name not in self.volumes:
            from mini.image.project import read_pyproject
            from mini.modal_backend.volumes import ModalVolumeStore, modal_volume_name
            from mini.project import find_project_root

            root = find_project_root()
            project = read_pyproject(root).get("project", {}).get("name") or root.name
            self.volumes[name] = ModalVolumeStore(name, modal_volume_name(project, name))
        return self.volumes[name]

    async def stop(self, name: str) -> None:
        """Stop the app running `name`, killing its containers; the next call starts it afresh."""
        entry = self._running.pop(name, None)
        if not self._running:
            _with_running_apps.discard(self)
        if entry is not None:
            await entry[1].aclose()

    async def image_spec(self) -> ImageSpec:
        """The project's image spec, derived once per session (it may run `uv`, so off the loop)."""
        if self._spec is None:
            from mini.image import derive_image_spec

            self._spec = await asyncio.get_running_loop().run_in_executor(None, derive_image_spec)
        return self._spec

    async def new_app(
        self, name: str, fn_blob: bytes, options: Options, kind: Entry | None = None, queue: Any = None
    ) -> tuple[Any, Any]:
        """A `modal.App` (not running yet) whose one function, `name`, runs `fn_blob` in this session's
        image under `options`, through the entry `kind` describes, its inputs' events going to `queue` (a
        `modal.Queue`, or a channel of `mini.modal_backend.container`); returns the app and the function."""
        from mini.tls import ensure_grpc_trusts_system_ca

        ensure_grpc_trusts_system_ca()  # before modal opens its first connection
        import modal

        from mini.modal_backend.entry import bind
        from mini.modal_backend.image import build_image
        from mini.modal_backend.volumes import mounts

        spec = await self.image_spec()
        key = id(options.image)
        if key not in self._images:
            self._images[key] = build_image(spec, options.image)
        arguments = modal_options.function_arguments(options)
        if options.timeout:
            arguments["timeout"] = max(1, math.ceil(options.timeout))
        stores = list(self.volumes.values())
        if stores:
            arguments["volumes"] = {**arguments.get("volumes", {}), **mounts(stores)}
        kind = kind or Entry()
        if kind.kind == "stream":
            arguments.pop("retries", None)  # values already read cannot be taken back (nor does Modal try)
        entry = bind(
            fn_blob,
            kind=kind.kind,
            queue=queue,
            parameters=list(kind.parameters),
            is_async=kind.is_async,
            volumes=[store.modal_volume() for store in stores],
        )
        if kind.kind == "batch":
            entry = modal.batched(
                max_batch_size=options.max_batch_size or 1, wait_ms=int(options.batch_wait_ms or 0)
            )(entry)
        if options.concurrent_inputs and options.concurrent_inputs > 1:
            entry = modal.concurrent(max_inputs=options.concurrent_inputs)(entry)
        app = modal.App(f"mini-{self._name}")
        function = app.function(
            name=name, serialized=True, image=self._images[key], include_source=False, **arguments
        )(entry)
        return app, function

    async def _start(
        self, name: str, fn_blob: bytes, options: Options, stack: contextlib.AsyncExitStack, kind: Entry
    ) -> Any:
        app, function = await self.new_app(name, fn_blob, options, kind, self.queue)
        await run_app(app, options, stack)
        self.announce(name, options)
        return function

    def announce(self, name: str, options: Options) -> None:
        """Note that the session's spec was dispatched, and say so in one line on a terminal."""
        from mini.image import record_dispatched_spec
        from mini.image.report import format_summary

        spec = self._spec
        record_dispatched_spec(spec)
        if options.progress is None and sys.stderr.isatty():  # progress=True shows Modal's own output
            print(f"mini: {format_summary(spec)}, function {name}", file=sys.stderr)

    async def aclose(self) -> None:
        for name in list(self._running):
            await self.stop(name)
        events, self._events = self._events, None
        if events is not None:
            with contextlib.suppress(Exception):
                await events[1].aclose()


@dataclass(frozen=True)
class Entry:
    """Which of mini's entries a function runs (`mini.modal_backend.entry.bind`): "call", "stream" (a
    generator) or "batch" (with the parameters Modal's batching passes by name), for an `async def`
    function (or async generator) or not."""

    kind: str = "call"
    parameters: tuple[str, ...] = ()
    is_async: bool = False


async def _open_queue() -> tuple[Any, contextlib.AsyncExitStack]:
    import modal

    stack = contextlib.AsyncExitStack()
    try:
        queue = await stack.enter_async_context(modal.Queue.ephemeral())
    except modal.exception.AuthError:
        raise token_error() from None
    return queue, stack


async def run_app(app: Any, options: Options, stack: contextlib.AsyncExitStack, detach: bool = False) -> None:
    """Start `app` inside `stack` (stopped, or left running if `detach`, when the stack closes)."""
    import modal

    try:
        if options.progress:
            await stack.enter_async_context(_output())
        await stack.enter_async_context(app.run.aio(detach=detach))
    except modal.exception.AuthError:
        raise token_error() from None


@contextlib.asynccontextmanager
async def _output() -> AsyncIterator[None]:
    import modal

    with modal.enable_output():
        yield


def function_name(
    fn: Callable[..., Any], fn_blob: bytes, options: Options, volumes: Iterable[str] = ()
) -> str:
    """`train-3fa2c1`: readable on the dashboard, and distinct per function body, options and mounted
    volumes, since Modal lets a later function of the same name replace an earlier one."""
    return readable_name(getattr(fn, "__name__", "call"), fn_blob, options, volumes)


def readable_name(base: str, fn_blob: bytes, options: Options, volumes: Iterable[str] = ()) -> str:
    """`function_name` from the function's name alone (a detached launch has only the pickled function)."""
    base = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "call"
    settings = repr(sorted(options.where_calls_run().items())) + (repr(sorted(volumes)) if volumes else "")
    digest = hashlib.sha256(fn_blob + settings.encode()).hexdigest()[:6]
    return f"{base[:40]}-{digest}"
