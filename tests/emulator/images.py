"""Reading what an image asks for out of the Dockerfile commands modal sends with ImageGetOrCreate.

    spec = describe_layers([["FROM python:3.11-slim-trixie", "RUN apt-get update"],
                            ["FROM base", "RUN python -m pip install six==1.16.0"]], {})
    spec.python_version, spec.pins   # ("3.11", ["six==1.16.0"])

Only what a Python environment can honour is understood: the Python version of a `python:X.Y` base
image, `pip install` / `uv pip install` lines (packages and `--requirements` files copied in from the
context), and `ENV` lines. Everything else (apt-get, arbitrary RUN) is kept in the record but not run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_PYTHON_BASE = re.compile(r"^FROM\s+(?:\S+/)?python:(\d+\.\d+(?:\.\d+)?)\S*", re.IGNORECASE)
# `uv_pip_install` targets the image's interpreter through a shell substitution shlex cannot parse.
_UV_PYTHON_FLAG = re.compile(r"--python\s+\$\(command -v python\)")
_INSTALL = re.compile(r"^RUN\s+(?:python3?\s+-m\s+pip|pip3?|\S*/uv\s+pip)\s+install\s+(.*)$", re.IGNORECASE)
_FLAGS_WITH_VALUE = {
    "--find-links",
    "-f",
    "--index-url",
    "-i",
    "--extra-index-url",
    "--prerelease",
    "--python",
    "--target",
}
_REQUIREMENTS_FLAGS = {"-r", "--requirement", "--requirements"}


@dataclass
class ImageDescription:
    """What a stack of layers means for a Python environment."""

    python_version: str | None
    pins: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


class UnsupportedImageError(ValueError):
    """The image cannot be reproduced as a local Python environment."""


def describe_layers(
    layers: Sequence[Sequence[str]], context_files: Mapping[str, bytes], *, added_python: str | None = None
) -> ImageDescription:
    """Python version (from the base layer), pip pins and ENV of `layers`, given from base to top.

    `context_files` maps context paths (as in `COPY /.0_requirements.txt ...`) to their contents;
    `added_python` is the series a registry image got through `add_python=` (a standalone build).
    Raises `UnsupportedImageError` when no layer provides Python.
    """
    description = ImageDescription(python_version=added_python)
    for index, commands in enumerate(layers):
        copied: dict[str, bytes] = {}
        for command in commands:
            base = _PYTHON_BASE.match(command)
            if base:
                description.python_version = ".".join(base.group(1).split(".")[:2])
                continue
            if command.upper().startswith("COPY "):
                parts = shlex.split(command)[1:]
                if len(parts) == 2 and parts[0] in context_files:
                    copied[parts[1]] = context_files[parts[0]]
                continue
            if command.upper().startswith("ENV "):
                description.env.update(_parse_env(command[4:]))
                continue
            # The base image's own tooling upgrade (`pip install --upgrade pip wheel uv`) is not a pin.
            install = _INSTALL.match(command)
            if install and index > 0:
                description.pins.extend(_parse_install_args(install.group(1), copied))
    if description.python_version is None:
        raise UnsupportedImageError(
            "this image has no Python, so no function can run in it: use a `python:X.Y` base "
            "(modal.Image.debian_slim(python_version=...)) or `add_python=` on a registry image; "
            f"its base layer is {list(layers[0]) if layers else []}"
        )
    return description


def _parse_env(assignments: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for token in shlex.split(assignments):
        key, sep, value = token.partition("=")
        if sep:
            env[key] = value
    return env


def _parse_install_args(args: str, copied: Mapping[str, bytes]) -> list[str]:
    tokens = shlex.split(_UV_PYTHON_FLAG.sub("", args))
    pins: list[str] = []
    position = 0
    while position < len(tokens):
        token = tokens[position]
        if token in _REQUIREMENTS_FLAGS:
            path = tokens[position + 1]
            if path not in copied:
                raise UnsupportedImageError(
                    f"requirements file {path} is not among the image's context files"
                )
            pins.extend(_requirement_lines(copied[path].decode()))
            position += 2
        elif token in _FLAGS_WITH_VALUE:
            position += 2
        elif token.startswith("-"):
            position += 1
        else:
            pins.append(token)
            position += 1
    return pins


def _requirement_lines(text: str) -> list[str]:
    # `uv export` writes hashes on continuation lines; the pins are what we record and install.
    joined = text.replace("\\\n", " ")
    lines = []
    for raw in joined.splitlines():
        line = re.sub(r"\s--hash=\S+", "", raw.split(" #", 1)[0]).strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines
