"""Dicts: the RPCs behind `modal.Dict`, from clients and from containers alike.

    service = DictService()

Keys and values arrive pickled by the client; a key is its pickle, so two keys are the same when their
pickles are (Modal recommends primitive keys, since cloudpickle is not deterministic). Entries are kept
until deleted or cleared (Modal expires an entry after 7 days without reads or writes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from grpclib.server import Stream
from modal_proto import api_pb2

from tests.emulator.ids import new_id
from tests.emulator.rpc import Service, get_or_create


@dataclass
class _Dict:
    dict_id: str
    name: str
    created_at: float
    entries: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def metadata(self) -> api_pb2.DictMetadata:
        return api_pb2.DictMetadata(
            name=self.name,
            creation_info=api_pb2.CreationInfo(created_at=self.created_at, created_by="emulator"),
        )


class DictService(Service):
    def __init__(self) -> None:
        self._dicts: dict[str, _Dict] = {}
        self._names: dict[str, str] = {}

    async def DictGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.DictGetOrCreateRequest = await stream.recv_message()
        found = get_or_create(
            "Dict",
            request.deployment_name,
            request.object_creation_type,
            lambda name: self._dicts.get(self._names.get(name, "")),
            self._create,
            self._delete,
        )
        found.entries.update((entry.key, entry.value) for entry in request.data)
        await stream.send_message(
            api_pb2.DictGetOrCreateResponse(dict_id=found.dict_id, metadata=found.metadata)
        )

    async def DictGetById(self, stream: Stream) -> None:
        request: api_pb2.DictGetByIdRequest = await stream.recv_message()
        found = self._dict(request.dict_id)
        await stream.send_message(api_pb2.DictGetByIdResponse(dict_id=found.dict_id, metadata=found.metadata))

    async def DictHeartbeat(self, stream: Stream) -> None:
        request: api_pb2.DictHeartbeatRequest = await stream.recv_message()
        self._dict(request.dict_id)
        await stream.send_message(Empty())

    async def DictDelete(self, stream: Stream) -> None:
        request: api_pb2.DictDeleteRequest = await stream.recv_message()
        self._delete(self._dict(request.dict_id))
        await stream.send_message(Empty())

    async def DictList(self, stream: Stream) -> None:
        request: api_pb2.DictListRequest = await stream.recv_message()
        pagination = request.pagination
        found = []
        for item in sorted(
            (self._dicts[dict_id] for dict_id in self._names.values()), key=lambda d: -d.created_at
        ):
            if pagination.created_before and item.created_at >= pagination.created_before:
                continue
            found.append(
                api_pb2.DictListResponse.DictInfo(
                    name=item.name, created_at=item.created_at, dict_id=item.dict_id, metadata=item.metadata
                )
            )
            if pagination.max_objects and len(found) >= pagination.max_objects:
                break
        await stream.send_message(api_pb2.DictListResponse(dicts=found, environment_name="main"))

    async def DictUpdate(self, stream: Stream) -> None:
        """Set the entries; with `if_not_exists` only if the key is new (`created` says whether it was)."""
        request: api_pb2.DictUpdateRequest = await stream.recv_message()
        found = self._dict(request.dict_id)
        if request.if_not_exists and any(entry.key in found.entries for entry in request.updates):
            await stream.send_message(api_pb2.DictUpdateResponse(created=False))
            return
        found.entries.update((entry.key, entry.value) for entry in request.updates)
        await stream.send_message(api_pb2.DictUpdateResponse(created=True))

    async def DictGet(self, stream: Stream) -> None:
        request: api_pb2.DictGetRequest = await stream.recv_message()
        entries = self._dict(request.dict_id).entries
        found = request.key in entries
        await stream.send_message(api_pb2.DictGetResponse(found=found, value=entries.get(request.key, b"")))

    async def DictContains(self, stream: Stream) -> None:
        request: api_pb2.DictContainsRequest = await stream.recv_message()
        found = request.key in self._dict(request.dict_id).entries
        await stream.send_message(api_pb2.DictContainsResponse(found=found))

    async def DictPop(self, stream: Stream) -> None:
        request: api_pb2.DictPopRequest = await stream.recv_message()
        entries = self._dict(request.dict_id).entries
        found = request.key in entries
        value = entries.pop(request.key, b"")
        await stream.send_message(api_pb2.DictPopResponse(found=found, value=value))

    async def DictLen(self, stream: Stream) -> None:
        request: api_pb2.DictLenRequest = await stream.recv_message()
        # Modal's len "will return at most 100,000".
        await stream.send_message(
            api_pb2.DictLenResponse(len=min(len(self._dict(request.dict_id).entries), 100_000))
        )

    async def DictClear(self, stream: Stream) -> None:
        request: api_pb2.DictClearRequest = await stream.recv_message()
        self._dict(request.dict_id).entries.clear()
        await stream.send_message(Empty())

    async def DictContents(self, stream: Stream) -> None:
        """Every entry, its key always and its value when asked for."""
        request: api_pb2.DictContentsRequest = await stream.recv_message()
        for key, value in list(self._dict(request.dict_id).entries.items()):
            await stream.send_message(api_pb2.DictEntry(key=key, value=value if request.values else b""))

    def _create(self, name: str) -> _Dict:
        created = _Dict(new_id("di"), name, time.time())
        self._dicts[created.dict_id] = created
        if name:
            self._names[name] = created.dict_id
        return created

    def _delete(self, found: _Dict) -> None:
        self._dicts.pop(found.dict_id, None)
        if found.name:
            self._names.pop(found.name, None)

    def _dict(self, dict_id: str) -> _Dict:
        if dict_id not in self._dicts:
            raise GRPCError(Status.NOT_FOUND, f"Dict {dict_id} not found")
        return self._dicts[dict_id]
