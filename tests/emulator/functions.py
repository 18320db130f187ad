"""Created functions and their inputs: each input becomes a task that runs it in the function's containers.

    runner = FunctionRunner(images=builds, blobs=blobs, recorder=recorder, workdir=tmp, provision=...)
    item = runner.put_input(function, call, idx=0, args=payload, data_format=api_pb2.DATA_FORMAT_PICKLE)
    outputs, _ = await call.wait_outputs(after_entry=0, timeout=55, max_bytes=16 << 20)

A function's containers start with its first input: its image's environment, a folder holding its
mounted files (the container's `/root`), and the environment variables of its image and secrets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modal_proto import api_pb2

from tests.emulator.blobs import BlobStore
from tests.emulator.calls import FunctionCall, Input
from tests.emulator.execution import ExecutionPolicy, run_input
from tests.emulator.image_builds import ImageBuilds
from tests.emulator.recorder import FunctionRecord, Recorder
from tests.emulator.workers import ContainerPool, ContainerSpec, LogSink

DEFAULT_MAX_CONTAINERS = 4
DEFAULT_SCALEDOWN_WINDOW = 60  # seconds, Modal's default
# Environment variables a container inherits from the emulator's host; everything else comes from
# the image's ENV lines and the function's secrets, as on Modal.
_HOST_VARIABLES = ("PATH", "HOME", "LANG", "TMPDIR", "UV_CACHE_DIR", "XDG_CACHE_HOME")


@dataclass(frozen=True)
class Provision:
    """What a function's containers get besides their image: mounted files, secrets, where logs go."""

    files: dict[str, bytes]
    secret_env: dict[str, str]
    on_log: LogSink


@dataclass
class EmulatedFunction:
    record: FunctionRecord
    definition: api_pb2.Function
    pool: ContainerPool | None = None
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)


class FunctionRunner:
    """Runs inputs; `provision(function)` supplies what its containers need when the first one starts."""

    def __init__(
        self,
        *,
        images: ImageBuilds,
        blobs: BlobStore,
        recorder: Recorder,
        workdir: Path,
        provision: Callable[[EmulatedFunction], Provision],
    ) -> None:
        self._images = images
        self._blobs = blobs
        self._recorder = recorder
        self._workdir = workdir
        self._provision = provision
        self._stopping: set[asyncio.Task] = set()

    def put_input(
        self,
        function: EmulatedFunction,
        call: FunctionCall,
        *,
        idx: int,
        args: bytes,
        data_format: int,
        client_retries: bool = False,
    ) -> Input:
        item = call.add_input(idx=idx, args=args, data_format=data_format)
        self._start(function, call, item, client_retries)
        return item

    def retry_input(
        self, function: EmulatedFunction, call: FunctionCall, item: Input, retry_count: int
    ) -> None:
        """Run `item` again as attempt `retry_count`, as a client's FunctionRetryInputs asks."""
        call.reopen(item, retry_count)
        self._start(function, call, item, client_retries=True)

    def _start(
        self, function: EmulatedFunction, call: FunctionCall, item: Input, client_retries: bool
    ) -> None:
        item.task = asyncio.create_task(self._run(function, call, item, client_retries))
        # A task cancelled before it first runs never enters `_run`, so its output is recorded here.
        item.task.add_done_callback(lambda task: _record_cancellation(task, call, item))

    def cancel(self, call: FunctionCall) -> None:
        for item in call.inputs:
            if not item.done and item.task is not None:
                item.task.cancel()

    def stop_containers(self, function: EmulatedFunction) -> None:
        """Stop the function's containers in the background (its app has stopped)."""
        if function.pool is not None:
            stopping = asyncio.create_task(function.pool.shutdown())
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)

    async def shutdown(self, functions: list[EmulatedFunction]) -> None:
        await asyncio.gather(*self._stopping, *(fn.pool.shutdown() for fn in functions if fn.pool))

    async def _run(
        self, function: EmulatedFunction, call: FunctionCall, item: Input, client_retries: bool
    ) -> None:
        policy = ExecutionPolicy.of(function.definition)
        if client_retries:  # the client retries: each attempt's output is final here
            policy = dataclasses.replace(policy, retries=0)
        try:
            pool = await self._pool(function)
            output = await run_input(
                pool,
                call,
                item,
                policy=policy,
                blobs=self._blobs,
                count_attempt=lambda: self._recorder.attempts.update([item.input_id]),
            )
            function.record.peak_running = max(function.record.peak_running, pool.peak_running)
        except Exception as exc:  # noqa: BLE001 - any emulator-side failure becomes the input's failure
            status = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
            output = _failed_output(item, status, f"{type(exc).__name__}: {exc}")
        call.add_output(item, output)

    async def _pool(self, function: EmulatedFunction) -> ContainerPool:
        async with function.starting:
            if function.pool is None:
                image_id = function.definition.image_id
                environment = await self._images.start(image_id)
                if environment is None:
                    raise RuntimeError(self._images.record(image_id).build_error)
                provision = self._provision(function)
                env = {name: os.environ[name] for name in _HOST_VARIABLES if name in os.environ}
                env.update(self._images.record(image_id).env)
                env.update(provision.secret_env)
                spec = ContainerSpec(
                    python=environment.python,
                    workdir=self._write_filesystem(function.record.function_id, provision.files),
                    env=env,
                    definition=_load_instructions(function.definition),
                )
                function.pool = ContainerPool(
                    spec=spec,
                    max_containers=function.record.max_containers or DEFAULT_MAX_CONTAINERS,
                    scaledown_window=_scaledown_window(function.definition),
                    on_log=provision.on_log,
                )
            return function.pool

    def _write_filesystem(self, function_id: str, files: dict[str, bytes]) -> Path:
        filesystem = self._workdir / "functions" / function_id
        shutil.rmtree(filesystem, ignore_errors=True)
        for filename, data in files.items():
            target = filesystem / filename.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        root = filesystem / "root"
        root.mkdir(parents=True, exist_ok=True)
        return root


def _load_instructions(definition: api_pb2.Function) -> dict[str, object]:
    return {
        "function_serialized": definition.function_serialized,
        "module_name": definition.module_name,
        "function_name": definition.implementation_name or definition.function_name,
    }


def _scaledown_window(definition: api_pb2.Function) -> float:
    window = definition.autoscaler_settings.scaledown_window or definition.task_idle_timeout_secs
    return float(window or DEFAULT_SCALEDOWN_WINDOW)


def _record_cancellation(task: asyncio.Task, call: FunctionCall, item: Input) -> None:
    if task.cancelled():
        status = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
        call.add_output(item, _failed_output(item, status, "Input was cancelled"))


def _failed_output(item: Input, status: Any, message: str) -> api_pb2.FunctionGetOutputsItem:
    return api_pb2.FunctionGetOutputsItem(
        input_id=item.input_id,
        idx=item.idx,
        result=api_pb2.GenericResult(status=status, exception=message),
        data_format=item.data_format,
        retry_count=item.retry_count,
    )
