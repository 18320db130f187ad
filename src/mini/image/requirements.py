"""The project's locked pins, exported by uv, as requirement lines for the image.

groups = select_groups(pyproject)                  # every dependency group but dev and local
lines = export_requirements(root, groups)          # ("cloudpickle==3.1.2", "jax==0.6.2 ; ...", ...)
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mini.image.errors import ImageSpecError, LockfileError, UvCommandError
from mini.image.uv_command import run_uv

DEFAULT_EXCLUDED_GROUPS = ("dev", "local")

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# `torch==2.5.1+cpu`: the label names a build from a special index; the image installs from PyPI.
_LOCAL_VERSION_LABEL = re.compile(r"^([^;]*?==\s*[^\s;+]+)\+[^\s;]+")


def select_groups(
    pyproject: Mapping[str, Any],
    groups: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDED_GROUPS,
) -> tuple[str, ...]:
    """The dependency groups the image gets: `groups` if given, else all defined ones not in `exclude`.

    select_groups({"dependency-groups": {"dev": [], "cuda": []}})  # ("cuda",)
    """
    defined = tuple(pyproject.get("dependency-groups", {}))
    if groups is None:
        return tuple(name for name in defined if name not in exclude)
    unknown = [name for name in groups if name not in defined]
    if unknown:
        raise ImageSpecError(
            f"dependency group(s) {', '.join(map(repr, unknown))} not defined in pyproject.toml "
            f"(defined: {', '.join(defined) or 'none'}). Choose among those, or add the group."
        )
    return tuple(dict.fromkeys(groups))


def export_requirements(project_root: Path, groups: Sequence[str]) -> tuple[str, ...]:
    """Run `uv export` offline against `uv.lock` and return the requirement lines for these groups.

    export_requirements(root, ("cuda",))  # ("cloudpickle==3.1.2", ...)
    """
    if not (project_root / "uv.lock").is_file():
        raise LockfileError.missing(project_root)
    # `--python`: this interpreter, which uv may otherwise fail to find on a short PATH (a cron job).
    args = ["export", "--locked", "--offline", "--python", sys.executable, "--format", "requirements.txt"]
    args += ["--no-hashes"]
    args += ["--no-emit-project", "--no-header", "--no-annotate", "--no-default-groups"]
    for group in groups:
        args += ["--group", group]
    try:
        output = run_uv(args, cwd=project_root, what="export the locked dependencies")
    except UvCommandError as error:
        # An offline resolution that needs the network also means the lock no longer covers pyproject.toml.
        if "needs to be updated" in str(error) or "network was disabled" in str(error):
            raise LockfileError(
                f"uv.lock in {project_root} is out of date with pyproject.toml. Run `uv lock`, then retry."
            ) from None
        raise
    return parse_requirements(output)


def requirement_name(line: str) -> str:
    """The normalised package name of a requirement line (PEP 503: lower case, runs of `-_.` as `-`).

    requirement_name("NVIDIA_cudnn_cu12==9.1 ; sys_platform == 'linux'")  # "nvidia-cudnn-cu12"
    """
    match = _REQUIREMENT_NAME.match(line)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else line.strip()


def parse_requirements(text: str) -> tuple[str, ...]:
    """Requirement lines from `uv export` output: comments and pip options dropped, markers kept,
    local version labels (`+cpu`) removed.

    parse_requirements("torch==2.5.1+cpu ; sys_platform == 'linux'\\n")
    # ("torch==2.5.1 ; sys_platform == 'linux'",)
    """
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        lines.append(_LOCAL_VERSION_LABEL.sub(r"\1", line))
    return tuple(lines)
