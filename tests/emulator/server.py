"""Starting and stopping the emulator, and pointing modal clients at it.

    with run_emulator() as emulator, emulator.client_environment():
        with app.run():
            square.remote(3)
    emulator.recorder.rpc_counts["FunctionMap"]

The emulator runs its own event loop in a background thread: a grpclib server on 127.0.0.1 (plain
HTTP/2, or TLS with the `ssl` context given) plus the HTTP blob store. Calls without the emulator's
token are refused with UNAUTHENTICATED, which the modal client raises as `modal.exception.AuthError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

from grpclib import GRPCError, Status
from grpclib.events import RecvRequest, listen
from grpclib.server import Server

from mini.local._environ import applied
from tests.emulator.blobs import BlobStore
from tests.emulator.container_service import ContainerService
from tests.emulator.containers import TASK_HEADER
from tests.emulator.dict_service import DictService
from tests.emulator.log_service import LogService
from tests.emulator.queue_service import QueueService
from tests.emulator.recorder import Recorder
from tests.emulator.rpc import Unimplemented
from tests.emulator.servicer import Servicer
from tests.emulator.volume_service import VolumeService

TOKEN_ID = "ak-emulator"
TOKEN_SECRET = "as-emulator"
# Clients heartbeat every 15 s; an ephemeral app that misses four in a row has lost its client.
APP_HEARTBEAT_TIMEOUT = 60.0
# Modal commits the volumes a container mounts "every few seconds" while it runs.
BACKGROUND_COMMIT_SECS = 5.0
# Modal refuses an unknown token with status UNAUTHENTICATED, which the client raises as AuthError;
# the wording is the emulator's own.
INVALID_TOKEN_MESSAGE = "Token ID or secret is invalid. Run `modal token new` to create a new token."


class Emulator:
    """A running emulator. `url` is what MODAL_SERVER_URL must be; `recorder` holds what it saw."""

    def __init__(
        self,
        *,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        heartbeat_timeout: float = APP_HEARTBEAT_TIMEOUT,
        client_retries: bool = False,
        background_commit_secs: float | None = BACKGROUND_COMMIT_SECS,
    ) -> None:
        self.recorder = Recorder()
        self._client_retries = client_retries
        self._background_commit_secs = background_commit_secs
        self.port = port
        self._ssl = ssl_context
        self._heartbeat_timeout = heartbeat_timeout
        self._workdir = Path(tempfile.mkdtemp(prefix="modal-emulator-"))
        self._config_path = self._workdir / "modal.toml"
        self._config_path.write_text("")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._servicer: Servicer | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        host = "localhost" if self._ssl is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        started: Future[None] = Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),), daemon=True)
        self._thread.start()
        started.result(timeout=30)

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def client_variables(
        self, *, token_id: str = TOKEN_ID, token_secret: str = TOKEN_SECRET
    ) -> dict[str, str]:
        """The environment variables that point a modal client (in this or another process) here."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": token_id,
            "MODAL_TOKEN_SECRET": token_secret,
            "MODAL_CONFIG_PATH": str(self._config_path),
        }

    @contextlib.contextmanager
    def client_environment(self, **tokens: str) -> Iterator[None]:
        """Set `client_variables()` in os.environ for the block (subprocesses inherit them), then restore.

        modal reads its config file once, at import: the loaded file contents are swapped for the
        emulator's empty one too, and modal's cached client is dropped so the next call connects here.
        """
        with client_environment(self.client_variables(**tokens)):
            yield

    def add_secret(self, name: str, env: dict[str, str]) -> None:
        """Make `modal.Secret.from_name(name)` resolve to `env` (Modal's named secrets live server-side)."""
        assert self._loop is not None and self._servicer is not None
        servicer = self._servicer

        async def add() -> None:
            servicer.add_secret(name, env)

        asyncio.run_coroutine_threadsafe(add(), self._loop).result(timeout=30)

    @contextlib.contextmanager
    def scarce(self, gpu_type: str) -> Iterator[None]:
        """While the block runs no `gpu_type` GPU is free: functions asking only for it start no container,
        and their inputs wait in the queue (as on Modal while that GPU is scarce)."""
        assert self._loop is not None and self._servicer is not None
        scarce, kind = self._servicer.runner.scarce_gpus, gpu_type.upper()

        async def change(add: bool) -> None:
            scarce.add(kind) if add else scarce.discard(kind)

        asyncio.run_coroutine_threadsafe(change(True), self._loop).result(timeout=30)
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(change(False), self._loop).result(timeout=30)

    async def _serve(self, started: Future[None]) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            blobs = BlobStore(self._workdir / "blobs")
            await blobs.start()
            self._servicer = servicer = Servicer(
                recorder=self.recorder,
                blobs=blobs,
                workdir=self._workdir,
                client_retries=self._client_retries,
                background_commit_secs=self._background_commit_secs,
            )
            handlers = [
                Unimplemented(self.recorder),
                servicer,
                VolumeService(
                    volumes=servicer.volumes,
                    files=servicer.files,
                    runner=servicer.runner,
                    recorder=self.recorder,
                ),
                ContainerService(servicer.runner, servicer.calls),
                LogService(servicer.app_logs),
                QueueService(),
                DictService(),
            ]
            # Containers are served the same API through endpoints of their own (see containers.py).
            servicer.runner.handlers = handlers
            server = Server(handlers)
            listen(server, RecvRequest, self._on_request)
            if self._ssl is not None:
                self._ssl.set_alpn_protocols(["h2"])
            await server.start("127.0.0.1", self.port, ssl=self._ssl)
            self.port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as exc:
            started.set_exception(exc)
            raise
        started.set_result(None)
        expiry = asyncio.create_task(self._servicer.expire_silent_apps(self._heartbeat_timeout))
        await self._stopped.wait()
        expiry.cancel()
        await self._servicer.shutdown()
        server.close()
        await server.wait_closed()
        await blobs.stop()

    async def _on_request(self, event: RecvRequest) -> None:
        method = event.method_name.rsplit("/", 1)[-1]
        self.recorder.count_rpc(method)
        metadata = event.metadata
        # Only a container's own endpoint says which container is asking.
        metadata.pop(TASK_HEADER, None)
        if (
            metadata.get("x-modal-token-id") != TOKEN_ID
            or metadata.get("x-modal-token-secret") != TOKEN_SECRET
        ):
            raise GRPCError(Status.UNAUTHENTICATED, INVALID_TOKEN_MESSAGE)


