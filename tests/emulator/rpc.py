"""Serving parts of Modal's gRPC API from several objects, and answering UNIMPLEMENTED for the rest.

    class Volumes(Service):
        async def VolumeGetOrCreate(self, stream): ...

    server = grpclib.server.Server([Unimplemented(recorder), Volumes(...), Queues(...)])

A `Service` serves the RPCs of Modal's `ModalClient` service that it defines methods for (a later handler
wins where two define one); `Unimplemented` answers every RPC with UNIMPLEMENTED and records its name,
so a client feature the emulator lacks fails loudly instead of hanging.
"""

from __future__ import annotations

from typing import Any

import grpclib.const
from grpclib import GRPCError, Status
from grpclib.server import Stream
from modal._utils.jwt_utils import DecodedJwt
from modal_proto.api_grpc import ModalClientBase

from tests.emulator.recorder import Recorder


class _Methods:
    """What ModalClientBase's mapping looks up: the object's method of that name, or None."""

    def __init__(self, target: object, fallback: Any = None) -> None:
        self._target = target
        self._fallback = fallback

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name, None) or (self._fallback(name) if self._fallback else None)


class Service:
    """A handler object for grpclib serving the RPC methods it defines."""

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping = ModalClientBase.__mapping__(_Methods(self))  # type: ignore[arg-type]
        return {path: handler for path, handler in mapping.items() if handler.func is not None}


class Unimplemented:
    """Answers every RPC with UNIMPLEMENTED, recording its name in `recorder.unimplemented`."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return ModalClientBase.__mapping__(_Methods(object(), self._refuse))  # type: ignore[arg-type]

    def _refuse(self, name: str) -> Any:
        async def handler(stream: Stream) -> None:
            self._recorder.unimplemented.append(name)
            raise GRPCError(Status.UNIMPLEMENTED, f"the Modal emulator does not implement {name}")

        return handler


def jwt(**claims: object) -> str:
    """An unsigned JWT carrying `claims`, as the tokens Modal hands out for calls and inputs (its client
    reads their payload, for example an input's `idx`)."""
    return DecodedJwt.encode_without_signature(claims)


def claims(token: str) -> dict[str, Any]:
    try:
        return DecodedJwt.decode_without_verification(token).payload
    except (ValueError, UnicodeDecodeError) as error:
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed token {token[:40]!r}: {error}") from None


def get_or_create(
    kind: str, name: str, creation_type: int, lookup: Any, create: Any, delete: Any = None
) -> Any:
    """The object a `*GetOrCreate` request names, created as its `object_creation_type` says.

    `lookup(name)` finds a named object (None if there is none), `create(name)` makes one ("" for an
    ephemeral or app-owned one), `delete(obj)` removes one that `CREATE_OVERWRITE_IF_EXISTS` replaces.
    """
    from modal_proto import api_pb2

    if creation_type in (
        api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL,
        api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP,
    ):
        return create("")
    existing = lookup(name) if name else None
    if creation_type == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
        if existing is None:
            raise GRPCError(Status.NOT_FOUND, f"{kind} '{name}' not found")
        return existing
    if creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
        return existing if existing is not None else create(name)
    if creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS:
        if existing is not None:
            raise GRPCError(Status.ALREADY_EXISTS, f"{kind} '{name}' already exists")
        return create(name)
    if creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS:
        if existing is not None and delete is not None:
            delete(existing)
        return create(name)
    raise GRPCError(Status.INVALID_ARGUMENT, f"unsupported object creation type {creation_type}")
