"""The RPCs Modal's container runtime makes: fetching inputs, sending outputs and generator data,
heartbeats that carry cancellations, and reporting a function that cannot load.

    service = ContainerService(servicer)    # served on every container's endpoint (and refused elsewhere)

The calling container is the one whose endpoint the request came through (`containers.TASK_HEADER`).
"""

from __future__ import annotations

import asyncio
import contextlib

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from grpclib.exceptions import StreamTerminatedError
from grpclib.server import Stream
from h2.exceptions import StreamClosedError
from modal.client import HEARTBEAT_INTERVAL
from modal_proto import api_pb2

from tests.emulator.containers import TASK_HEADER, Container
from tests.emulator.functions import FunctionRunner
from tests.emulator.rpc import Service

# A heartbeat is held this long unless a cancellation comes up, so that one reaches the container at once;
# the runtime waits out the rest of its 15 s interval and gives an attempt 15.1 s.
HEARTBEAT_HOLD = HEARTBEAT_INTERVAL - 2


class ContainerService(Service):
    def __init__(self, runner: FunctionRunner, calls: dict) -> None:
        self._runner = runner
        self._calls = calls

    async def ContainerHello(self, stream: Stream) -> None:
        await stream.recv_message()
        self.caller(stream)
        await stream.send_message(Empty())

    async def ContainerHeartbeat(self, stream: Stream) -> None:
        await stream.recv_message()
        container = self.caller(stream)
        if not container.pending_cancellations:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(container.cancellation.wait(), HEARTBEAT_HOLD)
        cancelled = container.take_cancellations()
        response = api_pb2.ContainerHeartbeatResponse()
        if cancelled:
            response.cancel_input_event.CopyFrom(api_pb2.CancelInputEvent(input_ids=cancelled))
        await stream.send_message(response)

    async def FunctionGetInputs(self, stream: Stream) -> None:
        request: api_pb2.FunctionGetInputsRequest = await stream.recv_message()
        container = self.caller(stream)
        items = await self._runner.next_inputs(
            container, batch_max_size=request.batch_max_size, batch_linger_ms=request.batch_linger_ms
        )
        try:
            await stream.send_message(api_pb2.FunctionGetInputsResponse(inputs=items))
        except (StreamTerminatedError, StreamClosedError):
            self._runner.undeliver(container, items)  # the container went away before it got them

    async def FunctionPutOutputs(self, stream: Stream) -> None:
        request: api_pb2.FunctionPutOutputsRequest = await stream.recv_message()
        await self._runner.put_outputs(self.caller(stream), list(request.outputs))
        await stream.send_message(Empty())

    async def FunctionCallPutDataOut(self, stream: Stream) -> None:
        request: api_pb2.FunctionCallPutDataRequest = await stream.recv_message()
        self.caller(stream)
        call = self._calls.get(request.function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"Function call {request.function_call_id} not found")
        call.add_data_out(list(request.data_chunks))
        await stream.send_message(Empty())

    async def FunctionGetDynamicConcurrency(self, stream: Stream) -> None:
        await stream.recv_message()
        concurrency = self._runner.concurrency(self.caller(stream))
        await stream.send_message(api_pb2.FunctionGetDynamicConcurrencyResponse(concurrency=concurrency))

    async def TaskResult(self, stream: Stream) -> None:
        request: api_pb2.TaskResultRequest = await stream.recv_message()
        if request.result.status != api_pb2.GenericResult.GENERIC_STATUS_SUCCESS:
            self._runner.task_failed(self.caller(stream), request.result)
        await stream.send_message(Empty())

    async def ContainerStop(self, stream: Stream) -> None:
        await stream.recv_message()
        self.caller(stream).draining = True
        await stream.send_message(api_pb2.ContainerStopResponse())

    def caller(self, stream: Stream) -> Container:
        """The container the request came from; PERMISSION_DENIED for anyone else."""
        task_id = stream.metadata.get(TASK_HEADER)
        try:
            return self._runner.container(task_id)[1]
        except KeyError:
            raise GRPCError(Status.PERMISSION_DENIED, "only a running container may call this") from None
