"""Queues: the RPCs behind `modal.Queue`, from clients and from containers alike.

    service = QueueService()

A queue holds FIFO partitions of pickled values, the default one under the empty key. As Modal documents:
a partition holds up to 5,000 items (a put beyond answers RESOURCE_EXHAUSTED, which the client raises as
`queue.Full` or, for a blocking put, retries until its timeout), an item is at most 1 MiB, a queue has up
to 100,000 partitions, and a partition is cleared `partition_ttl` seconds (24 hours by default) after its
last put. Gets wait up to the request's timeout for a value; `iterate()` reads values in place from a
cursor (QueueNextItems) without taking them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from grpclib.server import Stream
from modal_proto import api_pb2

from tests.emulator.ids import new_id
from tests.emulator.rpc import Service, get_or_create

MAX_PARTITION_ITEMS = 5_000
MAX_PARTITIONS = 100_000
MAX_ITEM_BYTES = 1 << 20
_NEXT_ITEMS_PAGE = 100


@dataclass
class _Partition:
    items: list[tuple[int, bytes]] = field(default_factory=list)  # (entry number, pickled value)
    expires_at: float = 0.0


@dataclass
class _Queue:
    queue_id: str
    name: str
    created_at: float
    partitions: dict[str, _Partition] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    entries: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def metadata(self) -> api_pb2.QueueMetadata:
        return api_pb2.QueueMetadata(
            name=self.name,
            creation_info=api_pb2.CreationInfo(created_at=self.created_at, created_by="emulator"),
        )

    def partition(self, key: str) -> _Partition:
        """The live partition under `key` (an expired one is cleared first)."""
        partition = self.partitions.get(key)
        if partition is not None and partition.expires_at <= time.time():
            del self.partitions[key]
            partition = None
        return partition if partition is not None else _Partition()

    def live_partitions(self) -> dict[str, _Partition]:
        for key in list(self.partitions):
            self.partition(key)
        return self.partitions


class QueueService(Service):
    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._names: dict[str, str] = {}

    async def QueueGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.QueueGetOrCreateRequest = await stream.recv_message()
        queue = get_or_create(
            "Queue",
            request.deployment_name,
            request.object_creation_type,
            lambda name: self._queues.get(self._names.get(name, "")),
            self._create,
            self._delete,
        )
        await stream.send_message(
            api_pb2.QueueGetOrCreateResponse(queue_id=queue.queue_id, metadata=queue.metadata)
        )

    async def QueueGetById(self, stream: Stream) -> None:
        request: api_pb2.QueueGetByIdRequest = await stream.recv_message()
        queue = self._queue(request.queue_id)
        await stream.send_message(
            api_pb2.QueueGetByIdResponse(queue_id=queue.queue_id, metadata=queue.metadata)
        )

    async def QueueHeartbeat(self, stream: Stream) -> None:
        request: api_pb2.QueueHeartbeatRequest = await stream.recv_message()
        self._queue(request.queue_id)
        await stream.send_message(Empty())

    async def QueueDelete(self, stream: Stream) -> None:
        request: api_pb2.QueueDeleteRequest = await stream.recv_message()
        self._delete(self._queue(request.queue_id))
        await stream.send_message(Empty())

    async def QueueList(self, stream: Stream) -> None:
        request: api_pb2.QueueListRequest = await stream.recv_message()
        pagination = request.pagination
        found = []
        named = sorted(
            (self._queues[queue_id] for queue_id in self._names.values()), key=lambda q: -q.created_at
        )
        for queue in named:
            if pagination.created_before and queue.created_at >= pagination.created_before:
                continue
            partitions = queue.live_partitions()
            found.append(
                api_pb2.QueueListResponse.QueueInfo(
                    name=queue.name,
                    created_at=queue.created_at,
                    num_partitions=len(partitions),
                    total_size=sum(len(partition.items) for partition in partitions.values()),
                    queue_id=queue.queue_id,
                    metadata=queue.metadata,
                )
            )
            if pagination.max_objects and len(found) >= pagination.max_objects:
                break
        await stream.send_message(api_pb2.QueueListResponse(queues=found, environment_name="main"))

    async def QueuePut(self, stream: Stream) -> None:
        request: api_pb2.QueuePutRequest = await stream.recv_message()
        queue = self._queue(request.queue_id)
        if any(len(value) > MAX_ITEM_BYTES for value in request.values):
            # What the client sees when Modal refuses a request body this large (HTTP 413).
            raise GRPCError(Status.INVALID_ARGUMENT, "a Queue item is limited to 1 MiB (status = '413')")
        partitions = queue.live_partitions()
        key = _key(request.partition_key)
        if key not in partitions and len(partitions) >= MAX_PARTITIONS:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, f"Queue {queue.queue_id} has {MAX_PARTITIONS} partitions"
            )
        partition = partitions.get(key) or _Partition()
        if len(partition.items) + len(request.values) > MAX_PARTITION_ITEMS:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"Queue partition is full: it holds at most {MAX_PARTITION_ITEMS} items",
            )
        partition.items.extend((next(queue.entries), bytes(value)) for value in request.values)
        partition.expires_at = time.time() + (request.partition_ttl_seconds or 24 * 3600)
        partitions[key] = partition
        queue.changed.set()
        await stream.send_message(Empty())

    async def QueueGet(self, stream: Stream) -> None:
        """Take up to `n_values` from the front of the partition, waiting up to `timeout` for the first."""
        request: api_pb2.QueueGetRequest = await stream.recv_message()
        queue = self._queue(request.queue_id)
        key = _key(request.partition_key)
        await _wait(queue, lambda: bool(queue.partition(key).items), request.timeout)
        partition = queue.partition(key)
        taken = partition.items[: max(request.n_values, 1)]
        del partition.items[: len(taken)]
        await stream.send_message(api_pb2.QueueGetResponse(values=[value for _, value in taken]))

    async def QueueNextItems(self, stream: Stream) -> None:
        """Items after cursor `last_entry_id`, left in place, waiting up to `item_poll_timeout` for one."""
        request: api_pb2.QueueNextItemsRequest = await stream.recv_message()
        queue = self._queue(request.queue_id)
        key = _key(request.partition_key)
        after = int(request.last_entry_id.split("-")[0]) if request.last_entry_id else 0

        def following() -> list[tuple[int, bytes]]:
            return [item for item in queue.partition(key).items if item[0] > after][:_NEXT_ITEMS_PAGE]

        await _wait(queue, lambda: bool(following()), request.item_poll_timeout)
        items = [api_pb2.QueueItem(value=value, entry_id=f"{number}-0") for number, value in following()]
        await stream.send_message(api_pb2.QueueNextItemsResponse(items=items))

    async def QueueLen(self, stream: Stream) -> None:
        request: api_pb2.QueueLenRequest = await stream.recv_message()
        queue = self._queue(request.queue_id)
        if request.total:
            length = sum(len(partition.items) for partition in queue.live_partitions().values())
        else:
            length = len(queue.partition(_key(request.partition_key)).items)
        await stream.send_message(api_pb2.QueueLenResponse(len=length))

    async def QueueClear(self, stream: Stream) -> None:
        request: api_pb2.QueueClearRequest = await stream.recv_message()
        queue = self._queue(request.queue_id)
        if request.all_partitions:
            queue.partitions.clear()
        else:
            queue.partitions.pop(_key(request.partition_key), None)
        await stream.send_message(Empty())

    def _create(self, name: str) -> _Queue:
        queue = _Queue(new_id("qu"), name, time.time())
        self._queues[queue.queue_id] = queue
        if name:
            self._names[name] = queue.queue_id
        return queue

    def _delete(self, queue: _Queue) -> None:
        self._queues.pop(queue.queue_id, None)
        if queue.name:
            self._names.pop(queue.name, None)

    def _queue(self, queue_id: str) -> _Queue:
        if queue_id not in self._queues:
            raise GRPCError(Status.NOT_FOUND, f"Queue {queue_id} not found")
        return self._queues[queue_id]


def _key(partition_key: bytes | str) -> str:
    return partition_key.decode() if isinstance(partition_key, bytes) else partition_key


async def _wait(queue: _Queue, condition, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0)
    while not condition() and loop.time() < deadline:
        queue.changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(queue.changed.wait(), deadline - loop.time())
