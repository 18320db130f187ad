"""Containers: worker processes of an image's environment, each running one input at a time.

    pool = ContainerPool(spec, max_containers=2, scaledown_window=60, on_log=print)
    reply = await pool.run({"args": payload, "data_format": 1}, timeout=60)
    reply["status"]   # "success" (with "data") or "failure" (with the pickled exception and traceback)
    await pool.shutdown()

A container is started on demand (up to `max_containers` at once), is reused by later inputs, stops
after `scaledown_window` seconds idle, and is killed when its input times out or is cancelled, as
Modal does with a container.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_ENTRYPOINT_SOURCE = (Path(__file__).parent / "entrypoint.py").read_text()
_task_ids = itertools.count(1)
# The entrypoint writes this after each reply's output so the logs are complete before the reply is used.
_FLUSH_MARK = b"\0"


class ContainerExited(Exception):
    """The worker process died while running an input."""


LogSink = Callable[[str, str], None]


@dataclass(frozen=True)
class ContainerSpec:
    """What every container of one function is started from.

    `definition` is the first message a container reads: `function_serialized`, `module_name`,
    `function_name`. `workdir` holds the mounted files (the container's `/root`); it is the working
    directory and the only entry of PYTHONPATH.
    """

    python: Path
    workdir: Path
    env: dict[str, str]
    definition: dict[str, object]


class Container:
    """One worker process."""

    def __init__(self, spec: ContainerSpec, on_log: LogSink) -> None:
        self.task_id = f"ta-{next(_task_ids)}"
        self._spec = spec
        self._on_log = on_log
        self._process: asyncio.subprocess.Process | None = None
        self._replies: asyncio.StreamReader | None = None
        self._marks: dict[str, asyncio.Queue[None]] = {"stdout": asyncio.Queue(), "stderr": asyncio.Queue()}
        self._readers: list[asyncio.Task] = []
        self._reply_transport: asyncio.ReadTransport | None = None

    async def start(self) -> None:
        read_end, write_end = os.pipe()
        env = {
            **self._spec.env,
            "PYTHONPATH": str(self._spec.workdir),
            "PYTHONUNBUFFERED": "1",
            "MODAL_IS_REMOTE": "1",
            "MODAL_TASK_ID": self.task_id,
            "MODAL_EMULATOR_REPLY_FD": str(write_end),
        }
        try:
            # `-s`: no user site-packages; `-c`: nothing of this folder lands on sys.path.
            self._process = await asyncio.create_subprocess_exec(
                str(self._spec.python),
                "-s",
                "-c",
                _ENTRYPOINT_SOURCE,
                cwd=self._spec.workdir,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_end,),
            )
        finally:
            os.close(write_end)
        loop = asyncio.get_running_loop()
        self._replies = asyncio.StreamReader(limit=1 << 20)
        self._reply_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._replies), os.fdopen(read_end, "rb", buffering=0)
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._readers = [
            asyncio.create_task(self._forward_logs(self._process.stdout, "stdout")),
            asyncio.create_task(self._forward_logs(self._process.stderr, "stderr")),
        ]
        await self._send(self._spec.definition)
        await self._read_reply()  # "ready": the function is loaded, so start-up is not billed to an input

    async def run(self, message: dict[str, object], timeout: float | None) -> dict[str, object]:
        """Send one input and wait for its reply; `asyncio.TimeoutError` after `timeout` seconds."""
        await self._send(message)
        return await asyncio.wait_for(self._receive(), timeout)

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def stop(self) -> None:
        self.kill()
        if self._process is not None:
            await self._process.wait()
            if self._process.stdin is not None:
                self._process.stdin.close()
        # The log readers end at EOF; letting them drain lets asyncio close the process's pipes.
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._reply_transport is not None:
            self._reply_transport.close()

    async def _send(self, message: dict[str, object]) -> None:
        assert self._process is not None and self._process.stdin is not None
        payload = pickle.dumps(message, protocol=4)
        try:
            self._process.stdin.write(struct.pack(">I", len(payload)) + payload)
            await self._process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ContainerExited(await self._exit_description()) from exc

    async def _read_reply(self) -> dict[str, object]:
        assert self._replies is not None
        try:
            (size,) = struct.unpack(">I", await self._replies.readexactly(4))
            return pickle.loads(await self._replies.readexactly(size))
        except asyncio.IncompleteReadError as exc:
            raise ContainerExited(await self._exit_description()) from exc

    async def _receive(self) -> dict[str, object]:
        reply = await self._read_reply()
        for marks in self._marks.values():
            await marks.get()
        return reply

    async def _exit_description(self) -> str:
        assert self._process is not None
        code = await self._process.wait()
        return f"the container running the input exited unexpectedly with code {code}"

    async def _forward_logs(self, stream: asyncio.StreamReader, name: str) -> None:
        while chunk := await stream.read(1 << 16):
            pieces = chunk.split(_FLUSH_MARK)
            for position, piece in enumerate(pieces):
                if piece:
                    self._on_log(name, piece.decode(errors="replace"))
                if position < len(pieces) - 1:
                    self._marks[name].put_nowait(None)


@dataclass
class ContainerPool:
    """The containers of one function, at most `max_containers` of them running inputs at once.

    A container left idle for `scaledown_window` seconds is stopped, as Modal scales a function down.
    """

    spec: ContainerSpec
    max_containers: int
    scaledown_window: float
    on_log: LogSink
    running: int = 0
    peak_running: int = 0
    _idle: dict[Container, asyncio.TimerHandle] = field(default_factory=dict)
    _all: set[Container] = field(default_factory=set)
    _stopping: set[asyncio.Task] = field(default_factory=set)
    _slots: asyncio.Semaphore | None = None

    async def run(self, message: dict[str, object], timeout: float | None) -> dict[str, object]:
        """Run one input in an idle container (or a new one); a container whose input did not finish
        cleanly (timeout, cancellation, crash) is killed rather than reused."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_containers)
        async with self._slots:
            container = self._take_idle() or await self._start()
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            try:
                reply = await container.run(message, timeout)
            except BaseException:
                self._all.discard(container)
                await container.stop()
                raise
            finally:
                self.running -= 1
            loop = asyncio.get_running_loop()
            self._idle[container] = loop.call_later(self.scaledown_window, self._scale_down, container)
            return reply

    async def shutdown(self) -> None:
        for timer in self._idle.values():
            timer.cancel()
        containers, self._all, self._idle = list(self._all), set(), {}
        await asyncio.gather(*self._stopping, *(container.stop() for container in containers))

    def _take_idle(self) -> Container | None:
        if not self._idle:
            return None
        container, timer = self._idle.popitem()
        timer.cancel()
        return container

    def _scale_down(self, container: Container) -> None:
        if self._idle.pop(container, None) is None:
            return
        self._all.discard(container)
        stopping = asyncio.get_running_loop().create_task(container.stop())
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)

    async def _start(self) -> Container:
        container = Container(self.spec, self.on_log)
        self._all.add(container)
        await container.start()
        return container
