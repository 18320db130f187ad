"""The Volume RPCs: named and ephemeral volumes, the client's file operations on the committed state, and
commits and reloads from the containers that mount them.

    service = VolumeService(volumes=store, files=file_store, runner=runner, recorder=recorder)

Which RPCs the client sends follows from the volume's version (see `volumes`): a new volume is v1. A
commit or reload comes from the container that mounts the volume (the endpoint it arrives through says
which); the client's `Volume.commit()` documents that it "must be called inside a container that mounts
the Volume", so from anywhere else it is refused with FAILED_PRECONDITION, which the client raises as
RuntimeError. A volume mounted outside `/root` is recorded but not provided: committing it changes nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from grpclib.server import Stream
from modal_proto import api_pb2

from tests.emulator.containers import TASK_HEADER, Container
from tests.emulator.files import FileStore
from tests.emulator.functions import FunctionRunner
from tests.emulator.recorder import Recorder
from tests.emulator.rpc import Service, get_or_create
from tests.emulator.volumes import View, Volume, VolumeError, VolumeStore

_LIST_PAGE = 100  # entries per VolumeListFiles message


class VolumeService(Service):
    def __init__(
        self, *, volumes: VolumeStore, files: FileStore, runner: FunctionRunner, recorder: Recorder
    ) -> None:
        self._volumes = volumes
        self._files = files
        self._runner = runner
        self._recorder = recorder

    async def VolumeGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.VolumeGetOrCreateRequest = await stream.recv_message()
        replaced: list[Volume] = []
        volume = get_or_create(
            "Volume",
            request.deployment_name,
            request.object_creation_type,
            self._volumes.named,
            lambda name: self._volumes.create(name, request.version),
            replaced.append,
        )
        for old in replaced:
            await self._volumes.delete(old)
        self._recorder.volumes[volume.volume_id] = volume.name or volume.volume_id
        await stream.send_message(
            api_pb2.VolumeGetOrCreateResponse(
                volume_id=volume.volume_id, version=volume.version, metadata=volume.metadata
            )
        )

    async def VolumeGetById(self, stream: Stream) -> None:
        request: api_pb2.VolumeGetByIdRequest = await stream.recv_message()
        volume = self._volume(request.volume_id)
        await stream.send_message(
            api_pb2.VolumeGetByIdResponse(volume_id=volume.volume_id, metadata=volume.metadata)
        )

    async def VolumeHeartbeat(self, stream: Stream) -> None:
        request: api_pb2.VolumeHeartbeatRequest = await stream.recv_message()
        self._volume(request.volume_id)
        await stream.send_message(Empty())

    async def VolumeList(self, stream: Stream) -> None:
        request: api_pb2.VolumeListRequest = await stream.recv_message()
        pagination = request.pagination
        items = []
        for volume in self._volumes.listed():
            if pagination.created_before and volume.created_at >= pagination.created_before:
                continue
            items.append(
                api_pb2.VolumeListItem(
                    label=volume.name,
                    volume_id=volume.volume_id,
                    created_at=volume.created_at,
                    metadata=volume.metadata,
                )
            )
            if pagination.max_objects and len(items) >= pagination.max_objects:
                break
        await stream.send_message(api_pb2.VolumeListResponse(items=items, environment_name="main"))

    async def VolumeDelete(self, stream: Stream) -> None:
        request: api_pb2.VolumeDeleteRequest = await stream.recv_message()
        await self._volumes.delete(self._volume(request.volume_id))
        await stream.send_message(Empty())

    async def VolumeRename(self, stream: Stream) -> None:
        request: api_pb2.VolumeRenameRequest = await stream.recv_message()
        with _as_grpc_errors():
            self._volumes.rename(self._volume(request.volume_id), request.name)
        await stream.send_message(Empty())

    # --- the committed state ---

    async def VolumeListFiles(self, stream: Stream) -> None:
        await self._list(stream, api_pb2.VolumeListFilesResponse)

    async def VolumeListFiles2(self, stream: Stream) -> None:
        await self._list(stream, api_pb2.VolumeListFiles2Response)

    async def _list(self, stream: Stream, response_type: type) -> None:
        request = await stream.recv_message()
        with _as_grpc_errors():
            entries = await self._volumes.entries(
                self._volume(request.volume_id), request.path or "/", recursive=request.recursive
            )
        if request.max_entries:
            entries = entries[: request.max_entries]
        for start in range(0, len(entries), _LIST_PAGE):
            await stream.send_message(response_type(entries=entries[start : start + _LIST_PAGE]))

    async def VolumeGetFile2(self, stream: Stream) -> None:
        request: api_pb2.VolumeGetFile2Request = await stream.recv_message()
        with _as_grpc_errors():
            response = await self._volumes.download(
                self._volume(request.volume_id), request.path, request.start, request.len
            )
        await stream.send_message(response)

    async def VolumePutFiles(self, stream: Stream) -> None:
        request: api_pb2.VolumePutFilesRequest = await stream.recv_message()
        volume = self._volume(request.volume_id)
        try:
            files = [(file.filename, self._files.path(file.sha256_hex), file.mode) for file in request.files]
        except KeyError as error:
            raise GRPCError(
                Status.FAILED_PRECONDITION, f"{error.args[0]}: upload it with MountPutFile first"
            ) from None
        with _as_grpc_errors():
            await self._volumes.put_files(
                volume, files, overwrite=not request.disallow_overwrite_existing_files
            )
        await stream.send_message(Empty())

    async def VolumeRemoveFile(self, stream: Stream) -> None:
        await self._remove(stream)

    async def VolumeRemoveFile2(self, stream: Stream) -> None:
        await self._remove(stream)

    async def _remove(self, stream: Stream) -> None:
        request = await stream.recv_message()
        with _as_grpc_errors():
            await self._volumes.remove(
                self._volume(request.volume_id), request.path, recursive=request.recursive
            )
        await stream.send_message(Empty())

    async def VolumeCopyFiles(self, stream: Stream) -> None:
        await self._copy(stream)

    async def VolumeCopyFiles2(self, stream: Stream) -> None:
        await self._copy(stream)

    async def _copy(self, stream: Stream) -> None:
        request = await stream.recv_message()
        with _as_grpc_errors():
            await self._volumes.copy(
                self._volume(request.volume_id),
                list(request.src_paths),
                request.dst_path,
                recursive=request.recursive,
            )
        await stream.send_message(Empty())

    # --- containers' mounts ---

    async def VolumeCommit(self, stream: Stream) -> None:
        request: api_pb2.VolumeCommitRequest = await stream.recv_message()
        view = self._mount(stream, request.volume_id, "commit")
        if view is not None:
            with _as_grpc_errors():
                await self._volumes.commit(view)
        await stream.send_message(api_pb2.VolumeCommitResponse(skip_reload=False))

    async def VolumeReload(self, stream: Stream) -> None:
        request: api_pb2.VolumeReloadRequest = await stream.recv_message()
        view = self._mount(stream, request.volume_id, "reload")
        if view is not None:
            container = self._runner.container(stream.metadata[TASK_HEADER])[1]
            if _holds_open_files(container, view.path):
                raise GRPCError(
                    Status.FAILED_PRECONDITION,
                    f"Volume {request.volume_id} cannot be reloaded: "
                    "there are open files preventing the operation",
                )
            with _as_grpc_errors():
                await self._volumes.reload(view)
        await stream.send_message(Empty())

    def _mount(self, stream: Stream, volume_id: str, verb: str) -> View | None:
        """The calling container's view of the volume (None when it is mounted where the emulator does not
        provide it); FAILED_PRECONDITION when the caller does not mount it."""
        self._volume(volume_id)
        try:
            function, container = self._runner.container(stream.metadata.get(TASK_HEADER, ""))
        except KeyError:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"Volume {verb} must be called inside a container that mounts the volume",
            ) from None
        if volume_id in container.views:
            return container.views[volume_id]
        if any(mount.volume_id == volume_id for mount in function.definition.volume_mounts):
            return None
        raise GRPCError(Status.FAILED_PRECONDITION, f"this container does not mount volume {volume_id}")

    def _volume(self, volume_id: str) -> Volume:
        with _as_grpc_errors():
            return self._volumes.get(volume_id)


def _holds_open_files(container: Container, folder: Path) -> bool:
    """Whether the container's process has a file below `folder` open (what makes Modal refuse a reload)."""
    if container.pid is None:
        return False
    prefix = f"{folder}{os.sep}"
    fds = Path(f"/proc/{container.pid}/fd")
    try:
        links = [os.readlink(fd) for fd in fds.iterdir()]
    except OSError:
        return False
    return any(link.startswith(prefix) for link in links)


@contextlib.contextmanager
def _as_grpc_errors() -> Iterator[None]:
    """Turns a VolumeError into the GRPCError of its status."""
    try:
        yield
    except VolumeError as error:
        raise GRPCError(getattr(Status, error.status), str(error)) from None
