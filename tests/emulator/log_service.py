"""An app's logs and the RPCs that read them: streaming (AppGetLogs), fetching a time range (AppFetchLogs)
and counting it (AppCountLogs), filtered as the client asks.

    logs = AppLogs()
    logs.add(api_pb2.TaskLogsBatch(task_id="ta-1", items=[api_pb2.TaskLogs(data="hi\\n")]))
    service = LogService(lambda app_id: apps[app_id].logs)

A batch holds lines a container wrote to one stream, an item each, tagged as Modal tags them: the container
(`task_id`, and `container_id` on the items), the function, and the input and function call they belong
to, with their time.
Its entry id is its position in the app's log, which is the cursor AppGetLogs streams from. These back
`modal.enable_output()`, `Function.logs`, `FunctionCall.logs`, `App.logs` and `modal app logs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from grpclib.server import Stream
from modal_proto import api_pb2

from tests.emulator.rpc import Service

_SOURCES = {
    api_pb2.FILE_DESCRIPTOR_STDOUT: "stdout_logs",
    api_pb2.FILE_DESCRIPTOR_STDERR: "stderr_logs",
}


@dataclass
class AppLogs:
    """Everything an app's containers wrote, in arrival order; `done` once the app has stopped."""

    batches: list[api_pb2.TaskLogsBatch] = field(default_factory=list)
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, batch: api_pb2.TaskLogsBatch) -> None:
        batch.entry_id = str(len(self.batches) + 1)
        self.batches.append(batch)
        self.changed.set()

    def finish(self) -> None:
        self.done = True
        self.changed.set()


class LogService(Service):
    def __init__(self, logs_of: Callable[[str], AppLogs]) -> None:
        self._logs_of = logs_of

    async def AppGetLogs(self, stream: Stream) -> None:
        """The batches after cursor `last_entry_id` that match, waiting up to `timeout` for one; the
        stream ends with an `app_done` batch once the app has stopped."""
        request: api_pb2.AppGetLogsRequest = await stream.recv_message()
        logs = self._logs_of(request.app_id)
        position = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
        filters = _Filters.of(request, source=request.file_descriptor)

        def matching() -> list[api_pb2.TaskLogsBatch]:
            return [chosen for batch in logs.batches[position:] if (chosen := filters.select(batch))]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(request.timeout, 0)
        while not matching() and not logs.done and loop.time() < deadline:
            logs.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(logs.changed.wait(), deadline - loop.time())
        for batch in matching():
            await stream.send_message(batch)
        if logs.done:
            await stream.send_message(api_pb2.TaskLogsBatch(app_done=True))

    async def AppFetchLogs(self, stream: Stream) -> None:
        """The matching entries in [since, until), the latest `limit` of them, oldest first."""
        request: api_pb2.AppFetchLogsRequest = await stream.recv_message()
        logs = self._logs_of(request.app_id)
        filters = _Filters.of(request, source=request.source)
        since, until = _seconds(request.since), _seconds(request.until, unset=time.time() + 1)
        found = [
            chosen
            for batch in logs.batches
            if since <= _time_of(batch) < until and (chosen := filters.select(batch))
        ]
        if request.limit:  # the latest entries (lines), so that a tail is the end of the log
            kept: list[api_pb2.TaskLogsBatch] = []
            count = 0
            for batch in reversed(found):
                if count >= request.limit:
                    break
                kept.append(_last_items(batch, request.limit - count))
                count += len(kept[-1].items)
            found = kept[::-1]
        await stream.send_message(api_pb2.AppFetchLogsResponse(batches=found))

    async def AppCountLogs(self, stream: Stream) -> None:
        """Matching entries per `bucket_secs` bucket (aligned to multiples of it) from since to until."""
        request: api_pb2.AppCountLogsRequest = await stream.recv_message()
        logs = self._logs_of(request.app_id)
        filters = _Filters.of(request, source=request.source)
        since, until = _seconds(request.since), _seconds(request.until, unset=time.time() + 1)
        size = max(request.bucket_secs, 1)
        first = int(since // size) * size
        buckets = [
            api_pb2.AppCountLogsResponse.LogBucket(bucket_start_at=_timestamp(start))
            for start in range(first, int(until) + 1, size)
            if start < until
        ]
        for batch in logs.batches:
            moment = _time_of(batch)
            if since <= moment < until and (chosen := filters.select(batch)):
                bucket = buckets[int((moment - first) // size)]
                kind = _SOURCES.get(chosen.items[0].file_descriptor, "system_logs")
                setattr(bucket, kind, getattr(bucket, kind) + len(chosen.items))
        await stream.send_message(api_pb2.AppCountLogsResponse(app_id=request.app_id, buckets=buckets))


@dataclass(frozen=True)
class _Filters:
    function_id: str
    function_call_id: str
    task_id: str
    input_id: str
    sandbox_id: str
    search_text: str
    source: int

    @classmethod
    def of(cls, request: Any, *, source: int) -> _Filters:
        return cls(
            function_id=request.function_id,
            function_call_id=request.function_call_id,
            task_id=request.task_id,
            input_id=getattr(request, "input_id", ""),
            sandbox_id=request.sandbox_id,
            search_text=request.search_text,
            source=source,
        )

    def select(self, batch: api_pb2.TaskLogsBatch) -> api_pb2.TaskLogsBatch | None:
        """The batch, or the part of it that matches (lines with the search text); None if nothing does."""
        item = batch.items[0] if batch.items else api_pb2.TaskLogs()
        matches = (
            not self.sandbox_id  # there are no sandboxes
            and (not self.function_id or batch.function_id == self.function_id)
            and (not self.function_call_id or item.function_call_id == self.function_call_id)
            and (not self.task_id or batch.task_id == self.task_id)
            and (not self.input_id or batch.input_id == self.input_id)
            and (not self.source or item.file_descriptor == self.source)
        )
        if not matches:
            return None
        if not self.search_text:
            return batch
        chosen = api_pb2.TaskLogsBatch()
        chosen.CopyFrom(batch)
        del chosen.items[:]
        chosen.items.extend(line for line in batch.items if self.search_text in line.data)
        return chosen if chosen.items else None


def _last_items(batch: api_pb2.TaskLogsBatch, count: int) -> api_pb2.TaskLogsBatch:
    if len(batch.items) <= count:
        return batch
    trimmed = api_pb2.TaskLogsBatch()
    trimmed.CopyFrom(batch)
    del trimmed.items[: len(batch.items) - count]
    return trimmed


def _time_of(batch: api_pb2.TaskLogsBatch) -> float:
    return batch.items[0].timestamp if batch.items else 0.0


def _seconds(timestamp: Timestamp, *, unset: float = 0.0) -> float:
    if not timestamp.seconds and not timestamp.nanos:
        return unset
    return timestamp.seconds + timestamp.nanos / 1e9


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.seconds = int(seconds)
    stamp.nanos = int((seconds - int(seconds)) * 1e9)
    return stamp
