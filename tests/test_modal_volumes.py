"""What only Modal's volumes have: the Modal Volume behind a mini volume, where mini mounts it, and the
reload before and commit after each call that make a call's files visible elsewhere (proven necessary here
with an emulator that does not commit in the background). The portable behaviour is in
tests/behaviour/test_volumes.py.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import uuid
from collections.abc import Iterator

import modal
import pytest

from mini import LocalApparatus, MiniError, ModalApparatus
from mini.modal_backend import entry
from mini.modal_backend.volumes import modal_volume_name
from mini.project import find_project_root, state_path
from tests.behaviour import calls
from tests.emulator import run_emulator


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _function(recorder, base: str):
    """The latest function the emulator saw whose name starts with `base-`."""
    return [f for f in recorder.functions.values() if f.name.startswith(f"{base}-")][-1]


@pytest.fixture
def explicit_commits_only() -> Iterator[None]:
    """An emulator of its own without background commits: only commit() and a container's exit commit."""
    with run_emulator(background_commit_secs=None) as emulator, emulator.client_environment():
        yield


def test_without_minis_commit_neither_the_caller_nor_another_container_sees_a_calls_file(
    explicit_commits_only,
):
    name = _unique("commit")
    with ModalApparatus("commit-proof", max_containers=1) as mini_app, ModalApparatus("raw-mount") as raw_app:
        volume = mini_app.volume(name)
        # The control: the same mini code and path, but the Modal Volume mounted raw (`volumes=`), so mini
        # neither reloads nor commits it around the call. Its container stays up after the call.
        raw_volume = modal.Volume.from_name(modal_volume_name("mini", name), create_if_missing=True)
        raw = raw_app.w(volumes={f"/root/.mini/volumes/{name}": raw_volume})
        raw.run(calls.write_in_volume, volume, "unseen.bin", b"uncommitted")
        with pytest.raises(FileNotFoundError, match="unseen.bin"):
            volume.read_bytes("unseen.bin")
        assert mini_app.run(calls.read_in_volume, volume, "unseen.bin") is None  # another container

        # mini's entry commits as the call returns (and when it fails): seen at once, by the caller and by
        # another container, with no background commit and the writing containers still up.
        mini_app.run(calls.write_in_volume, volume, "seen.bin", b"committed")
        with pytest.raises(RuntimeError, match="partial"):
            mini_app.run(calls.write_then_fail, volume, "partial.bin")
        assert volume.read_bytes("seen.bin") == b"committed"
        assert volume.read_bytes("partial.bin") == b"partial"
        # read_in_volume's container mounted the volume before those commits: it reloads to see them.
        assert mini_app.run(calls.read_in_volume, volume, "seen.bin") == b"committed"
        assert mini_app.run(calls.read_in_volume, volume, "partial.bin") == b"partial"
        assert "unseen.bin" not in volume.listdir("")


def test_a_warm_container_reloads_before_each_call_to_see_what_was_committed_since(modal_emulator, tmp_path):
    with ModalApparatus("reload-proof", max_containers=2) as app:
        volume = app.volume(_unique("reload"))
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        before = list(
            app.map(calls.read_beside, [volume] * 2, ["news.txt"] * 2, [str(first)] * 2, [0, 1], [1, 1])
        )
        (tmp_path / "news.txt").write_bytes(b"uploaded after the containers mounted the volume")
        volume.upload(tmp_path / "news.txt", "news.txt")
        after = list(
            app.map(calls.read_beside, [volume] * 2, ["news.txt"] * 2, [str(second)] * 2, [0, 1], [1, 1])
        )

    assert [read for _, read in before] == [None, None]
    # The same two containers, each of which mounted the volume before the upload, both see the file.
    assert {task for task, _ in after} == {task for task, _ in before} and len(
        set(task for task, _ in after)
    ) == 2
    assert [read for _, read in after] == [b"uploaded after the containers mounted the volume"] * 2


def test_a_volume_is_a_modal_volume_named_after_the_project_mounted_at_root_mini_volumes(modal_emulator):
    name = _unique("where")
    with ModalApparatus("where-mounted") as app:
        volume = app.volume(name)
        folder = app.run(calls.write_in_volume, volume, "f.bin", b"f")

    assert folder.endswith(f"/fs/root/.mini/volumes/{name}")  # the container's /root (see tests/README.md)
    function = _function(modal_emulator.recorder, "write-in-volume")
    assert function.volumes == {f"/root/.mini/volumes/{name}": f"mini.{name}"}  # [project] name is "mini"
    assert b"".join(modal.Volume.from_name(f"mini.{name}").read_file("f.bin")) == b"f"


