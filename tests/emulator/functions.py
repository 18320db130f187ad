"""Created functions and their inputs: a queue of attempts per function, containers that fetch them.

    runner = FunctionRunner(images=builds, volumes=store, recorder=recorder, workdir=tmp, provision=...)
    runner.handlers = [...]                      # what each container's endpoint serves
    item = runner.put_input(function, call, idx=0, input=api_pb2.FunctionInput(...))
    outputs, _ = await call.wait_outputs(after_entry=0, timeout=55, max_bytes=16 << 20)

An input waits in its function's queue as an attempt. Containers are started when the queue holds more
than the running containers take (each takes its target input concurrency times its batch size, at most
`max_containers` of them, 4 when unset); a container asks for work with FunctionGetInputs, which hands it
one input or a batch (up to `batch_max_size`, waiting `batch_linger_ms` for it to fill), and reports each
input's output with FunctionPutOutputs. A container idle for `scaledown_window` (Modal's 60 s default) gets
the kill switch instead and exits on its own, committing its volumes.

Timeouts are per input (per batch for a batched function) and counted from its delivery: a container
running one input at a time is killed; in a container running several, the runtime is asked to cancel it.
A failure or a timeout is retried per the function's policy. A container that exits while running inputs
fails them, unless the emulator made it exit (a cancellation that stops a container, `FunctionCall.cancel(
terminate_containers=True)`): then its other inputs go back to the queue, as Modal reschedules them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modal_proto import api_pb2

from tests.emulator.calls import FunctionCall, Input
from tests.emulator.containers import Container, ContainerSpec, LogSink
from tests.emulator.execution import ExecutionPolicy
from tests.emulator.image_builds import ImageBuilds
from tests.emulator.recorder import FunctionRecord, Recorder
from tests.emulator.volumes import Volume, VolumeStore

DEFAULT_MAX_CONTAINERS = 4
DEFAULT_SCALEDOWN_WINDOW = 60  # seconds, Modal's default
# How long a FunctionGetInputs waits for work before answering with none (the runtime asks again).
GET_INPUTS_HOLD = 10.0
# How long a container asked to stop may take before it is killed.
STOP_GRACE = 10.0
# Environment variables a container inherits from the emulator's host; everything else comes from
# the image's ENV lines and the function's secrets, as on Modal.
_HOST_VARIABLES = ("PATH", "HOME", "LANG", "TMPDIR", "UV_CACHE_DIR", "XDG_CACHE_HOME")
_Status = api_pb2.GenericResult


@dataclass(frozen=True)
class Provision:
    """What a function's containers get besides their image: mounted files, secrets, volumes, where logs
    go, and the ContainerArguments the runtime reads."""

    files: dict[str, Path]
    secret_env: dict[str, str]
    volumes: list[tuple[str, Volume]]
    arguments: api_pb2.ContainerArguments
    on_log: LogSink


@dataclass
class Attempt:
    """One attempt at an input: waiting in the queue, or delivered to `container`."""

    call: FunctionCall
    item: Input
    number: int  # 0 for the first, then one more per server-side retry
    retry_count: int  # what the container is told (and echoes in its output)
    container: Container | None = None
    started_at: float = 0.0
    finished: bool = False
    batch: list[Attempt] = field(default_factory=list)  # the attempts delivered together with this one
    timer: asyncio.TimerHandle | None = None


@dataclass
class EmulatedFunction:
    record: FunctionRecord
    definition: api_pb2.Function
    handle_metadata: api_pb2.FunctionHandleMetadata | None = None
    pending: deque[Attempt] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    containers: set[Container] = field(default_factory=set)
    starting: int = 0
    running: int = 0
    failure: api_pb2.GenericResult | None = None  # its containers cannot start: every input gets this
    stopped: bool = False  # its app stopped

    @property
    def policy(self) -> ExecutionPolicy:
        return ExecutionPolicy.of(self.definition)


class FunctionRunner:
    """Runs inputs in containers; `provision(function)` supplies what a new container needs."""

    def __init__(
        self,
        *,
        images: ImageBuilds,
        volumes: VolumeStore,
        recorder: Recorder,
        workdir: Path,
        provision: Callable[[EmulatedFunction], Provision],
        background_commit_secs: float | None,
    ) -> None:
        self._images = images
        self._volumes = volumes
        self._recorder = recorder
        self._containers_dir = workdir / "containers"
        self._provision = provision
        self._background_commit_secs = background_commit_secs
        self._containers: dict[str, tuple[EmulatedFunction, Container]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.functions: dict[str, EmulatedFunction] = {}
        # GPU types none of which is free: a function asking only for these keeps its inputs queued and
        # starts no container, as on Modal while that GPU is scarce.
        self.scarce_gpus: set[str] = set()
        self.handlers: list[object] = []  # what every container's endpoint serves (set by the server)

    # --- inputs, from clients ---

    def put_input(
        self, function: EmulatedFunction, call: FunctionCall, *, idx: int, input: api_pb2.FunctionInput
    ) -> Input:
        item = call.add_input(idx=idx, input=input)
        self._enqueue(function, Attempt(call, item, number=0, retry_count=0))
        return item

    def retry_input(
        self, function: EmulatedFunction, call: FunctionCall, item: Input, retry_count: int
    ) -> None:
        """Run `item` again as attempt `retry_count`, as a client's FunctionRetryInputs asks."""
        call.reopen(item, retry_count)
        self._enqueue(function, Attempt(call, item, number=0, retry_count=retry_count))

    def cancel(
        self, function: EmulatedFunction, call: FunctionCall, *, terminate_containers: bool = False
    ) -> None:
        """Terminate the call's unfinished inputs: waiting ones leave the queue; running ones are cancelled
        by their container's runtime, or their containers are killed with `terminate_containers`."""
        call.cancelled = True
        for item in call.inputs:
            attempt = item.attempt
            if item.done or attempt is None:
                continue
            self._record(
                attempt, _Status(status=_Status.GENERIC_STATUS_TERMINATED, exception="Input was cancelled")
            )
            container = attempt.container
            if container is None:
                with contextlib.suppress(ValueError):
                    function.pending.remove(attempt)
            elif terminate_containers:
                container.expected_exit = True
                container.kill()
            else:
                if function.policy.concurrent:
                    container.expected_exit = True  # a sync function's runtime stops its container for this
                container.cancel_inputs([item.input_id])

    def stop(self, function: EmulatedFunction, calls: list[FunctionCall]) -> None:
        """The function's app stopped: its inputs are terminated and its containers stop."""
        function.stopped = True
        for call in calls:
            self.cancel(function, call)
        for container in list(function.containers):
            self._stop_container(container)
        function.arrived.set()

    async def shutdown(self) -> None:
        """Kill every container (the emulator is going away) and wait for them to be gone."""
        for function, container in list(self._containers.values()):
            function.stopped = True
            container.expected_exit = True
            container.kill()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- containers ---

    def container(self, task_id: str) -> tuple[EmulatedFunction, Container]:
        if task_id not in self._containers:
            raise KeyError(f"no running container {task_id}")
        return self._containers[task_id]

    async def next_inputs(
        self, container: Container, *, batch_max_size: int, batch_linger_ms: int
    ) -> list[api_pb2.FunctionGetInputsItem]:
        """FunctionGetInputs: the next input (or batch) for `container`, the kill switch, or nothing."""
        function, _ = self.container(container.task_id)
        container.fetched = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GET_INPUTS_HOLD
        while True:
            if container.draining or function.stopped:
                return [api_pb2.FunctionGetInputsItem(kill_switch=True)]
            if function.pending:
                break
            idle_until = container.idle_since + _scaledown_window(function.definition)
            if not container.running and loop.time() >= idle_until:
                container.draining = True  # scaled down: it exits on its own, or is killed after a grace
                self._later(STOP_GRACE, container.kill)
                continue
            if loop.time() >= deadline:
                return []
            function.arrived.clear()
            wait = min(deadline, idle_until) - loop.time()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(function.arrived.wait(), max(wait, 0.01))
        batch = [function.pending.popleft()]
        try:
            if batch_max_size > 1:
                linger_until = loop.time() + batch_linger_ms / 1000
                while len(batch) < batch_max_size:
                    if function.pending:
                        batch.append(function.pending.popleft())
                        continue
                    if loop.time() >= linger_until or function.stopped:
                        break
                    function.arrived.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(function.arrived.wait(), linger_until - loop.time())
            await container.settle_logs()  # what it printed before this belongs to no input of the batch
        except asyncio.CancelledError:
            function.pending.extendleft(reversed(batch))  # the container went away while the batch filled
            raise
        if not function.pending:
            function.arrived.clear()
        batch = [attempt for attempt in batch if not attempt.finished]
        if not batch:
            return []
        self._deliver(function, container, batch)
        return [
            api_pb2.FunctionGetInputsItem(
                input_id=attempt.item.input_id,
                input=attempt.item.input,
                function_call_id=attempt.call.function_call_id,
                function_call_invocation_type=attempt.call.invocation_type,
                retry_count=attempt.retry_count,
                function_map_idx=attempt.item.idx,
            )
            for attempt in batch
        ]

    def undeliver(self, container: Container, items: list[api_pb2.FunctionGetInputsItem]) -> None:
        """Take back inputs a container never received: they wait for the next container."""
        entry = self._containers.get(container.task_id)
        if entry is None:
            return  # it exited, and what it held was settled then
        function = entry[0]
        for item in reversed(items):
            attempt = container.running.pop(item.input_id, None)
            if attempt is None:
                continue
            function.running -= 1
            if attempt.timer is not None:
                attempt.timer.cancel()
            attempt.container = None
            if not attempt.finished:
                function.pending.appendleft(attempt)
                function.arrived.set()

    async def put_outputs(self, container: Container, outputs: list[api_pb2.FunctionPutOutputsItem]) -> None:
        """FunctionPutOutputs: the container's outputs; each is final unless the policy retries it."""
        await container.settle_logs()  # the logs of an input are complete before its output is used
        for output in outputs:
            attempt = container.running.get(output.input_id)
            if attempt is None or attempt.retry_count != output.retry_count:
                continue  # an attempt that was already settled (timed out, cancelled) or superseded
            self._release(attempt)
            if attempt.timer is not None and all(member.finished for member in attempt.batch):
                attempt.timer.cancel()
            self._finish(
                attempt, output.result, data_format=output.data_format, started_at=output.input_started_at
            )

    def task_failed(self, container: Container, result: api_pb2.GenericResult) -> None:
        """TaskResult: the container could not load the function; every input of it fails with that."""
        function, _ = self.container(container.task_id)
        self._fail_function(function, result)

    def concurrency(self, container: Container) -> int:
        """FunctionGetDynamicConcurrency: the target, or up to the maximum when no container can be added
        and inputs wait (Modal: containers "may burst up to max_inputs" when the target cannot be kept)."""
        function, _ = self.container(container.task_id)
        policy = function.policy
        at_limit = len(function.containers) + function.starting >= _max_containers(function)
        if at_limit and function.pending:
            return policy.max_concurrent_inputs
        return policy.target_concurrent_inputs

    # --- internals ---

    def _enqueue(self, function: EmulatedFunction, attempt: Attempt) -> None:
        attempt.item.attempt = attempt
        if attempt.call.cancelled or function.stopped:
            self._record(
                attempt, _Status(status=_Status.GENERIC_STATUS_TERMINATED, exception="Input was cancelled")
            )
            return
        if function.failure is not None:
            self._record(attempt, function.failure)
            return
        function.pending.append(attempt)
        function.arrived.set()
        self._scale(function)

    def _scale(self, function: EmulatedFunction) -> None:
        if function.stopped or function.failure is not None:
            return
        if function.record.gpus and all(kind.upper() in self.scarce_gpus for kind, _ in function.record.gpus):
            return
        capacity = function.policy.capacity
        live = [container for container in function.containers if not container.draining]
        free = (
            sum(max(0, capacity - len(container.running)) for container in live)
            + function.starting * capacity
        )
        wanted = len(function.pending) - free
        while wanted > 0 and len(live) + function.starting < _max_containers(function):
            function.starting += 1
            self._spawn(self._start_container(function))
            wanted -= capacity

    async def _start_container(self, function: EmulatedFunction) -> None:
        container: Container | None = None
        try:
            image_id = function.definition.image_id
            environment = await self._images.start(image_id)
            if environment is None:
                raise RuntimeError(self._images.record(image_id).build_error)
            provision = self._provision(function)
            env = {name: os.environ[name] for name in _HOST_VARIABLES if name in os.environ}
            env.update(self._images.record(image_id).env)
            env.update(provision.secret_env)
            spec = ContainerSpec(
                python=environment.python, env=env, files=provision.files, arguments=provision.arguments
            )
            container = Container(spec, self._containers_dir)
            await asyncio.to_thread(container.write_filesystem)
            for mount_path, volume in provision.volumes:
                if _under_root(mount_path):
                    view = await self._volumes.mount(volume, container.path_of(mount_path))
                    container.views[volume.volume_id] = view
            container.idle_since = asyncio.get_running_loop().time()
            self._containers[container.task_id] = (function, container)
            await container.start(self.handlers, provision.on_log, self._recorder.count_container_rpc)
        except Exception as exc:  # noqa: BLE001 - a container that cannot start fails the inputs
            function.starting -= 1
            if container is not None:
                self._containers.pop(container.task_id, None)
            message = f"{type(exc).__name__}: {exc}"
            self._fail_function(function, _Status(status=_Status.GENERIC_STATUS_FAILURE, exception=message))
            return
        function.starting -= 1
        function.containers.add(container)
        self._spawn(self._watch(function, container))
        if container.views and self._background_commit_secs:
            self._spawn(self._commit_in_background(container))

    async def _watch(self, function: EmulatedFunction, container: Container) -> None:
        code = await container.wait()
        function.containers.discard(container)
        self._containers.pop(container.task_id, None)
        await container.close()
        attempts = list(container.running.values())
        container.running.clear()
        if not container.fetched and not container.expected_exit and function.failure is None:
            message = f"the container exited with code {code} while starting"
            self._fail_function(function, _Status(status=_Status.GENERIC_STATUS_FAILURE, exception=message))
        for attempt in attempts:
            function.running -= 1
            if attempt.finished:
                continue
            if container.expected_exit:
                attempt.container = None
                function.pending.appendleft(attempt)
                function.arrived.set()
            else:
                message = f"the container running the input exited unexpectedly with code {code}"
                self._finish(attempt, _Status(status=_Status.GENERIC_STATUS_FAILURE, exception=message))
        self._scale(function)

    async def _commit_in_background(self, container: Container) -> None:
        # Modal commits mounted volumes "every few seconds while your Function executes".
        assert self._background_commit_secs is not None
        while container.pid is not None and container in self._function_containers(container):
            await asyncio.sleep(self._background_commit_secs)
            for view in list(container.views.values()):
                if await asyncio.to_thread(view.changed):
                    with contextlib.suppress(Exception):
                        await self._volumes.commit(view)

    def _function_containers(self, container: Container) -> set[Container]:
        entry = self._containers.get(container.task_id)
        return entry[0].containers if entry else set()

    def _deliver(self, function: EmulatedFunction, container: Container, batch: list[Attempt]) -> None:
        loop = asyncio.get_running_loop()
        now = time.time()
        for attempt in batch:
            attempt.container = container
            attempt.started_at = now
            attempt.batch = batch
            container.running[attempt.item.input_id] = attempt
            function.running += 1
            self._recorder.attempts.update([attempt.item.input_id])
        container.peak_running = max(container.peak_running, len(container.running))
        record = function.record
        record.peak_running = max(record.peak_running, function.running)
        record.peak_inputs_per_container = max(record.peak_inputs_per_container, container.peak_running)
        record.batch_sizes.append(len(batch))
        timeout = function.policy.timeout_secs
        if timeout:
            timer = loop.call_later(timeout, self._time_out, function, container, batch, timeout)
            for attempt in batch:
                attempt.timer = timer

    def _time_out(
        self, function: EmulatedFunction, container: Container, batch: list[Attempt], timeout: float
    ) -> None:
        late = [attempt for attempt in batch if not attempt.finished]
        if not late:
            return
        if function.policy.concurrent:
            note = "the emulator cancelled it"
            container.expected_exit = True  # a sync function's runtime stops its container for this
            container.cancel_inputs([attempt.item.input_id for attempt in late])
        else:
            note = "the emulator killed its container"
            container.expected_exit = True
            container.kill()
        result = _Status(
            status=_Status.GENERIC_STATUS_TIMEOUT,
            exception=f"Function timed out after {timeout:g} seconds ({note})",
        )
        for attempt in late:
            self._finish(attempt, result)

    def _release(self, attempt: Attempt) -> None:
        """The attempt's container is done with it."""
        container = attempt.container
        if container is not None and container.running.pop(attempt.item.input_id, None) is not None:
            entry = self._containers.get(container.task_id)
            if entry is not None:
                entry[0].running -= 1
                if not container.running:
                    container.idle_since = asyncio.get_running_loop().time()
                entry[0].arrived.set()  # a held FunctionGetInputs may now find the container idle
                self._scale(entry[0])

    def _finish(
        self,
        attempt: Attempt,
        result: api_pb2.GenericResult,
        *,
        data_format: int | None = None,
        started_at: float | None = None,
    ) -> None:
        """Settle an attempt: retry it if the policy says so, else record its output as final."""
        if attempt.finished:
            return
        attempt.finished = True
        item, call = attempt.item, attempt.call
        if item.attempt is not attempt or item.done:
            return
        function = self.functions.get(call.function_id)
        retryable = result.status not in (_Status.GENERIC_STATUS_SUCCESS, _Status.GENERIC_STATUS_TERMINATED)
        if function is not None and retryable and not call.client_retries and not call.cancelled:
            policy = function.policy
            if attempt.number < policy.retries:
                retry = Attempt(call, item, number=attempt.number + 1, retry_count=attempt.retry_count + 1)
                item.attempt = retry
                self._later(policy.delay_before(attempt.number + 1), self._enqueue, function, retry)
                return
        self._record(attempt, result, data_format=data_format, started_at=started_at)

    def _record(
        self,
        attempt: Attempt,
        result: api_pb2.GenericResult,
        *,
        data_format: int | None = None,
        started_at: float | None = None,
    ) -> None:
        attempt.finished = True
        item = attempt.item
        output = api_pb2.FunctionGetOutputsItem(
            input_id=item.input_id,
            idx=item.idx,
            result=result,
            data_format=item.data_format if data_format is None else data_format,
            task_id=attempt.container.task_id if attempt.container else "",
            input_started_at=started_at or attempt.started_at,
            output_created_at=time.time(),
            retry_count=attempt.retry_count,
        )
        attempt.call.add_output(item, output)

    def _fail_function(self, function: EmulatedFunction, result: api_pb2.GenericResult) -> None:
        """The function's containers cannot start: every input, waiting or to come, fails with `result`."""
        function.failure = result
        while function.pending:
            self._record(function.pending.popleft(), result)

    def _stop_container(self, container: Container) -> None:
        # An idle container takes the kill switch from its waiting FunctionGetInputs and exits on its own;
        # one still running (cancelled) inputs is interrupted, so that it unwinds and commits its volumes;
        # one still starting holds nothing and is killed.
        container.draining = True
        container.expected_exit = True
        if not container.fetched:
            container.kill()
            return
        if container.running:
            container.interrupt()
        self._later(STOP_GRACE, container.kill)

    def _later(self, delay: float, callback: Callable[..., object], *args: object) -> None:
        asyncio.get_running_loop().call_later(delay, callback, *args)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _under_root(mount_path: str) -> bool:
    parts = Path(mount_path).parts
    return len(parts) > 2 and parts[:2] == ("/", "root")


def _max_containers(function: EmulatedFunction) -> int:
    return function.record.max_containers or DEFAULT_MAX_CONTAINERS


def _scaledown_window(definition: api_pb2.Function) -> float:
    window = definition.autoscaler_settings.scaledown_window or definition.task_idle_timeout_secs
    return float(window or DEFAULT_SCALEDOWN_WINDOW)