@contextlib.contextmanager
def client_environment(variables: dict[str, str]) -> Iterator[None]:
    """Point this process's modal client at the emulator `variables` name (its `client_variables()`, or
    the `export` lines `python -m tests.emulator` prints) for the block, as `Emulator.client_environment`
    does; restore everything after."""
    import modal.config

    saved_config = (modal.config._user_config, modal.config.user_config_path)
    with applied(variables):
        modal.config._user_config, modal.config.user_config_path = {}, variables["MODAL_CONFIG_PATH"]
        _drop_cached_client()
        try:
            yield
        finally:
            modal.config._user_config, modal.config.user_config_path = saved_config
            _drop_cached_client()


def _drop_cached_client() -> None:
    from modal.client import _Client

    _Client._set_env_client(None)


@contextlib.contextmanager
def run_emulator(
    *,
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    heartbeat_timeout: float = APP_HEARTBEAT_TIMEOUT,
    client_retries: bool = False,
    background_commit_secs: float | None = BACKGROUND_COMMIT_SECS,
) -> Iterator[Emulator]:
    """Start an emulator for the block (a free port unless `port` is given; TLS if `ssl_context`).

    An ephemeral app whose client sends no heartbeat for `heartbeat_timeout` seconds is stopped. With
    `client_retries`, maps retry failed inputs from the client (FunctionMap answers
    `sync_client_retries_enabled`, and the client sends FunctionRetryInputs), as Modal has its clients do;
    otherwise the emulator retries them itself. Containers commit the volumes they mount every
    `background_commit_secs` (None: only when they call `commit()` and when they exit).

    with run_emulator() as emulator, emulator.client_environment():
        ...
    """
    emulator = Emulator(
        port=port,
        ssl_context=ssl_context,
        heartbeat_timeout=heartbeat_timeout,
        client_retries=client_retries,
        background_commit_secs=background_commit_secs,
    )
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
