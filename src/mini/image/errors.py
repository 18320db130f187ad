"""Errors raised while deriving or materialising an image spec.

Each says what was wrong and what to do about it; catch `ImageSpecError` to handle them all::

    try:
        spec = derive_image_spec()
    except ImageSpecError as error:
        print(error)
"""

from __future__ import annotations

from pathlib import Path

from mini.errors import MiniError


class ImageSpecError(MiniError):
    """Base class: the project or the machine cannot yield an image spec."""


class ProjectNotFoundError(ImageSpecError):
    """No `pyproject.toml` in the working directory or any folder above it."""


class LockfileError(ImageSpecError):
    """`uv.lock` is missing or no longer matches `pyproject.toml`."""

    @classmethod
    def missing(cls, project_root: Path) -> LockfileError:
        """The error for a project without `uv.lock`."""
        return cls(f"no uv.lock in {project_root}: the image is built from locked pins. Run `uv lock`.")


class UvNotFoundError(ImageSpecError):
    """No `uv` executable: neither mini's own `uv` dependency nor PATH provides one."""

    def __init__(self) -> None:
        super().__init__(
            "uv not found: the `uv` package mini depends on has no binary in this environment, and none "
            "is on PATH; mini uses it to export pins and build environments. Install it into the "
            "environment that runs mini with `pip install uv` "
            "(or see https://docs.astral.sh/uv/getting-started/installation/), then retry."
        )


class UvCommandError(ImageSpecError):
    """A uv command failed; the message ends with the tail of its stderr."""


class SourcesError(ImageSpecError):
    """`src/` is missing or empty, or holds a package whose name cannot be imported."""