def test_a_volume_made_after_a_functions_app_started_reaches_its_next_calls(modal_emulator, tmp_path):
    with ModalApparatus("late-volume") as app:
        early = app.volume(_unique("early"))
        assert app.run(calls.read_in_volume, early, "x.bin") is None  # starts read_in_volume's app
        late = app.volume(_unique("late"))
        (tmp_path / "x.bin").write_bytes(b"late")
        late.upload(tmp_path / "x.bin", "x.bin")
        assert app.run(calls.read_in_volume, late, "x.bin") == b"late"
        assert app.run(calls.read_in_volume, early, "x.bin") is None

    readers = [f for f in modal_emulator.recorder.functions.values() if f.name.startswith("read-in-volume-")]
    assert [len(f.volumes) for f in readers[-2:]] == [1, 2]  # a new function, with both mounted


def test_a_detached_call_writes_to_the_volume(modal_emulator):
    with ModalApparatus("detached-volume") as app:
        volume = app.volume(_unique("detached"))
        job = app.spawn(calls.write_in_volume, volume, "from/spawn.bin", b"detached")
        job.result(timeout=120)
        assert volume.read_bytes("from/spawn.bin") == b"detached"


def test_outside_a_call_a_modal_volume_has_no_path(modal_emulator):
    with ModalApparatus("no-path") as app:
        volume = app.volume(_unique("nopath"))
        with pytest.raises(MiniError, match="read_bytes"):
            _ = volume.path


def test_a_volume_of_another_apparatus_or_backend_is_not_mounted_in_the_call(modal_emulator):
    local = LocalApparatus("volume-elsewhere").volume(_unique("local"))
    try:
        with ModalApparatus("makes-it") as maker, ModalApparatus("runs-it") as runner:
            foreign = maker.volume(_unique("foreign"))
            with pytest.raises(MiniError, match="not mounted in this call.*app.volume"):
                runner.run(calls.read_in_volume, foreign, "x")
            with pytest.raises(MiniError, match="belongs to the local backend"):
                runner.run(calls.read_in_volume, local, "x")
    finally:
        shutil.rmtree(
            state_path(find_project_root(), "volumes", local.name, create=False), ignore_errors=True
        )


@pytest.mark.parametrize(
    ("project", "name", "expected"),
    [
        ("mini", "checkpoints", "mini.checkpoints"),
        ("My_Project.v2", "runs", "my-project-v2.runs"),  # normalised: the first dot ends the project
    ],
)
def test_modal_volume_names_keep_project_and_name_apart(project, name, expected):
    assert modal_volume_name(project, name) == expected


def test_long_modal_volume_names_are_shortened_within_modals_limit_and_stay_distinct():
    names = {
        modal_volume_name("p" * 60, "checkpoints"),
        modal_volume_name("p" * 61, "checkpoints"),
        modal_volume_name("project", "n" * 63),
        modal_volume_name("project", "n" * 62 + "m"),
    }
    assert len(names) == 4
    assert all(len(name) < 64 and modal.Volume.from_name(name) is not None for name in names)
    assert modal_volume_name("p" * 60, "checkpoints").endswith(".checkpoints")


class _FakeVolume:
    """A mounted `modal.Volume` as the entry sees it: records reloads and commits."""

    def __init__(self, log: list[str], name: str = "v", fail_reload: str = "") -> None:
        self.log, self.name, self.fail_reload = log, name, fail_reload

    def reload(self) -> None:
        if self.fail_reload:
            raise RuntimeError(self.fail_reload)
        self.log.append(f"reload {self.name}")

    def commit(self) -> None:
        self.log.append(f"commit {self.name}")


def test_the_entry_reloads_before_and_commits_after_each_call_even_a_failed_one():
    log: list[str] = []
    volumes = [_FakeVolume(log, "a"), _FakeVolume(log, "b")]
    with entry.synced(volumes):
        log.append("call")
    with contextlib.suppress(ValueError), entry.synced(volumes):
        log.append("failing call")
        raise ValueError
    assert log == ["reload a", "reload b", "call", "commit a", "commit b"] + [
        "reload a",
        "reload b",
        "failing call",
        "commit a",
        "commit b",
    ]


def test_under_input_concurrency_only_a_call_that_starts_alone_reloads():
    log: list[str] = []
    volumes = [_FakeVolume(log)]
    first_in, second_done = threading.Event(), threading.Event()

    def second() -> None:
        first_in.wait()
        with entry.synced(volumes):
            log.append("second")
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    with entry.synced(volumes):
        log.append("first")
        first_in.set()
        second_done.wait()
    thread.join()
    with entry.synced(volumes):
        log.append("third")
    assert log == ["reload v", "first", "second", "commit v", "commit v", "reload v", "third", "commit v"]


def test_a_failed_reload_is_the_calls_error_and_says_why():
    log: list[str] = []
    stuck = _FakeVolume(log, "held", fail_reload="there are open files preventing the operation")
    with pytest.raises(MiniError, match="could not reload held.*close the files"), entry.synced([stuck]):
        log.append("never runs")
    assert log == ["commit held"]
