"""Containers: processes of an image's environment running Modal's own container runtime.

    container = Container(spec, workdir / "containers")
    await container.start(handlers, on_log)     # `python -m modal._container_entrypoint` in its own folder
    await container.settle_logs()               # everything it printed so far has reached `on_log`
    code = await container.wait()

Each container gets a folder of its own: `fs/` is its filesystem, `fs/root` its `/root` (working directory
and only PYTHONPATH entry) holding the files mounted there and the volumes mounted under `/root`. The
runtime is the modal client's `_container_entrypoint`, as in a Modal container: it fetches inputs with
FunctionGetInputs, runs them (batches, input concurrency, generators, cancellation through
ContainerHeartbeat are all its own doing), sends outputs with FunctionPutOutputs, and commits volumes when
it exits. It reaches the emulator as a Modal container reaches the control plane, through an endpoint of
its own worker: here a gRPC server on a unix socket in the container's folder (`MODAL_SERVER_URL`). Every
request arriving there is tagged with the container's task id (metadata `x-modal-emulator-task-id`), which
is how the emulator knows who is asking; the container's client, `MODAL_IS_REMOTE=1`, is of type
CONTAINER and sends no token, as on Modal.
"""

from __future__ import annotations

import array
import asyncio
import codecs
import contextlib
import fcntl
import os
import shutil
import signal
import termios
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib.events import RecvRequest, listen
from grpclib.server import Server
from modal_proto import api_pb2

from tests.emulator.ids import new_id

TASK_HEADER = "x-modal-emulator-task-id"
# A partial line (no newline yet) is forwarded after the stream has been quiet this long.
PARTIAL_LINE_DELAY = 0.2

LogSink = Callable[["Container", str, list[str]], None]  # container, "stdout" or "stderr", lines


@dataclass(frozen=True)
class ContainerSpec:
    """What every container of one function is started from.

    `files` maps container paths to the files holding their contents; `arguments` is the
    ContainerArguments the runtime reads (task id left out: each container has its own).
    """

    python: Path
    env: dict[str, str]
    files: dict[str, Path]
    arguments: api_pb2.ContainerArguments


