"""Running one input to its final output: attempts in a container, timeouts, retries, big results.

    output = await run_input(pool, call, item, policy=ExecutionPolicy(timeout_secs=60, retries=0), ...)

The result is the `FunctionGetOutputsItem` a client receives. Retries happen here, on the server
side (the emulator answers FunctionMap with `sync_client_retries_enabled=False`), as Modal does for
clients that do not retry themselves: a failure or a timeout is retried after the policy's delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from modal._utils.blob_utils import MAX_ASYNC_OBJECT_SIZE_BYTES, MAX_OBJECT_SIZE_BYTES
from modal_proto import api_pb2

from tests.emulator.blobs import BlobStore
from tests.emulator.calls import FunctionCall, Input
from tests.emulator.workers import ContainerExited, ContainerPool

_Status = api_pb2.GenericResult


@dataclass(frozen=True)
class ExecutionPolicy:
    """How an input is run: its timeout and the function's retry policy."""

    timeout_secs: float | None
    retries: int = 0
    initial_delay_ms: int = 1000
    backoff_coefficient: float = 2.0
    max_delay_ms: int = 60_000

    @classmethod
    def of(cls, definition: api_pb2.Function) -> ExecutionPolicy:
        """The policy a function was created with."""
        retry = definition.retry_policy
        return cls(
            timeout_secs=definition.timeout_secs or None,
            retries=retry.retries,
            initial_delay_ms=retry.initial_delay_ms,
            backoff_coefficient=retry.backoff_coefficient or 1.0,
            max_delay_ms=retry.max_delay_ms or 60_000,
        )

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        delay_ms = self.initial_delay_ms * self.backoff_coefficient ** (retry - 1)
        return min(delay_ms, self.max_delay_ms) / 1000


async def run_input(
    pool: ContainerPool,
    call: FunctionCall,
    item: Input,
    *,
    policy: ExecutionPolicy,
    blobs: BlobStore,
    count_attempt: Callable[[], None],
) -> api_pb2.FunctionGetOutputsItem:
    """Attempt `item` until it succeeds or its retries are used up; return its final output."""
    message = {"args": item.args, "data_format": item.data_format}
    size_limit = (
        MAX_ASYNC_OBJECT_SIZE_BYTES
        if call.invocation_type == api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC
        else MAX_OBJECT_SIZE_BYTES
    )
    attempt = 0
    while True:
        count_attempt()
        started_at = time.time()
        result = await _attempt(pool, message, policy.timeout_secs, blobs, size_limit)
        if result.status == _Status.GENERIC_STATUS_SUCCESS or attempt >= policy.retries:
            return api_pb2.FunctionGetOutputsItem(
                input_id=item.input_id,
                idx=item.idx,
                result=result,
                data_format=item.data_format,
                input_started_at=started_at,
                output_created_at=time.time(),
                retry_count=item.retry_count,
            )
        attempt += 1
        await asyncio.sleep(policy.delay_before(attempt))


async def _attempt(
    pool: ContainerPool, message: dict[str, object], timeout: float | None, blobs: BlobStore, size_limit: int
) -> api_pb2.GenericResult:
    try:
        reply = await pool.run(message, timeout)
    except asyncio.TimeoutError:
        return _Status(
            status=_Status.GENERIC_STATUS_TIMEOUT,
            exception=f"Function timed out after {timeout:g} seconds (the emulator killed its container)",
        )
    except (ContainerExited, OSError) as exc:
        return _Status(status=_Status.GENERIC_STATUS_FAILURE, exception=str(exc))
    data = reply["data"]
    assert isinstance(data, bytes)
    payload = {"data_blob_id": blobs.put(data)} if len(data) > size_limit else {"data": data}
    if reply["status"] == "success":
        return _Status(status=_Status.GENERIC_STATUS_SUCCESS, **payload)
    return _Status(
        status=_Status.GENERIC_STATUS_FAILURE,
        exception=str(reply["exception"]),
        traceback=str(reply["traceback"]),
        serialized_tb=reply["serialized_tb"],
        tb_line_cache=reply["tb_line_cache"],
        **payload,
    )
