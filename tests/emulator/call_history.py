"""What `FunctionCallFetch` answers: the inputs a function was given, with where each one stands.

Modal's `modal function calls` lists a function's recent inputs this way (a tail, newest first, or a time
range, oldest first), one entry per input whatever its retries, with its call, status and times:

    inputs = function_inputs(calls_of_the_function)
    page = in_range(inputs, since=t0, until=t1, limit=20_000)      # oldest first, at most `limit`
    latest = newest(inputs, count=10)
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp
from modal_proto import api_pb2

from tests.emulator.calls import FunctionCall, Input

_Result = api_pb2.GenericResult
# A settled input's status, from its final output's.
_SETTLED = {
    _Result.GENERIC_STATUS_SUCCESS: api_pb2.FUNCTION_CALL_INPUT_STATUS_SUCCESS,
    _Result.GENERIC_STATUS_FAILURE: api_pb2.FUNCTION_CALL_INPUT_STATUS_FAILURE,
    _Result.GENERIC_STATUS_TERMINATED: api_pb2.FUNCTION_CALL_INPUT_STATUS_TERMINATED,
    _Result.GENERIC_STATUS_TIMEOUT: api_pb2.FUNCTION_CALL_INPUT_STATUS_TIMEOUT,
    _Result.GENERIC_STATUS_INIT_FAILURE: api_pb2.FUNCTION_CALL_INPUT_STATUS_INIT_FAILURE,
    _Result.GENERIC_STATUS_INTERNAL_FAILURE: api_pb2.FUNCTION_CALL_INPUT_STATUS_INTERNAL_FAILURE,
    _Result.GENERIC_STATUS_IDLE_TIMEOUT: api_pb2.FUNCTION_CALL_INPUT_STATUS_IDLE_TIMEOUT,
    _Result.GENERIC_STATUS_MEMORY_MANAGER_EVICTION: (
        api_pb2.FUNCTION_CALL_INPUT_STATUS_MEMORY_MANAGER_EVICTION
    ),
    _Result.GENERIC_STATUS_MEMORY_THRASHING_EVICTION: (
        api_pb2.FUNCTION_CALL_INPUT_STATUS_MEMORY_THRASHING_EVICTION
    ),
    _Result.GENERIC_STATUS_KERNEL_OOM_KILL: api_pb2.FUNCTION_CALL_INPUT_STATUS_KERNEL_OOM_KILL,
}
# Modal's limits on one request (the modal client checks them too).
MAX_RANGE_LIMIT = 20_000
MAX_TAIL = 1000


def function_inputs(calls: Iterable[FunctionCall]) -> list[tuple[float, api_pb2.FunctionCallInputInfo]]:
    """Every input of `calls`, with its enqueue time, oldest first."""
    inputs = []
    for call in calls:
        finals = {output.input_id: output for output in call.outputs}
        for item in call.inputs:
            inputs.append((item.enqueued_at, _info(call, item, finals.get(item.input_id))))
    inputs.sort(key=lambda entry: entry[0])
    return inputs


def in_range(
    inputs: list[tuple[float, api_pb2.FunctionCallInputInfo]], *, since: float, until: float, limit: int
) -> list[api_pb2.FunctionCallInputInfo]:
    """Inputs enqueued in [since, until), oldest first, the first `limit` of them."""
    chosen = [info for enqueued, info in inputs if since <= enqueued < until]
    return chosen[:limit]


def newest(
    inputs: list[tuple[float, api_pb2.FunctionCallInputInfo]], *, count: int
) -> list[api_pb2.FunctionCallInputInfo]:
    return [info for _, info in reversed(inputs[-count:])] if count else []


def _info(
    call: FunctionCall, item: Input, final: api_pb2.FunctionGetOutputsItem | None
) -> api_pb2.FunctionCallInputInfo:
    info = api_pb2.FunctionCallInputInfo(
        function_call_id=call.function_call_id, enqueued_at=_timestamp(item.enqueued_at)
    )
    attempt = item.attempt
    if item.done and final is not None:
        info.status = _SETTLED.get(final.result.status, api_pb2.FUNCTION_CALL_INPUT_STATUS_FAILURE)
        if final.input_started_at:
            info.started_at.CopyFrom(_timestamp(final.input_started_at))
            info.execution_time_seconds = max(0.0, final.output_created_at - final.input_started_at)
        if final.task_id:
            info.container_id = final.task_id
    elif attempt is not None and attempt.container is not None and not attempt.finished:
        info.status = api_pb2.FUNCTION_CALL_INPUT_STATUS_RUNNING
        info.started_at.CopyFrom(_timestamp(attempt.started_at))
        info.container_id = attempt.container.task_id
    else:
        info.status = api_pb2.FUNCTION_CALL_INPUT_STATUS_PENDING
    return info


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
