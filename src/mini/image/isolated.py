"""Preparing the isolated local mode: the spec's environment plus a folder holding only shipped sources.

python, sources = prepare_isolated()
subprocess.run([python, "-m", "mini.local._worker"], env={**os.environ, "PYTHONPATH": str(sources)})
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mini.image.cache import exclusive_lock, state_dir
from mini.image.materialise import materialise_environment, materialise_sources
from mini.image.spec import derive_image_spec

# Older source snapshots may still serve workers started before an edit; keep a few, drop the rest.
_KEPT_SOURCE_SNAPSHOTS = 8


def prepare_isolated(project_root: Path | None = None) -> tuple[Path, Path]:
    """Return (interpreter of the spec's environment, folder holding only the shipped sources).

    Both are cached: the environment by its pins, the folder by the source hash.

        python, sources = prepare_isolated()
    """
    spec = derive_image_spec(project_root)
    environment = materialise_environment(spec.python_version, spec.requirements)
    snapshots = state_dir(spec.project_root) / "sources"
    snapshots.mkdir(exist_ok=True)
    sources = snapshots / spec.source_hash
    if not sources.is_dir():
        with exclusive_lock(snapshots / f".{spec.source_hash}.lock"):
            if not sources.is_dir():
                materialise_sources([package.path for package in spec.packages], sources)
                _prune(snapshots, keep=sources)
    return environment.python, sources


def _prune(snapshots: Path, keep: Path) -> None:
    others = sorted(
        (
            folder
            for folder in snapshots.iterdir()
            if folder.is_dir() and folder != keep and not folder.name.startswith(".")
        ),
        key=lambda folder: folder.stat().st_mtime,
        reverse=True,
    )
    for stale in others[_KEPT_SOURCE_SNAPSHOTS - 1 :]:
        shutil.rmtree(stale, ignore_errors=True)
