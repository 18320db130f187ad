"""The gRPC side of the emulator for apps, images, mounts, secrets, functions and their calls.

    servicer = Servicer(recorder=Recorder(), blobs=blob_store, workdir=Path("/tmp/emulator"))
    server = grpclib.server.Server([Unimplemented(recorder), servicer, ...])

Volumes, queues, dicts and the RPCs of containers are served by their own services (`volume_service`,
`queue_service`, `dict_service`, `container_service`) over the state held here.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from grpclib.server import Stream
from modal._image import ImageBuilderVersion
from modal.mount import client_mount_name
from modal_proto import api_pb2

from tests.emulator import call_history
from tests.emulator.blobs import BlobStore
from tests.emulator.calls import FunctionCall, format_entry_id, parse_entry_id
from tests.emulator.containers import Container, LogSink
from tests.emulator.files import FileStore
from tests.emulator.functions import EmulatedFunction, FunctionRunner, Provision
from tests.emulator.ids import new_id
from tests.emulator.image_builds import ImageBuilds, build_result
from tests.emulator.log_service import AppLogs
from tests.emulator.recorder import AppRecord, FunctionRecord, LogLine, MountRecord, Recorder
from tests.emulator.rpc import Service, claims, jwt
from tests.emulator.volumes import VolumeStore

IMAGE_BUILDER_VERSION = max(version for version in get_args(ImageBuilderVersion) if version != "PREVIEW")
WORKSPACE = "emulator"
# Outputs of a map are sent in pages of about this size; the client's cursor fetches the rest.
MAX_OUTPUTS_BYTES = 16 << 20
# A generator whose data-out stream has no reader for this long was abandoned by its caller.
ABANDONED_GENERATOR_GRACE = 1.0
_STANDALONE_PYTHON = re.compile(r"^python-build-standalone\.\w+\.(\d+\.\d+)\.\d+-gnu$")
_INPUT_CATEGORIES = {
    api_pb2.GenericResult.GENERIC_STATUS_SUCCESS: "succeeded",
    api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT: "timeout",
    api_pb2.GenericResult.GENERIC_STATUS_TERMINATED: "cancelled",
}
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
    logs: AppLogs = field(default_factory=AppLogs)
    function_ids: set[str] = field(default_factory=set)
    tags: dict[str, str] = field(default_factory=dict)  # function tag -> id, as AppPublish names them
    last_heartbeat: float = 0.0

    @property
    def done(self) -> bool:
        return self.logs.done

    def finish(self) -> None:
        self.logs.finish()


class Servicer(Service):
    """Control-plane state (apps, images, mounts, functions, calls, volumes) and the RPCs over most of it."""

    def __init__(
        self,
        *,
        recorder: Recorder,
        blobs: BlobStore,
        workdir: Path,
        client_retries: bool = False,
        background_commit_secs: float | None = None,
    ) -> None:
        self.recorder = recorder
        self._client_retries = client_retries
        self.blobs = blobs
        self._workdir = workdir
        self._apps: dict[str, _App] = {}
        self._images = ImageBuilds(recorder)
        self.files = FileStore(workdir / "files")
        self.volumes = VolumeStore(workdir / "volumes", blobs)
        self._mount_files: dict[str, dict[str, str]] = {}
        self.runner = FunctionRunner(
            images=self._images,
            volumes=self.volumes,
            recorder=recorder,
            workdir=workdir,
            provision=self._provision,
            background_commit_secs=background_commit_secs,
        )
        self._functions = self.runner.functions
        self.calls: dict[str, FunctionCall] = {}
        self._secrets: dict[str, dict[str, str]] = {}
        self._secret_names: dict[str, str] = {}

    async def shutdown(self) -> None:
        """Stop every container (the emulator is going away)."""
        await self.runner.shutdown()

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
        app_id = new_id("ap")
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
        app = self._app(request.app_id)
        app.record.states.append(_APP_STATE_NAMES.get(request.app_state, "unknown"))
        app.tags.update(request.function_ids)
        await stream.send_message(
            api_pb2.AppPublishResponse(url=f"http://emulator.invalid/apps/{request.app_id}")
        )

    async def AppGetLifecycle(self, stream: Stream) -> None:
        request: api_pb2.AppGetLifecycleRequest = await stream.recv_message()
        app = self._app(request.app_id)
        states = {name: state for state, name in _APP_STATE_NAMES.items()}
        lifecycle = api_pb2.AppLifecycle(
            app_state=states.get(app.record.states[-1], api_pb2.APP_STATE_UNSPECIFIED)
        )
        await stream.send_message(api_pb2.AppGetLifecycleResponse(lifecycle=lifecycle))

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
        for function_id in app.function_ids:
            calls = [call for call in self.calls.values() if call.function_id == function_id]
            self.runner.stop(self._functions[function_id], calls)
        app.record.states.append("stopped")

    def app_logs(self, app_id: str) -> AppLogs:
        return self._app(app_id).logs

    def _app(self, app_id: str) -> _App:
        if app_id not in self._apps:
            raise GRPCError(Status.NOT_FOUND, f"App {app_id} not found")
        return self._apps[app_id]

    # --- secrets (recorded; they also reach the containers' environment) ---

    async def SecretGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.SecretGetOrCreateRequest = await stream.recv_message()
        name = request.deployment_name
        if name and name in self._secret_names:
            secret_id = self._secret_names[name]
        elif name and request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
            raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found")
        else:
            secret_id = new_id("st")
            self._secrets[secret_id] = dict(request.env_dict)
            if name:
                self._secret_names[name] = secret_id
        self.recorder.secrets[name or secret_id] = dict(self._secrets[secret_id])
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=secret_id))

    def add_secret(self, name: str, env: dict[str, str]) -> None:
        """Make `modal.Secret.from_name(name)` resolve to `env`."""
        secret_id = new_id("st")
        self._secrets[secret_id] = dict(env)
        self._secret_names[name] = secret_id

    # --- blobs ---

    async def BlobCreate(self, stream: Stream) -> None:
        request: api_pb2.BlobCreateRequest = await stream.recv_message()
        await stream.send_message(self.blobs.create_upload(request.content_length))

    async def BlobGet(self, stream: Stream) -> None:
        request: api_pb2.BlobGetRequest = await stream.recv_message()
        await stream.send_message(api_pb2.BlobGetResponse(download_url=self.blobs.url(request.blob_id)))

    # --- mounts ---

    async def MountBatchedCheckExistence(self, stream: Stream) -> None:
        request: api_pb2.MountBatchedCheckExistenceRequest = await stream.recv_message()
        missing = [digest for digest in request.sha256_hex_hashes if digest not in self.files]
        await stream.send_message(
            api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)
        )

    async def MountPutFile(self, stream: Stream) -> None:
        request: api_pb2.MountPutFileRequest = await stream.recv_message()
        kind = request.WhichOneof("data_oneof")
        try:
            if kind == "data":
                self.files.put_bytes(request.sha256_hex, request.data)
            elif kind == "data_blob_id":
                self.files.adopt(request.sha256_hex, self.blobs.path(request.data_blob_id))
            exists = request.sha256_hex in self.files
        except KeyError as error:
            raise GRPCError(Status.INVALID_ARGUMENT, str(error)) from None
        await stream.send_message(api_pb2.MountPutFileResponse(exists=exists))

    async def MountGetOrCreate(self, stream: Stream) -> None:
        request: api_pb2.MountGetOrCreateRequest = await stream.recv_message()
        lookup = request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED
        standalone = _STANDALONE_PYTHON.match(request.deployment_name)
        if lookup and request.deployment_name != client_mount_name() and not standalone:
            raise GRPCError(Status.NOT_FOUND, f"Mount '{request.deployment_name}' not found")
        # Modal's global mounts (its client library, standalone Pythons) are not files here: the
        # environment builder installs modal in every image and uses a local interpreter of that series.
        files = {} if lookup else {file.filename: file.sha256_hex for file in request.files}
        mount_id = new_id("mo")
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
            request.image, client_version=client_version, new_id=lambda: new_id("im")
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
        function_id = request.existing_function_id or new_id("fu")
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
        function_id = request.existing_function_id or new_id("fu")
        record = self._function_record(function_id, request.app_id, definition, ranked)
        handle_metadata = api_pb2.FunctionHandleMetadata(
            function_name=definition.function_name,
            function_type=definition.function_type,
            definition_id=f"de-{function_id}",
            function_schema=definition.function_schema,
            supported_input_formats=definition.supported_input_formats,
            supported_output_formats=definition.supported_output_formats,
            app_id=request.app_id,
        )
        self._functions[function_id] = EmulatedFunction(
            record=record, definition=definition, handle_metadata=handle_metadata
        )
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
                function_id=function_id, handle_metadata=handle_metadata, function_data=function_data
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
                mount.mount_path: self._volume_label(mount.volume_id) for mount in definition.volume_mounts
            },
            regions=list(definition.scheduler_placement.regions),
        )

    def _volume_label(self, volume_id: str) -> str:
        try:
            return self.volumes.get(volume_id).name or volume_id
        except Exception:  # noqa: BLE001 - an unknown volume is recorded by its id
            return volume_id

    def _secret_label(self, secret_id: str) -> str:
        return next((name for name, known in self._secret_names.items() if known == secret_id), secret_id)

    async def FunctionMap(self, stream: Stream) -> None:
        request: api_pb2.FunctionMapRequest = await stream.recv_message()
        function = self._function(request.function_id)
        call = FunctionCall(
            function_call_id=new_id("fc"),
            function_id=request.function_id,
            invocation_type=request.function_call_invocation_type,
        )
        # Modal has clients retry the inputs of calls they wait for; a spawned call is retried here.
        call.client_retries = self._client_retries and (
            request.function_call_invocation_type == api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC
        )
        self.calls[call.function_call_id] = call
        pipelined = [self._put_input(function, call, item) for item in request.pipelined_inputs]
        await stream.send_message(
            api_pb2.FunctionMapResponse(
                function_call_id=call.function_call_id,
                function_call_jwt=jwt(function_call_id=call.function_call_id),
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
        call = self._call(claims(request.function_call_jwt)["function_call_id"])
        if not call.client_retries:
            raise GRPCError(
                Status.FAILED_PRECONDITION, "this function call's inputs are retried by the server"
            )
        function = self._function(call.function_id)
        for retry in request.inputs:
            item = call.input(claims(retry.input_jwt)["input_id"])
            self.runner.retry_input(function, call, item, retry.retry_count)
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

    async def FunctionCallGetInfo(self, stream: Stream) -> None:
        """How many of the call's inputs are pending, succeeded, failed, timed out or were cancelled."""
        request: api_pb2.FunctionCallGetInfoRequest = await stream.recv_message()
        call = self._call(request.function_call_id)
        final = {output.input_id: output.result.status for output in call.outputs}
        counts = dict.fromkeys(("pending", "succeeded", "failed", "timeout", "cancelled"), 0)
        for item in call.inputs:
            status = final.get(item.input_id) if item.done else None
            counts[_INPUT_CATEGORIES.get(status, "failed") if status is not None else "pending"] += 1
        category = api_pb2.InputCategoryInfo
        info = api_pb2.FunctionCallInfo(
            function_call_id=call.function_call_id,
            total_inputs=len(call.inputs),
            **{f"{name}_inputs": category(total=count) for name, count in counts.items()},
        )
        await stream.send_message(api_pb2.FunctionCallGetInfoResponse(info=info))

    async def FunctionCallFetch(self, stream: Stream) -> None:
        """A function's inputs, one entry each: the newest `tail.count`, or those enqueued in a time range
        (`since` inclusive, `until` exclusive), oldest first, at most `range.limit`."""
        request: api_pb2.FunctionCallFetchRequest = await stream.recv_message()
        self._function(request.function_id)
        calls = [call for call in self.calls.values() if call.function_id == request.function_id]
        inputs = call_history.function_inputs(calls)
        if request.WhichOneof("query_oneof") == "range":
            bounds = request.range
            if not 1 <= bounds.limit <= call_history.MAX_RANGE_LIMIT:
                raise GRPCError(
                    Status.INVALID_ARGUMENT, f"limit must be between 1 and {call_history.MAX_RANGE_LIMIT}"
                )
            since = bounds.since.ToNanoseconds() / 1e9 if bounds.HasField("since") else 0.0
            until = bounds.until.ToNanoseconds() / 1e9 if bounds.HasField("until") else time.time()
            found = call_history.in_range(inputs, since=since, until=until, limit=bounds.limit)
        else:
            count = request.tail.count
            if not 1 <= count <= call_history.MAX_TAIL:
                message = f"count must be between 1 and {call_history.MAX_TAIL}"
                raise GRPCError(Status.INVALID_ARGUMENT, message)
            found = call_history.newest(inputs, count=count)
        await stream.send_message(api_pb2.FunctionCallFetchResponse(function_call_inputs=found))

    async def FunctionCallCancel(self, stream: Stream) -> None:
        request: api_pb2.FunctionCallCancelRequest = await stream.recv_message()
        call = self._call(request.function_call_id)
        self.runner.cancel(
            self._function(call.function_id), call, terminate_containers=request.terminate_containers
        )
        await stream.send_message(Empty())

    async def FunctionCallGetDataOut(self, stream: Stream) -> None:
        """What a generator yielded, streamed as it is produced; the caller leaving early (the stream
        closes before the generator is done, and nobody reads it again) stops the generator."""
        request: api_pb2.FunctionCallGetDataRequest = await stream.recv_message()
        call = self._call(request.function_call_id)
        position = 0
        call.data_out_readers += 1
        try:
            while True:
                chunks = await call.wait_data_out(after=position, timeout=55)
                if not chunks and call.num_unfinished == 0:
                    return
                for chunk in chunks:
                    if chunk.index > request.last_index:
                        await stream.send_message(chunk)
                position += len(chunks)
        finally:
            call.data_out_readers -= 1
            if call.num_unfinished and not call.data_out_readers:
                asyncio.get_running_loop().call_later(ABANDONED_GENERATOR_GRACE, self._stop_abandoned, call)

    def _stop_abandoned(self, call: FunctionCall) -> None:
        if call.num_unfinished and not call.data_out_readers:
            self.runner.cancel(self._function(call.function_id), call)

    def _function(self, function_id: str) -> EmulatedFunction:
        if function_id not in self._functions:
            raise GRPCError(Status.NOT_FOUND, f"Function {function_id} not found")
        return self._functions[function_id]

    def _call(self, function_call_id: str) -> FunctionCall:
        if function_call_id not in self.calls:
            raise GRPCError(Status.NOT_FOUND, f"Function call {function_call_id} not found")
        return self.calls[function_call_id]

    def _put_input(
        self, function: EmulatedFunction, call: FunctionCall, put: api_pb2.FunctionPutInputsItem
    ) -> api_pb2.FunctionPutInputsResponseItem:
        # Arguments uploaded as a blob stay one: the container's runtime downloads them, as on Modal.
        item = self.runner.put_input(function, call, idx=put.idx, input=put.input)
        return api_pb2.FunctionPutInputsResponseItem(
            idx=put.idx, input_id=item.input_id, input_jwt=jwt(input_id=item.input_id, idx=put.idx)
        )

    def _provision(self, function: EmulatedFunction) -> Provision:
        files = {
            filename: self.files.path(digest)
            for mount_id in function.record.mount_ids
            for filename, digest in self._mount_files.get(mount_id, {}).items()
        }
        secret_env: dict[str, str] = {}
        for secret_id in function.definition.secret_ids:
            secret_env.update(self._secrets.get(secret_id, {}))
        volumes = [
            (mount.mount_path, self.volumes.get(mount.volume_id))
            for mount in function.definition.volume_mounts
        ]
        arguments = api_pb2.ContainerArguments(
            function_id=function.record.function_id,
            app_id=function.record.app_id,
            function_def=function.definition,
            environment_name="main",
            app_layout=self._layout(self._apps[function.record.app_id], function),
        )
        return Provision(
            files=files,
            secret_env=secret_env,
            volumes=volumes,
            arguments=arguments,
            on_log=self._log_sink(function),
        )

    def _layout(self, app: _App, function: EmulatedFunction) -> api_pb2.AppLayout:
        """The app's objects as its containers hydrate them: its functions, and what they depend on."""
        objects = {}
        for function_id in app.function_ids:
            member = self._functions[function_id]
            objects[function_id] = api_pb2.Object(
                object_id=function_id, function_handle_metadata=member.handle_metadata
            )
        for dependency in function.definition.object_dependencies:
            object_id = dependency.object_id
            if object_id in objects:
                continue
            if object_id.startswith("vo-"):
                objects[object_id] = api_pb2.Object(
                    object_id=object_id, volume_metadata=self.volumes.get(object_id).metadata
                )
            else:
                objects[object_id] = api_pb2.Object(object_id=object_id)
        return api_pb2.AppLayout(objects=list(objects.values()), function_ids=app.tags)

    def _log_sink(self, function: EmulatedFunction) -> LogSink:
        app = self._apps[function.record.app_id]
        descriptors = {"stdout": api_pb2.FILE_DESCRIPTOR_STDOUT, "stderr": api_pb2.FILE_DESCRIPTOR_STDERR}
        function_id = function.record.function_id

        def sink(container: Container, stream_name: str, lines: list[str]) -> None:
            # Output is the input's when the container runs exactly one, as it does without concurrency;
            # text written between inputs, or while several run at once, belongs to the container only.
            running = list(container.running.values())
            attempt = running[0] if len(running) == 1 else None
            input_id = attempt.item.input_id if attempt else ""
            function_call_id = attempt.call.function_call_id if attempt else ""
            now = time.time_ns()
            for line in lines:
                self.recorder.logs.append(
                    LogLine(
                        function.record.name, stream_name, line, container.task_id, input_id, function_call_id
                    )
                )
            app.logs.add(
                api_pb2.TaskLogsBatch(
                    task_id=container.task_id,
                    function_id=function_id,
                    input_id=input_id,
                    items=[
                        api_pb2.TaskLogs(
                            data=line,
                            file_descriptor=descriptors[stream_name],
                            timestamp=now / 1e9,
                            timestamp_ns=now,
                            function_call_id=function_call_id,
                            input_id=input_id,
                            container_id=container.task_id,
                        )
                        for line in lines
                    ],
                )
            )

        return sink
