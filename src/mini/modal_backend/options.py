"""Translating mini's options into `App.function(...)` arguments, refusing bad values before any RPC."""

from __future__ import annotations

import re
from typing import Any

from mini.errors import OptionError
from mini.options import Options

GPU_TYPES = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "L40S",
    "H100",
    "H100!",
    "H200",
    "B200",
    "ANY",
)
_GPU = re.compile(r"^(?P<kind>[A-Za-z0-9!-]+?)(?::(?P<count>[1-9]\d*))?$")

# Research defaults: no silent retries, room for a real training run, and a cap so a runaway sweep cannot
# scale without bound.
DEFAULT_TIMEOUT = 3600
DEFAULT_MAX_CONTAINERS = 10
DEFAULT_STARTUP_TIMEOUT = 600.0

# What `modal.batched` accepts.
MAX_BATCH_SIZE = 1000
MAX_BATCH_WAIT_MS = 10 * 60 * 1000


def check(options: Options) -> None:
    """Raise `OptionError` for values Modal would refuse."""
    gpus = options.gpu if isinstance(options.gpu, list) else [options.gpu] if options.gpu else []
    for gpu in gpus:
        match = _GPU.match(gpu)
        if not match or match["kind"].upper() not in GPU_TYPES:
            raise OptionError(
                f"unknown GPU {gpu!r}. Use one of {', '.join(GPU_TYPES)}, "
                "optionally with a count such as 'H100:2'."
            )
    if options.timeout is not None and options.timeout > 24 * 3600:
        raise OptionError(f"timeout={options.timeout!r} is over Modal's limit of 24 hours (86400 s).")
    if options.memory is not None and options.memory < 128:
        raise OptionError(f"memory={options.memory!r} is in MiB and must be at least 128.")
    if options.max_batch_size is not None and options.max_batch_size > MAX_BATCH_SIZE:
        raise OptionError(
            f"max_batch_size={options.max_batch_size!r} is over Modal's limit of {MAX_BATCH_SIZE} inputs per "
            "batch. Use a smaller batch."
        )
    if options.batch_wait_ms is not None and options.batch_wait_ms > MAX_BATCH_WAIT_MS:
        raise OptionError(
            f"batch_wait_ms={options.batch_wait_ms!r} is over Modal's limit of {MAX_BATCH_WAIT_MS} ms "
            "(10 minutes)."
        )


def function_arguments(options: Options) -> dict[str, Any]:
    """Keyword arguments for `modal.App.function`, from the options that are set plus our defaults."""
    import modal

    arguments: dict[str, Any] = {
        "timeout": int(options.timeout or DEFAULT_TIMEOUT),
        "retries": options.retries or 0,
        "max_containers": options.max_containers or DEFAULT_MAX_CONTAINERS,
    }
    if options.gpu:
        arguments["gpu"] = options.gpu
    if options.cpu:
        arguments["cpu"] = options.cpu
    if options.memory:
        arguments["memory"] = options.memory
    if options.region:
        arguments["region"] = options.region
    if options.env:
        arguments["env"] = dict(options.env)
    if options.secrets:
        arguments["secrets"] = [
            modal.Secret.from_name(s) if isinstance(s, str) else s for s in options.secrets
        ]
    if options.volumes:
        arguments["volumes"] = {
            path: modal.Volume.from_name(v, create_if_missing=True) if isinstance(v, str) else v
            for path, v in options.volumes.items()
        }
    return arguments
