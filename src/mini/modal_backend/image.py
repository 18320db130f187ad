"""Turning mini's backend-neutral `ImageSpec` into a `modal.Image`."""

from __future__ import annotations

from typing import Any

from mini.image import ImageSpec


def build_image(spec: ImageSpec, base: Any = None) -> Any:
    """The dependency image (or the user's own `base`), with the shipped sources mounted at start.

    Sources are added last and not copied into a layer, so a source edit never rebuilds the image.
    """
    import modal

    if base is None:
        base = modal.Image.debian_slim(python_version=spec.python_version)
        if spec.requirements:
            base = base.uv_pip_install(*spec.requirements)
        for command in spec.extra_commands:
            base = base.run_commands(command)
    image = base
    for package in spec.packages:
        if package.path.is_dir():
            image = image.add_local_dir(package.path, remote_path=f"/root/{package.name}", ignore=_ignored)
        else:
            image = image.add_local_file(package.path, remote_path=f"/root/{package.path.name}")
    return image


def _ignored(path: Any) -> bool:
    parts = getattr(path, "parts", ())
    return "__pycache__" in parts or str(path).endswith(".pyc")
