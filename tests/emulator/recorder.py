"""What the emulator saw: RPCs, images, mounts, functions, secrets, volumes, logs; queryable by tests.

    with modal_emulator.recorder.counting() as rpcs:
        square.remote(3)
    assert rpcs["FunctionMap"] == 1
    fn = modal_emulator.recorder.function("square")
    assert fn.gpus == [("A100", 1)] and fn.timeout_secs == 600
    assert "six==1.16.0" in modal_emulator.recorder.image_of("square").pins

The emulator writes from its own thread; tests read from theirs. Writes are single appends or dict
stores (atomic under the GIL); the RPC counter is guarded by a lock so `counting()` sees whole numbers.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class ImageRecord:
    """One image as the function sees it: every layer from the base up, and what was derived from them.

    `pins` are the pip requirements of all layers (requirements files expanded) in layer order,
    `dropped` the GPU-only ones left out when the environment was built on a machine without a GPU.
    """

    image_id: str
    dockerfile_commands: list[list[str]]
    python_version: str | None
    pins: list[str]
    env: dict[str, str]
    dropped: list[str] = field(default_factory=list)
    build_error: str | None = None


@dataclass
class MountRecord:
    """A mount: its container paths and their sha256 digests (`files`), and its name if it is deployed."""

    mount_id: str
    name: str
    files: dict[str, str]


@dataclass
class FunctionRecord:
    """The options a function was created with, read from its FunctionCreate request.

    `gpus` holds one `(type, count)` per ranked choice (a fallback list has several; no GPU gives []).
    `cpu` is in cores, `memory_mb` in MiB; `secrets` and `volumes` hold names where the client gave
    them (ids otherwise); `volumes` maps a mount path to the volume. `peak_running` is the most inputs
    that ran at once, which a concurrency limit must bound; `peak_inputs_per_container` the most one
    container ran at once (input concurrency); `batch_sizes` the size of every batch (or single input)
    handed to a container, in order.
    """

    function_id: str
    app_id: str
    name: str
    module_name: str
    serialized: bool
    image_id: str
    mount_ids: list[str]
    gpus: list[tuple[str, int]]
    cpu: float | None
    memory_mb: int | None
    timeout_secs: int
    retries: int
    max_containers: int | None
    secrets: list[str]
    volumes: dict[str, str]
    regions: list[str]
    peak_running: int = 0
    peak_inputs_per_container: int = 0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class AppRecord:
    """An app: its description (name), and the states it went through (`"ephemeral"`, `"detached"`, ...)."""

    app_id: str
    description: str
    states: list[str] = field(default_factory=list)


@dataclass
class LogLine:
    """Output a container wrote: which function, which stream (`"stdout"` or `"stderr"`), the text, the
    container (`task_id`), and the input and call it is attributed to (empty between inputs, or while a
    container runs several at once)."""

    function_name: str
    stream: str
    text: str
    task_id: str = ""
    input_id: str = ""
    function_call_id: str = ""


class Recorder:
    """Everything the emulator observed since it started (or since `reset()`).

    recorder.rpc_counts["AppCreate"]        # how often a client called an RPC
    recorder.container_rpc_counts           # the same for RPCs made from inside containers
    recorder.unimplemented                  # RPC names the emulator refused, in call order
    recorder.function("train").gpus         # options of the latest function with that name
    recorder.image_of("train").pins         # the image that function asked for
    recorder.mounted_files("train")         # {container path: sha256} of everything mounted
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rpc_counts: Counter[str] = Counter()
        self.container_rpc_counts: Counter[str] = Counter()  # RPCs that came from containers
        self.unimplemented: list[str] = []
        self.images: dict[str, ImageRecord] = {}
        self.mounts: dict[str, MountRecord] = {}
        self.functions: dict[str, FunctionRecord] = {}
        self.apps: dict[str, AppRecord] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.volumes: dict[str, str] = {}
        self.logs: list[LogLine] = []
        self.attempts: Counter[str] = Counter()

    def reset(self) -> None:
        """Forget everything recorded so far (the emulator's state itself is kept)."""
        with self._lock:
            self.rpc_counts.clear()
            self.container_rpc_counts.clear()
        self.unimplemented.clear()
        self.images.clear()
        self.mounts.clear()
        self.functions.clear()
        self.apps.clear()
        self.secrets.clear()
        self.volumes.clear()
        self.logs.clear()
        self.attempts.clear()

    def count_rpc(self, method: str) -> None:
        with self._lock:
            self.rpc_counts[method] += 1

    def count_container_rpc(self, method: str) -> None:
        with self._lock:
            self.container_rpc_counts[method] += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        """Count the RPCs made inside the block; the yielded Counter is filled in when the block exits.

        Background RPCs of a running app (AppHeartbeat, AppGetLogs) land in it too when they happen.

            with recorder.counting() as rpcs:
                fn.map(range(100))
            assert rpcs["FunctionPutInputs"] < 10
        """
        with self._lock:
            before = Counter(self.rpc_counts)
        delta: Counter[str] = Counter()
        try:
            yield delta
        finally:
            with self._lock:
                delta.update(self.rpc_counts)
            delta.subtract(before)
            for name in [name for name, count in delta.items() if count <= 0]:
                del delta[name]

    def function(self, name: str) -> FunctionRecord:
        """The most recently created function called `name`; KeyError naming the known ones otherwise."""
        # list() copies in one step, so the emulator thread adding a function cannot break the loop.
        records = list(self.functions.values())
        matches = [record for record in records if record.name == name]
        if not matches:
            known = sorted({record.name for record in records})
            raise KeyError(f"no function named {name!r} was created; created: {known}")
        return matches[-1]

    def image_of(self, function_name: str) -> ImageRecord:
        """The image the latest function called `function_name` runs in."""
        return self.images[self.function(function_name).image_id]

    def mounted_files(self, function_name: str) -> dict[str, str]:
        """Container path -> sha256 of every file mounted into the latest function called `function_name`."""
        files: dict[str, str] = {}
        for mount_id in self.function(function_name).mount_ids:
            if mount_id in self.mounts:
                files.update(self.mounts[mount_id].files)
        return files

    def log_text(self, function_name: str) -> str:
        """Everything the containers of `function_name` printed, stdout and stderr interleaved."""
        return "".join(line.text for line in list(self.logs) if line.function_name == function_name)