@dataclass(eq=False)
class Container:
    """One container: its folder, process and endpoint, and what the emulator tracks about it."""

    spec: ContainerSpec
    parent: Path
    task_id: str = field(default_factory=lambda: new_id("ta"))
    running: dict[str, Any] = field(default_factory=dict)  # input id -> the attempt running here
    views: dict[str, Any] = field(default_factory=dict)  # volume id -> its View
    pending_cancellations: list[str] = field(default_factory=list)
    cancellation: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False  # asked to stop: its next FunctionGetInputs gets the kill switch
    fetched: bool = False  # it asked for inputs at least once (start-up is over)
    expected_exit: bool = False  # the emulator made it exit; its other inputs go back to the queue
    peak_running: int = 0
    idle_since: float = 0.0  # event-loop time since which it runs no input
    _process: asyncio.subprocess.Process | None = None
    _server: Server | None = None
    _logs: dict[str, _LogPipe] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.parent / self.task_id

    @property
    def root(self) -> Path:
        """The container's `/root`."""
        return self.folder / "fs" / "root"

    def path_of(self, container_path: str) -> Path:
        """Where a path of the container's filesystem lives on this machine."""
        return self.folder / "fs" / container_path.lstrip("/")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def write_filesystem(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        for container_path, contents in self.spec.files.items():
            target = self.path_of(container_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(contents, target)
        self.root.mkdir(parents=True, exist_ok=True)

    async def start(self, handlers: list[Any], on_log: LogSink, on_request: Callable[[str], None]) -> None:
        """Open the container's endpoint and start its runtime (`write_filesystem` and volumes first);
        `on_request` is told the name of every RPC arriving through the endpoint."""
        socket_path = self.folder / "modal.sock"
        self._server = Server(handlers)

        async def tag_request(event: RecvRequest) -> None:
            on_request(event.method_name.rsplit("/", 1)[-1])
            event.metadata[TASK_HEADER] = self.task_id

        listen(self._server, RecvRequest, tag_request)
        await self._server.start(path=str(socket_path))
        arguments = api_pb2.ContainerArguments()
        arguments.CopyFrom(self.spec.arguments)
        arguments.task_id = self.task_id
        arguments_path = self.folder / "container_arguments.bin"
        arguments_path.write_bytes(arguments.SerializeToString())
        env = {
            **self.spec.env,
            "PYTHONPATH": str(self.root),
            "PYTHONUNBUFFERED": "1",
            "MODAL_IS_REMOTE": "1",
            "MODAL_TASK_ID": self.task_id,
            "MODAL_SERVER_URL": f"unix://{socket_path}",
            "MODAL_CONTAINER_ARGUMENTS_PATH": str(arguments_path),
            "MODAL_IMAGE_ID": arguments.function_def.image_id,
            "MODAL_ENVIRONMENT": arguments.environment_name,
        }
        loop = asyncio.get_running_loop()
        pipes = {name: os.pipe() for name in ("stdout", "stderr")}
        try:
            # `-s`: no user site-packages; `-m`: the working directory (`/root`) is first on sys.path.
            self._process = await asyncio.create_subprocess_exec(
                str(self.spec.python),
                "-s",
                "-m",
                "modal._container_entrypoint",
                cwd=self.root,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=pipes["stdout"][1],
                stderr=pipes["stderr"][1],
                start_new_session=True,
            )
        finally:
            for _, write_end in pipes.values():
                os.close(write_end)
        for name, (read_end, _) in pipes.items():
            pipe = _LogPipe(read_end, lambda lines, name=name: on_log(self, name, lines))
            await loop.connect_read_pipe(lambda pipe=pipe: pipe, os.fdopen(read_end, "rb", buffering=0))
            self._logs[name] = pipe

    async def settle_logs(self) -> None:
        """Wait until everything the container wrote to stdout and stderr until now has been forwarded."""
        await asyncio.gather(*(pipe.settle() for pipe in self._logs.values()))

    def cancel_inputs(self, input_ids: list[str]) -> None:
        """Have the runtime cancel these inputs (answered on its next ContainerHeartbeat)."""
        self.pending_cancellations.extend(input_ids)
        self.cancellation.set()

    def take_cancellations(self) -> list[str]:
        taken, self.pending_cancellations = self.pending_cancellations, []
        self.cancellation.clear()
        return taken

    def interrupt(self) -> None:
        """SIGINT: Modal's runtime unwinds (exit handlers, the final volume commit) and exits."""
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    async def wait(self) -> int:
        """The exit code, once the process has exited and its output has been forwarded."""
        assert self._process is not None
        code = await self._process.wait()
        # A subprocess that left the container's process group may hold the pipes open: do not wait for it.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(pipe.closed for pipe in self._logs.values())), 2)
        return code

    async def close(self) -> None:
        """Release the endpoint (the process has exited)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _signal(self, number: int) -> None:
        if self._process is not None and self._process.returncode is None:
            # The container's processes form one group, as a container's do: user subprocesses go too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, number)


class _LogPipe(asyncio.Protocol):
    """One of a container's output streams, forwarded line by line as it is read.

    A line is forwarded when its newline arrives; a partial line when the stream has been quiet for
    `PARTIAL_LINE_DELAY`, when `settle()` is called, or at the end of the stream.
    """

    def __init__(self, fd: int, forward: Callable[[list[str]], None]) -> None:
        self._fd = fd
        self._forward = forward
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._flush: asyncio.TimerHandle | None = None
        self._received = 0
        self._progress = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        self._progress.set()
        lines = (self._partial + self._decoder.decode(data)).splitlines(keepends=True)
        self._partial = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        if lines:
            self._forward(lines)
        if self._flush is not None:
            self._flush.cancel()
        if self._partial:
            self._flush = asyncio.get_running_loop().call_later(PARTIAL_LINE_DELAY, self._forward_partial)

    def connection_lost(self, exc: Exception | None) -> None:
        self._partial += self._decoder.decode(b"", final=True)
        self._forward_partial()
        self._progress.set()
        if not self.closed.done():
            self.closed.set_result(None)

    async def settle(self) -> None:
        # Bytes already written but not yet read sit in the pipe; FIONREAD counts them.
        if not self.closed.done():  # else everything was read (and the descriptor may be another file's)
            try:
                pending = array.array("i", [0])
                fcntl.ioctl(self._fd, termios.FIONREAD, pending)
            except OSError:
                pending = array.array("i", [0])
            target = self._received + pending[0]
            while self._received < target and not self.closed.done():
                self._progress.clear()
                await self._progress.wait()
        self._forward_partial()

    def _forward_partial(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._partial:
            partial, self._partial = self._partial, ""
            self._forward([partial])
