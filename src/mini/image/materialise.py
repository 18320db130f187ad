"""Turning an image spec into things on this machine: a cached virtual environment and a sources folder.

env = materialise_environment("3.11", ["six==1.16.0"])
sources = materialise_sources([Path("src/mini")], Path("/tmp/shipped"))
subprocess.run([env.python, "-c", "import mini"], env={"PYTHONPATH": str(sources)})

python, sources = prepare_isolated()    # both at once, for the project's spec (isolated local mode)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mini.image.requirements import requirement_name
from mini.image.sources import shipped_files
from mini.image.spec import derive_image_spec
from mini.image.uv_command import run_uv
from mini.project import exclusive_lock, state_path

# Wheels that only make sense next to an NVIDIA driver: CUDA runtime libraries and CUDA backends of
# array libraries. Installing them on a CPU-only machine costs gigabytes and gains nothing.
_GPU_ONLY_NAME = re.compile(r"^(nvidia-.+|jax-cuda.+|cupy-cuda.+|.+-cu1[0-9])$")
# Older source snapshots may still serve workers started before an edit; keep a few, drop the rest.
_KEPT_SOURCE_SNAPSHOTS = 8


@dataclass(frozen=True)
class Environment:
    """A built virtual environment.

    env = materialise_environment("3.11", ["six==1.16.0"])
    subprocess.run([env.python, "-c", "import six"], check=True)
    """

    root: Path
    python: Path
    dropped: tuple[str, ...]


def materialise_environment(
    python_version: str,
    requirements: Sequence[str],
    *,
    gpu: bool | None = None,
    cache_dir: Path | None = None,
) -> Environment:
    """Build (or reuse) a virtual environment with `requirements` installed, cached by their hash.

    `requirements` are pip requirement lines, markers allowed. Without a GPU (`gpu=None` detects one)
    GPU-only wheels are left out and listed in `Environment.dropped`. Safe to call from several processes
    at once: one builds, the others wait and reuse it.

        env = materialise_environment("3.11", ["numpy==2.1.0 ; python_full_version >= '3.11'"])
    """
    has_gpu = gpu_available() if gpu is None else gpu
    kept, dropped = (list(requirements), []) if has_gpu else split_gpu_only(requirements)
    cache = cache_dir if cache_dir is not None else default_environment_cache()
    root = cache / environment_key(python_version, kept)
    environment = Environment(root=root, python=root / "bin" / "python", dropped=tuple(dropped))
    if _is_built(root):
        return environment
    cache.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache / f"{root.name}.lock"):
        if not _is_built(root):
            _build(python_version, kept, root)
    return environment


def materialise_sources(package_dirs: Sequence[Path], dest: Path) -> Path:
    """Make `dest` hold copies of exactly these packages (folders) or modules (`.py` files); return it.

    Anything already in `dest` is replaced, so a module dropped from the project cannot linger there.

        folder = materialise_sources([root / "src" / "mini"], state_dir(root) / "sources")
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for package in package_dirs:
            for relative in shipped_files(package):
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(package.parent / relative, staging / relative)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def prepare_isolated(project_root: Path | None = None) -> tuple[Path, Path]:
    """Return (interpreter of the spec's environment, folder holding only the shipped sources).

    Both are cached: the environment by its pins, the folder by the source hash.

        python, sources = prepare_isolated()
    """
    spec = derive_image_spec(project_root)
    environment = materialise_environment(spec.python_version, spec.requirements)
    snapshots = state_path(spec.project_root, "sources")
    sources = snapshots / spec.source_hash
    if not sources.is_dir():
        with exclusive_lock(snapshots / f".{spec.source_hash}.lock"):
            if not sources.is_dir():
                materialise_sources([package.path for package in spec.packages], sources)
                _prune(snapshots, keep=sources)
    return environment.python, sources


def split_gpu_only(requirements: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split requirement lines into (kept, GPU-only) by package name.

    kept, dropped = split_gpu_only(["jax==0.6.2", "jax-cuda12-plugin==0.6.2"])
    # kept == ["jax==0.6.2"], dropped == ["jax-cuda12-plugin==0.6.2"]
    """
    kept: list[str] = []
    dropped: list[str] = []
    for line in requirements:
        (dropped if _GPU_ONLY_NAME.match(requirement_name(line)) else kept).append(line)
    return kept, dropped


def gpu_available() -> bool:
    """Whether an NVIDIA GPU is usable here: `nvidia-smi` is on PATH and runs successfully."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return False
    try:
        completed = subprocess.run([nvidia_smi, "-L"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def environment_key(python_version: str, requirements: Sequence[str]) -> str:
    """The cache key of an environment: a digest of the Python version and the sorted requirement lines."""
    payload = json.dumps([python_version, sorted(line.strip() for line in requirements)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_environment_cache() -> Path:
    """Where environments live unless told otherwise: `$XDG_CACHE_HOME/mini/envs` or `~/.cache/mini/envs`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mini" / "envs"


def _is_built(root: Path) -> bool:
    # The rename into `root` is the last step of a build, so its presence means the build finished.
    return (root / "pyvenv.cfg").is_file()


def _build(python_version: str, requirements: Sequence[str], root: Path) -> None:
    # Build beside the final folder, then rename: readers never see a half-installed environment.
    # `--relocatable` keeps the environment valid after that rename.
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        run_uv(
            [
                "venv",
                "--quiet",
                "--relocatable",
                "--python",
                _interpreter(python_version),
                str(staging / "venv"),
            ],
            what=f"create a Python {python_version} virtual environment",
        )
        if requirements:
            requirements_file = staging / "requirements.txt"
            requirements_file.write_text("\n".join(requirements) + "\n")
            run_uv(
                [
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    str(staging / "venv" / "bin" / "python"),
                    "-r",
                    str(requirements_file),
                ],
                what="install the image's requirements",
            )
        (staging / "venv").rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _interpreter(python_version: str) -> str:
    # This interpreter when it is the version asked for: the one the user runs, found even when PATH holds
    # no Python of that version (a cron job, an IDE); otherwise uv finds one by its version.
    if sys.executable and python_version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    return python_version


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
