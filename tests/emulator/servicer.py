"""The gRPC side of the emulator: the subset of Modal's control-plane API that `App.run` and calls use.

    servicer = Servicer(recorder=Recorder(), blobs=blob_store, workdir=Path("/tmp/emulator"))
    server = grpclib.server.Server([servicer])

Every method of `ModalClientBase` not defined here answers UNIMPLEMENTED and is recorded by name in
`recorder.unimplemented`, so a client feature the emulator lacks fails loudly instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from grpclib.server import Stream
from modal._image import ImageBuilderVersion
from modal._utils.jwt_utils import DecodedJwt
from modal.mount import client_mount_name
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

from tests.emulator.blobs import BlobStore
from tests.emulator.calls import FunctionCall, format_entry_id, parse_entry_id
from tests.emulator.functions import EmulatedFunction, FunctionRunner, Provision
from tests.emulator.image_builds import ImageBuilds, build_result
from tests.emulator.recorder import AppRecord, FunctionRecord, LogLine, MountRecord, Recorder
from tests.emulator.workers import LogSink

IMAGE_BUILDER_VERSION = max(version for version in get_args(ImageBuilderVersion) if version != "PREVIEW")
WORKSPACE = "emulator"
# Outputs of a map are sent in pages of about this size; the client's cursor fetches the rest.
MAX_OUTPUTS_BYTES = 16 << 20
_STANDALONE_PYTHON = re.compile(r"^python-build-standalone\.\w+\.(\d+\.\d+)\.\d+-gnu$")
_APP_STATE_NAMES = {
    api_pb2.APP_STATE_EPHEMERAL: "ephemeral",
    api_pb2.APP_STATE_DETACHED: "detached",
    api_pb2.APP_STATE_DEPLOYED: "deployed",
    api_pb2.APP_STATE_STOPPED: "stopped",
    api_pb2.APP_STATE_INITIALIZING: "initializing",
}


@dataclass
class _App:
    record: AppRecord
    logs: list[api_pb2.TaskLogsBatch] = field(default_factory=list)
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    function_ids: set[str] = field(default_factory=set)
    last_heartbeat: float = 0.0

    def add_log(self, batch: api_pb2.TaskLogsBatch) -> None:
        batch.entry_id = str(len(self.logs) + 1)
        self.logs.append(batch)
        self.changed.set()

    def finish(self) -> None:
        self.done = True
        self.changed.set()


class Servicer(ModalClientBase):
    """Control-plane state (apps, images, mounts, functions, calls) and the RPCs over it."""

    def __init__(
        self, *, recorder: Recorder, blobs: BlobStore, workdir: Path, client_retries: bool = False
    ) -> None:
        self.recorder = recorder
        self._client_retries = client_retries
        self._blobs = blobs
        self._workdir = workdir
        self._ids = itertools.count(1)
        self._apps: dict[str, _App] = {}
        self._images = ImageBuilds(recorder)
        self._files: dict[str, bytes] = {}
        self._mount_files: dict[str, dict[str, str]] = {}
        self._functions: dict[str, EmulatedFunction] = {}
        self._runner = FunctionRunner(
            images=self._images, blobs=blobs, recorder=recorder, workdir=workdir, provision=self._provision
        )
        self._calls: dict[str, FunctionCall] = {}
        self._secrets: dict[str, dict[str, str]] = {}
        self._secret_names: dict[str, str] = {}
        self._volume_names: dict[str, str] = {}

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    async def shutdown(self) -> None:
        """Stop every input and container (the emulator is going away)."""
        for call in self._calls.values():
            self._runner.cancel(call)
        await self._runner.shutdown(list(self._functions.values()))

    # --- client and environment ---

    async def ClientHello(self, stream: Stream) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def TokenInfoGet(self, stream: Stream) -> None:
        await stream.recv_message()
        token_id = stream.metadata.get("x-modal-token-id", "")
        await stream.send_message(api_pb2.TokenInfoGetResponse(token_id=token_id, workspace_name=WORKSPACE))

    async def WorkspaceNameLookup(self, stream: Stream) -> None:
        await stream.recv_message()
        await stream.send_message(
            api_pb2.WorkspaceNameLookupResponse(workspace_name=WORKSPACE, username=WORKSPACE)
        )

    async def EnvironmentGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.EnvironmentGetOrCreateRequest = await stream.recv_message()
        settings = api_pb2.EnvironmentSettings(image_builder_version=IMAGE_BUILDER_VERSION)
        metadata = api_pb2.EnvironmentMetadata(name=request.deployment_name or "main", settings=settings)
        await stream.send_message(
            api_pb2.EnvironmentGetOrCreateResponse(environment_id="en-emulator", metadata=metadata)
        )

    # --- apps ---

    async def AppCreate(self, stream: Stream) -> None:
        request: api_pb2.AppCreateRequest = await stream.recv_message()
        app_id = self._new_id("ap")
        record = AppRecord(app_id=app_id, description=request.description)
        record.states.append(_APP_STATE_NAMES.get(request.app_state, str(request.app_state)))
        self._apps[app_id] = _App(record=record, last_heartbeat=asyncio.get_running_loop().time())
        self.recorder.apps[app_id] = record
        url = f"http://emulator.invalid/apps/{app_id}"
        await stream.send_message(
            api_pb2.AppCreateResponse(app_id=app_id, app_page_url=url, app_logs_url=url)
        )

    async def AppPublish(self, stream: Stream) -> None:
        request: api_pb2.AppPublishRequest = await stream.recv_message()
        self._app(request.app_id).record.states.append(_APP_STATE_NAMES.get(request.app_state, "unknown"))
        await stream.send_message(
            api_pb2.AppPublishResponse(url=f"http://emulator.invalid/apps/{request.app_id}")
        )

    async def AppHeartbeat(self, stream: Stream) -> None:
        request: api_pb2.AppHeartbeatRequest = await stream.recv_message()
        self._app(request.app_id).last_heartbeat = asyncio.get_running_loop().time()
        await stream.send_message(Empty())

    async def AppClientDisconnect(self, stream: Stream) -> None:
        request: api_pb2.AppClientDisconnectRequest = await stream.recv_message()
        app = self._app(request.app_id)
        if app.record.states[-1] != "detached":
            self._stop(app)
        app.finish()
        await stream.send_message(Empty())

    async def expire_silent_apps(self, timeout: float) -> None:
        """Stop ephemeral apps whose client sent no heartbeat for `timeout` seconds (it died or hung),
        as Modal does; runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(timeout / 4)
            for app in list(self._apps.values()):
                ephemeral = app.record.states[-1] in ("ephemeral", "initializing") and not app.done
                if ephemeral and loop.time() - app.last_heartbeat > timeout:
                    self._stop(app)
                    app.finish()

    def _stop(self, app: _App) -> None:
        # An ephemeral app dies with its client: its inputs are stopped, its containers go away.
        for call in self._calls.values():
            if call.function_id in app.function_ids:
                self._runner.cancel(call)
        for function_id in app.function_ids:
            self._runner.stop_containers(self._functions[function_id])
        app.record.states.append("stopped")

    async def AppGetLogs(self, stream: Stream) -> None:
        request: api_pb2.AppGetLogsRequest = await stream.recv_message()
        app = self._app(request.app_id)
        position = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
        if len(app.logs) <= position and not app.done and request.timeout > 0:
            app.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(app.changed.wait(), request.timeout)
        for batch in app.logs[position:]:
            await stream.send_message(batch)
        if app.done:
            await stream.send_message(api_pb2.TaskLogsBatch(app_done=True))

    def _app(self, app_id: str) -> _App:
        if app_id not in self._apps:
            raise GRPCError(Status.NOT_FOUND, f"App {app_id} not found")
        return self._apps[app_id]

    # --- secrets and volumes (recorded; secrets also reach the containers' environment) ---

    async def SecretGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.SecretGetOrCreateRequest = await stream.recv_message()
        name = request.deployment_name
        if name and name in self._secret_names:
            secret_id = self._secret_names[name]
        elif name and request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
            raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found")
        else:
            secret_id = self._new_id("st")
            self._secrets[secret_id] = dict(request.env_dict)
            if name:
                self._secret_names[name] = secret_id
        self.recorder.secrets[name or secret_id] = dict(self._secrets[secret_id])
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=secret_id))

    def add_secret(self, name: str, env: dict[str, str]) -> None:
        """Make `modal.Secret.from_name(name)` resolve to `env`."""
        secret_id = self._new_id("st")
        self._secrets[secret_id] = dict(env)
        self._secret_names[name] = secret_id

    async def VolumeGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.VolumeGetOrCreateRequest = await stream.recv_message()
        name = request.deployment_name
        volume_id = next((vid for vid, known in self._volume_names.items() if name and known == name), None)
        if volume_id is None:
            volume_id = self._new_id("vo")
            self._volume_names[volume_id] = name or volume_id
        self.recorder.volumes[volume_id] = self._volume_names[volume_id]
        await stream.send_message(api_pb2.VolumeGetOrCreateResponse(volume_id=volume_id))

    # --- blobs ---

    async def BlobCreate(self, stream: Stream) -> None:
        await stream.recv_message()
        blob_id = self._blobs.create()
        await stream.send_message(
            api_pb2.BlobCreateResponse(
                blob_ids=[blob_id], upload_urls=api_pb2.UploadUrlList(items=[self._blobs.url(blob_id)])
            )
        )

    async def BlobGet(self, stream: Stream) -> None:
        request: api_pb2.BlobGetRequest = await stream.recv_message()
        await stream.send_message(api_pb2.BlobGetResponse(download_url=self._blobs.url(request.blob_id)))

    # --- mounts ---

    async def MountBatchedCheckExistence(self, stream: Stream) -> None:
        request: api_pb2.MountBatchedCheckExistenceRequest = await stream.recv_message()
        missing = [digest for digest in request.sha256_hex_hashes if digest not in self._files]
        await stream.send_message(
            api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)
        )

    async def MountPutFile(self, stream: Stream) -> None:
        request: api_pb2.MountPutFileRequest = await stream.recv_message()
        kind = request.WhichOneof("data_oneof")
        if kind == "data":
            self._files[request.sha256_hex] = request.data
        elif kind == "data_blob_id":
            self._files[request.sha256_hex] = self._blobs.get(request.data_blob_id)
        await stream.send_message(api_pb2.MountPutFileResponse(exists=request.sha256_hex in self._files))

    async def MountGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.MountGetOrCreateRequest = await stream.recv_message()
        lookup = request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED
        standalone = _STANDALONE_PYTHON.match(request.deployment_name)
        if lookup and request.deployment_name != client_mount_name() and not standalone:
            raise GRPCError(Status.NOT_FOUND, f"Mount '{request.deployment_name}' not found")
        # Modal's global mounts (its client library, standalone Pythons) are not files here: the
        # environment builder installs modal in every image and uses a local interpreter of that series.
        files = {} if lookup else {file.filename: file.sha256_hex for file in request.files}
        mount_id = self._new_id("mo")
        if lookup and standalone:
            self._images.add_standalone_python(mount_id, standalone.group(1))
        self._mount_files[mount_id] = files
        self.recorder.mounts[mount_id] = MountRecord(
            mount_id=mount_id, name=request.deployment_name, files=dict(files)
        )
        checksum = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()
        await stream.send_message(
            api_pb2.MountGetOrCreateResponse(
                mount_id=mount_id,
                handle_metadata=api_pb2.MountHandleMetadata(content_checksum_sha256_hex=checksum),
            )
        )

    # --- images ---

    async def ImageGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.ImageGetOrCreateRequest = await stream.recv_message()
        client_version = stream.metadata.get("x-modal-client-version", "")
        image_id = self._images.get_or_create(
            request.image, client_version=client_version, new_id=lambda: self._new_id("im")
        )
        await stream.send_message(
            api_pb2.ImageGetOrCreateResponse(
                image_id=image_id,
                result=self._images.finished_result(image_id),
                metadata=api_pb2.ImageMetadata(image_builder_version=request.builder_version),
            )
        )

    async def ImageJoinStreaming(self, stream: Stream) -> None:
        request: api_pb2.ImageJoinStreamingRequest = await stream.recv_message()
        if request.image_id not in self._images:
            raise GRPCError(Status.NOT_FOUND, f"Image {request.image_id} not found")
        build = self._images.start(request.image_id)
        record = self._images.record(request.image_id)
        if not build.done() and not request.last_entry_id:
            line = f"Preparing a Python {record.python_version} environment with {len(record.pins)} pins\n"
            info = api_pb2.TaskLogs(data=line, file_descriptor=api_pb2.FILE_DESCRIPTOR_INFO)
            await stream.send_message(api_pb2.ImageJoinStreamingResponse(task_logs=[info], entry_id="1"))
        done, _ = await asyncio.wait([build], timeout=request.timeout or None)
        if not done:
            return  # the client asks again, as with Modal's long builds
        note = f"No GPU here: left out GPU-only wheels {', '.join(record.dropped)}\n"
        notes = (
            [api_pb2.TaskLogs(data=note, file_descriptor=api_pb2.FILE_DESCRIPTOR_INFO)]
            if record.dropped
            else []
        )
        await stream.send_message(
            api_pb2.ImageJoinStreamingResponse(
                task_logs=notes,
                result=build_result(build),
                metadata=api_pb2.ImageMetadata(image_builder_version=IMAGE_BUILDER_VERSION),
                eof=True,
            )
        )

    # --- functions ---

    async def FunctionPrecreate(self, stream: Stream) -> None:
        request: api_pb2.FunctionPrecreateRequest = await stream.recv_message()
        function_id = request.existing_function_id or self._new_id("fu")
        await stream.send_message(
            api_pb2.FunctionPrecreateResponse(
                function_id=function_id,
                handle_metadata=api_pb2.FunctionHandleMetadata(
                    function_name=request.function_name,
                    function_type=request.function_type,
                    function_schema=request.function_schema,
                    supported_input_formats=request.supported_input_formats,
                    supported_output_formats=request.supported_output_formats,
                    app_id=request.app_id,
                ),
            )
        )

    async def FunctionCreate(self, stream: Stream) -> None:
        request: api_pb2.FunctionCreateRequest = await stream.recv_message()
        if request.function_data.ranked_functions:
            ranked = [ranked.function for ranked in request.function_data.ranked_functions]
        else:
            ranked = [request.function]
        definition = ranked[0]
        function_id = request.existing_function_id or self._new_id("fu")
        record = self._function_record(function_id, request.app_id, definition, ranked)
        self._functions[function_id] = EmulatedFunction(record=record, definition=definition)
        self._app(request.app_id).function_ids.add(function_id)
        self.recorder.functions[function_id] = record
        function_data = api_pb2.FunctionData(
            module_name=definition.module_name,
            function_name=definition.function_name,
            function_type=definition.function_type,
            timeout_secs=definition.timeout_secs,
            ranked_functions=[
                api_pb2.FunctionData.RankedFunction(rank=rank, function=function)
                for rank, function in enumerate(ranked)
            ],
        )
        await stream.send_message(
            api_pb2.FunctionCreateResponse(
                function_id=function_id,
                handle_metadata=api_pb2.FunctionHandleMetadata(
                    function_name=definition.function_name,
                    function_type=definition.function_type,
                    definition_id=f"de-{function_id}",
                    function_schema=definition.function_schema,
                    supported_input_formats=definition.supported_input_formats,
                    supported_output_formats=definition.supported_output_formats,
                    app_id=request.app_id,
                ),
                function_data=function_data,
            )
        )

    def _function_record(
        self, function_id: str, app_id: str, definition: api_pb2.Function, ranked: list[api_pb2.Function]
    ) -> FunctionRecord:
        resources = definition.resources
        autoscaler = definition.autoscaler_settings
        max_containers = autoscaler.max_containers or definition.concurrency_limit or None
        return FunctionRecord(
            function_id=function_id,
            app_id=app_id,
            name=definition.function_name,
            module_name=definition.module_name,
            serialized=bool(definition.function_serialized),
            image_id=definition.image_id,
            mount_ids=list(definition.mount_ids),
            gpus=[
                (function.resources.gpu_config.gpu_type, function.resources.gpu_config.count)
                for function in ranked
                if function.resources.gpu_config.count
            ],
            cpu=resources.milli_cpu / 1000 if resources.milli_cpu else None,
            memory_mb=resources.memory_mb or None,
            timeout_secs=definition.timeout_secs,
            retries=definition.retry_policy.retries,
            max_containers=max_containers,
            secrets=[self._secret_label(secret_id) for secret_id in definition.secret_ids],
            volumes={
                mount.mount_path: self._volume_names.get(mount.volume_id, mount.volume_id)
                for mount in definition.volume_mounts
            },
            regions=list(definition.scheduler_placement.regions),
        )

    def _secret_label(self, secret_id: str) -> str:
        return next((name for name, known in self._secret_names.items() if known == secret_id), secret_id)

    async def FunctionMap(self, stream: Stream) -> None:
        request: api_pb2.FunctionMapRequest = await stream.recv_message()
        function = self._function(request.function_id)
        call = FunctionCall(
            function_call_id=self._new_id("fc"),
            function_id=request.function_id,
            invocation_type=request.function_call_invocation_type,
        )
        # Modal has clients retry the inputs of calls they wait for; a spawned call is retried here.
        call.client_retries = self._client_retries and (
            request.function_call_invocation_type == api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC
        )
        self._calls[call.function_call_id] = call
        pipelined = [self._put_input(function, call, item) for item in request.pipelined_inputs]
        await stream.send_message(
            api_pb2.FunctionMapResponse(
                function_call_id=call.function_call_id,
                function_call_jwt=_jwt(function_call_id=call.function_call_id),
                pipelined_inputs=pipelined,
                retry_policy=function.definition.retry_policy,
                sync_client_retries_enabled=call.client_retries,
                max_inputs_outstanding=1000,
            )
        )

    async def FunctionPutInputs(self, stream: Stream) -> None:
        request: api_pb2.FunctionPutInputsRequest = await stream.recv_message()
        function = self._function(request.function_id)
        call = self._call(request.function_call_id)
        items = [self._put_input(function, call, item) for item in request.inputs]
        await stream.send_message(api_pb2.FunctionPutInputsResponse(inputs=items))

    async def FunctionRetryInputs(self, stream: Stream) -> None:
        request: api_pb2.FunctionRetryInputsRequest = await stream.recv_message()
        call = self._call(_claims(request.function_call_jwt)["function_call_id"])
        if not call.client_retries:
            raise GRPCError(
                Status.FAILED_PRECONDITION, "this function call's inputs are retried by the server"
            )
        function = self._function(call.function_id)
        for retry in request.inputs:
            item = call.input(_claims(retry.input_jwt)["input_id"])
            self._runner.retry_input(function, call, item, retry.retry_count)
        await stream.send_message(
            api_pb2.FunctionRetryInputsResponse(input_jwts=[retry.input_jwt for retry in request.inputs])
        )

    async def FunctionFinishInputs(self, stream: Stream) -> None:
        await stream.recv_message()
        await stream.send_message(Empty())

    async def FunctionGetOutputs(self, stream: Stream) -> None:
        request: api_pb2.FunctionGetOutputsRequest = await stream.recv_message()
        call = self._call(request.function_call_id)
        cursor = parse_entry_id(request.last_entry_id)
        if request.HasField("start_idx"):
            outputs = await call.wait_indices(
                request.start_idx, request.end_idx, request.timeout, clear=request.clear_on_success
            )
        elif request.clear_on_success:
            outputs = []  # a map's closing acknowledgement: the client wants nothing more
        else:
            outputs, cursor = await call.wait_outputs(
                after_entry=cursor, timeout=request.timeout, max_bytes=MAX_OUTPUTS_BYTES
            )
        await stream.send_message(
            api_pb2.FunctionGetOutputsResponse(
                outputs=outputs,
                last_entry_id=format_entry_id(cursor),
                num_unfinished_inputs=call.num_unfinished,
            )
        )

    async def FunctionCallFromId(self, stream: Stream) -> None:
        request: api_pb2.FunctionCallFromIdRequest = await stream.recv_message()
        call = self._call(request.function_call_id)
        app_id = self._functions[call.function_id].record.app_id
        await stream.send_message(
            api_pb2.FunctionCallFromIdResponse(
                function_call_id=call.function_call_id,
                num_inputs=len(call.inputs),
                metadata=api_pb2.FunctionCallHandleMetadata(app_id=app_id, function_id=call.function_id),
            )
        )

    async def FunctionCallCancel(self, stream: Stream) -> None:
        request: api_pb2.FunctionCallCancelRequest = await stream.recv_message()
        self._runner.cancel(self._call(request.function_call_id))
        await stream.send_message(Empty())

    def _function(self, function_id: str) -> EmulatedFunction:
        if function_id not in self._functions:
            raise GRPCError(Status.NOT_FOUND, f"Function {function_id} not found")
        return self._functions[function_id]

    def _call(self, function_call_id: str) -> FunctionCall:
        if function_call_id not in self._calls:
            raise GRPCError(Status.NOT_FOUND, f"Function call {function_call_id} not found")
        return self._calls[function_call_id]

    def _put_input(
        self, function: EmulatedFunction, call: FunctionCall, put: api_pb2.FunctionPutInputsItem
    ) -> api_pb2.FunctionPutInputsResponseItem:
        if put.input.WhichOneof("args_oneof") == "args_blob_id":
            args = self._blobs.get(put.input.args_blob_id)
        else:
            args = put.input.args
        item = self._runner.put_input(
            function,
            call,
            idx=put.idx,
            args=args,
            data_format=put.input.data_format,
            client_retries=call.client_retries,
        )
        return api_pb2.FunctionPutInputsResponseItem(
            idx=put.idx, input_id=item.input_id, input_jwt=_jwt(input_id=item.input_id, idx=put.idx)
        )

    def _provision(self, function: EmulatedFunction) -> Provision:
        files = {
            filename: self._files[digest]
            for mount_id in function.record.mount_ids
            for filename, digest in self._mount_files.get(mount_id, {}).items()
        }
        secret_env: dict[str, str] = {}
        for secret_id in function.definition.secret_ids:
            secret_env.update(self._secrets.get(secret_id, {}))
        return Provision(files=files, secret_env=secret_env, on_log=self._log_sink(function))

    def _log_sink(self, function: EmulatedFunction) -> LogSink:
        app = self._apps[function.record.app_id]
        descriptors = {"stdout": api_pb2.FILE_DESCRIPTOR_STDOUT, "stderr": api_pb2.FILE_DESCRIPTOR_STDERR}

        def sink(stream_name: str, text: str) -> None:
            self.recorder.logs.append(LogLine(function.record.name, stream_name, text))
            app.add_log(
                api_pb2.TaskLogsBatch(
                    function_id=function.record.function_id,
                    items=[api_pb2.TaskLogs(data=text, file_descriptor=descriptors[stream_name])],
                )
            )

        return sink


def _jwt(**claims: object) -> str:
    """An unsigned JWT carrying `claims`, as the tokens Modal hands out for calls and inputs (its client
    reads their payload, for example an input's `idx`)."""
    return DecodedJwt.encode_without_signature(claims)


def _claims(token: str) -> dict[str, Any]:
    try:
        return DecodedJwt.decode_without_verification(token).payload
    except (ValueError, UnicodeDecodeError) as error:
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed token {token[:40]!r}: {error}") from None


def _unimplemented(name: str) -> Callable[[Servicer, Stream], Any]:
    async def handler(self: Servicer, stream: Stream) -> None:
        self.recorder.unimplemented.append(name)
        raise GRPCError(Status.UNIMPLEMENTED, f"the Modal emulator does not implement {name}")

    handler.__name__ = name
    return handler


for _name in ModalClientBase.__abstractmethods__:
    if _name not in Servicer.__dict__:
        setattr(Servicer, _name, _unimplemented(_name))
Servicer.__abstractmethods__ = frozenset()
