"""Images the clients asked for: layers by id, read into records, built once as local environments.

    builds = ImageBuilds(recorder)
    image_id = builds.get_or_create(request.image, client_version="1.6.4", new_id=lambda: "im-1")
    environment = await builds.start(image_id)     # None when the image has no Python
    builds.record(image_id).pins

Identical layer definitions get the same id, so an image is built once per emulator (and its
environment once per machine, through the environment cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from modal_proto import api_pb2

from mini.image.materialise import Environment, materialise_environment
from tests.emulator.images import UnsupportedImageError, describe_layers
from tests.emulator.recorder import ImageRecord, Recorder


@dataclass
class _Layer:
    commands: list[str]
    base_id: str
    context_files: dict[str, bytes]
    context_mount_id: str
    client_version: str
    build: asyncio.Task | None = None


class ImageBuilds:
    """Image layers and their builds."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._layers: dict[str, _Layer] = {}
        self._ids: dict[bytes, str] = {}
        self._records: dict[str, ImageRecord] = {}
        self._standalone_pythons: dict[str, str] = {}

    def get_or_create(self, image: api_pb2.Image, *, client_version: str, new_id: Callable[[], str]) -> str:
        key = image.SerializeToString(deterministic=True)
        if key not in self._ids:
            self._ids[key] = image_id = new_id()
            self._layers[image_id] = _Layer(
                commands=list(image.dockerfile_commands),
                base_id=image.base_images[0].image_id if image.base_images else "",
                context_files={file.filename: file.data for file in image.context_files},
                context_mount_id=image.context_mount_id,
                client_version=client_version,
            )
        return self._ids[key]

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._layers

    def add_standalone_python(self, mount_id: str, series: str) -> None:
        """Mount `mount_id` is Modal's standalone Python `series` (what `add_python=` copies in)."""
        self._standalone_pythons[mount_id] = series

    def finished_result(self, image_id: str) -> api_pb2.GenericResult | None:
        """The build's result if it has finished, so the client need not wait for it."""
        build = self._layers[image_id].build
        return build_result(build) if build is not None and build.done() else None

    def start(self, image_id: str) -> asyncio.Task[Environment | None]:
        """The build of `image_id`, started on first use; its result is None for an image without Python."""
        layer = self._layers[image_id]
        if layer.build is None:
            record = self._describe(image_id)
            self._records[image_id] = self._recorder.images[image_id] = record
            layer.build = asyncio.create_task(_build(record, layer.client_version))
        return layer.build

    def record(self, image_id: str) -> ImageRecord:
        return self._records[image_id]

    def _describe(self, image_id: str) -> ImageRecord:
        chain: list[_Layer] = []
        current = image_id
        while current:
            chain.insert(0, self._layers[current])
            current = self._layers[current].base_id
        context_files = {path: data for layer in chain for path, data in layer.context_files.items()}
        commands = [layer.commands for layer in chain]
        added = [
            self._standalone_pythons[layer.context_mount_id]
            for layer in chain
            if layer.context_mount_id in self._standalone_pythons
        ]
        try:
            description = describe_layers(commands, context_files, added_python=next(iter(added), None))
        except UnsupportedImageError as exc:
            return ImageRecord(image_id, commands, None, [], {}, build_error=str(exc))
        return ImageRecord(image_id, commands, description.python_version, description.pins, description.env)


async def _build(record: ImageRecord, client_version: str) -> Environment | None:
    # An image without Python (a bare registry image) builds on Modal too; only a container started
    # from it fails, so that is where `build_error` is reported.
    if record.python_version is None:
        return None
    # Real Modal makes its client library available in every container; here it is a pin.
    requirements = [*record.pins, f"modal=={client_version}"]
    environment = await asyncio.to_thread(materialise_environment, record.python_version, requirements)
    record.dropped = list(environment.dropped)
    return environment


def build_result(build: asyncio.Task) -> api_pb2.GenericResult:
    """A finished build as the GenericResult modal expects (a failure carries the builder's message)."""
    if build.cancelled() or build.exception() is not None:
        error = "cancelled" if build.cancelled() else str(build.exception())
        return api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE, exception=error)
    return api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
