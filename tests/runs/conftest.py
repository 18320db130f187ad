"""A temporary project to launch runs from, and bounded waiting (never a bare sleep)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mini import Apparatus, LocalApparatus
from mini.runs import Run, RunError
from mini.runs.registry import list_runs


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder (a pyproject.toml) as the working directory, with its own launch journal."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    monkeypatch.chdir(root)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield root
    # A test that failed half-way must not leave calls blocked forever on a file that never appears.
    for folder in list_runs(root):
        with contextlib.suppress(OSError, RunError):  # some tests write records of runs never launched
            Run(folder).cancel()


def wait_until(condition: Callable[[], object], timeout: float = 60, what: str = "the condition") -> object:
    """Poll `condition` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.2)


def process_gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X") or not os.path.exists(f"/proc/{pid}")


# Backends whose detached runs the behaviour suite (test_behaviour.py) checks; a backend joins by adding
# its name here and a branch in `make_detached`.
DETACHED_BACKENDS = ["local"]


def make_detached(backend: str, name: str) -> Apparatus:
    if backend == "local":
        return LocalApparatus(name, workers=2)
    raise ValueError(f"no detached test setup for backend {backend!r}")


@pytest.fixture(params=DETACHED_BACKENDS)
def detached_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def app(detached_backend: str, project: Path) -> Iterator[Apparatus]:
    with make_detached(detached_backend, "detached") as apparatus:
        yield apparatus
