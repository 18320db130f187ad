"""A temporary project to launch runs from, and bounded waiting (never a bare sleep)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import pytest

from mini import Apparatus, LocalApparatus
from mini.image.uv_command import run_uv
from mini.runs import Run, RunError
from mini.runs.registry import list_runs
from tests.emulator.server import Emulator, run_emulator
from tests.runs import functions

# The functions detached calls run travel by value, as a project's own code does when the tests folder is
# not shipped: Modal containers hold only `src/`. For the whole session, because mini caches how a function
# pickles.
cloudpickle.register_pickle_by_value(functions)


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
DETACHED_BACKENDS = ["local", "modal"]


def make_detached(backend: str, name: str) -> Apparatus:
    if backend == "local":
        return LocalApparatus(name, workers=2)
    if backend == "modal":
        from mini import ModalApparatus

        return ModalApparatus(name, max_containers=2)
    raise ValueError(f"no detached test setup for backend {backend!r}")


@pytest.fixture(scope="package")
def modal_emulator() -> Iterator[Emulator]:
    """An emulator for this package alone, in place of the session's: detached runs leave functions behind
    under the names the behaviour suite's get (`square-…`), which tests that look a function up by name in
    the session emulator's records must not find."""
    with run_emulator() as emulator, emulator.client_environment():
        yield emulator


@pytest.fixture
def modal_project(project: Path, request: pytest.FixtureRequest) -> Path:
    """`project`, made shippable to Modal (through the emulator): a source package, and the one dependency
    mini needs in a container (cloudpickle) locked in uv.lock."""
    request.getfixturevalue("modal_emulator")
    with (project / "pyproject.toml").open("a") as pyproject:
        pyproject.write('requires-python = ">=3.10"\ndependencies = ["cloudpickle>=3.1"]\n')
    (project / "src" / "demo").mkdir(parents=True)
    (project / "src" / "demo" / "__init__.py").write_text("")
    run_uv(["lock", "--offline"], cwd=project, what="lock the test project")
    # Ignored in git, so that the project's git state (test_the_record_names_git_commit) is the test's own.
    (project / ".gitignore").write_text("/.gitignore\n/uv.lock\n/src/\n")
    return project


@pytest.fixture(params=DETACHED_BACKENDS)
def detached_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "modal":
        request.getfixturevalue("modal_project")
    return request.param


@pytest.fixture
def app(detached_backend: str, project: Path) -> Iterator[Apparatus]:
    with make_detached(detached_backend, "detached") as apparatus:
        yield apparatus
