"""Where a detached run's calls stand on Modal, asked for the whole run at once.

Modal answers for one function call per FunctionGetOutputs, so a run of 10,000 calls asked one by one
takes minutes. FunctionCallFetch (what `modal function calls` speaks) lists the inputs of a function with
their status, and a detached run's function holds exactly the run's calls: one request answers for every
call still queued or running. Only the calls it reports finished, or does not list, are then asked for
their outputs, a bounded number at once; the monitor stores those outcomes, so no finished call is asked
again. Everything here runs on the modal client's loop.

>>> standing = await list_inputs("fu-123", since=run_created)     # {"fc-1": Standing(...), ...}
>>> outcomes = await poll_calls([("fc-1", 0), ("fc-2", 1)])         # Outcome, None (running) or an error
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from modal.exception import AuthError, ConnectionError
from modal.exception import Error as ModalError

from mini.modal_backend._invocation import poll_call
from mini.modal_backend._private import ATTEMPT_TIMEOUT_GRACE_PERIOD, Retry, _Client, api_pb2
from mini.serialization import Outcome

# Modal's most inputs per FunctionCallFetch range request.
PAGE = 20_000
# Output requests in flight at once when many calls have finished since the last look.
POLLS_IN_FLIGHT = 64
# Enqueue times are the server's clock; the run's creation time is this machine's.
CLOCK_SKEW = 300.0
_Status = api_pb2.FunctionCallInputStatus


@dataclass(frozen=True)
class Standing:
    """One call as Modal lists it: `queued`, `running` (since `started`) or `finished`."""

    state: str
    started: float | None = None


def standing(info: api_pb2.FunctionCallInputInfo) -> Standing:
    if info.status == _Status.FUNCTION_CALL_INPUT_STATUS_PENDING:
        return Standing("queued")
    if info.status == _Status.FUNCTION_CALL_INPUT_STATUS_RUNNING:
        started = info.started_at.ToNanoseconds() / 1e9 if info.HasField("started_at") else None
        return Standing("running", started)
    return Standing("finished")  # settled one way or another (or a status this client does not know)


async def list_inputs(function_id: str, since: float) -> dict[str, Standing] | None:
    """Every call of function `function_id` enqueued since `since` (seconds), by function-call id; None
    where Modal cannot list them (the caller then asks call by call). A call missing from the answer is
    not known to be anything, so the caller asks about it on its own."""
    client = await _Client.from_env()
    found: dict[str, Standing] = {}
    start = since - CLOCK_SKEW
    while True:
        request = api_pb2.FunctionCallFetchRequest(
            function_id=function_id, range=api_pb2.FunctionCallFetchRequest.Range(limit=PAGE)
        )
        request.range.since.FromNanoseconds(int(start * 1e9))
        request.range.until.FromNanoseconds(int((time.time() + CLOCK_SKEW) * 1e9))
        try:
            response = await client._stub.FunctionCallFetch(
                request, retry=Retry(attempt_timeout=ATTEMPT_TIMEOUT_GRACE_PERIOD)
            )
        except (AuthError, ConnectionError):
            raise
        except ModalError:
            return found or None
        page = response.function_call_inputs
        before = len(found)
        for info in page:
            found[info.function_call_id] = standing(info)
        if len(page) < PAGE or len(found) == before:
            return found
        # A full page, oldest first: the next starts where it ended (its last input is seen twice).
        start = page[-1].enqueued_at.ToNanoseconds() / 1e9


async def poll_calls(calls: Sequence[tuple[str, int]]) -> list[Outcome | None | BaseException]:
    """`poll_call` for each `(call id, mini index)`, a bounded number at once; each call's outcome, None
    while it runs, or the error asking about it raised."""
    limit = asyncio.Semaphore(POLLS_IN_FLIGHT)

    async def one(call_id: str, index: int) -> Outcome | None:
        async with limit:
            return await poll_call(call_id, index)

    return await asyncio.gather(*(one(call_id, index) for call_id, index in calls), return_exceptions=True)
