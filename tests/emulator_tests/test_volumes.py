"""Volumes: the client's file operations, and containers mounting, committing and reloading them."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import modal
import pytest
from modal.exception import NotFoundError

from tests.emulator import run_emulator

image = modal.Image.debian_slim()


def _wait_until(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def _paths(volume: modal.Volume, path: str = "/", **options) -> set[str]:
    return {entry.path for entry in volume.listdir(path, **options)}


# Functions are built inside helpers so that modal pickles them by value (see test_platform.py). They
# reach the volume mounted at /root/data as `data`: the working directory is the container's /root, the
# only place of a container's filesystem the emulator provides (on Modal too the working directory is /root).


def _writer(app: modal.App, volume: modal.Volume, name: str, *, commit: bool, **options) -> modal.Function:
    def write(path: str, text: str, signal: str = "", release: str = "") -> str:
        import pathlib
        import time

        target = pathlib.Path("data") / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if signal:
            pathlib.Path(signal).touch()
        while release and not pathlib.Path(release).exists():
            time.sleep(0.05)
        if commit:
            volume.commit()
        return "written"

    return app.function(image=image, serialized=True, name=name, volumes={"/root/data": volume}, **options)(
        write
    )


def _reader(app: modal.App, volume: modal.Volume, name: str) -> modal.Function:
    def read(path: str, reload: bool = False) -> str | None:
        import pathlib

        if reload:
            volume.reload()
        target = pathlib.Path("data") / path
        return target.read_text() if target.exists() else None

    return app.function(image=image, serialized=True, name=name, volumes={"/root/data": volume})(read)


def test_client_uploads_lists_reads_copies_and_removes(modal_emulator, tmp_path):
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "top.txt").write_text("top")
    (tmp_path / "tree" / "sub" / "deep.txt").write_text("deep")
    (tmp_path / "one.txt").write_text("one")
    with modal.Volume.ephemeral() as volume:
        with volume.batch_upload() as batch:
            batch.put_file(tmp_path / "one.txt", "/one.txt")
            batch.put_file(io.BytesIO(b"from memory"), "/mem/bytes.bin")
            batch.put_directory(tmp_path / "tree", "/tree")
        assert _paths(volume) == {"one.txt", "mem", "tree"}
        assert _paths(volume, "/tree", recursive=True) == {"tree/top.txt", "tree/sub", "tree/sub/deep.txt"}
        assert {entry.path for entry in volume.iterdir("/tree", recursive=False)} == {
            "tree/top.txt",
            "tree/sub",
        }
        kinds = {entry.path: entry.type for entry in volume.listdir("/tree")}
        assert kinds == {
            "tree/top.txt": modal.volume.FileEntryType.FILE,
            "tree/sub": modal.volume.FileEntryType.DIRECTORY,
        }
        assert [entry.size for entry in volume.listdir("/one.txt")] == [3]
        assert b"".join(volume.read_file("/mem/bytes.bin")) == b"from memory"
        sink = io.BytesIO()
        assert volume.read_file_into_fileobj("tree/sub/deep.txt", sink) == 4 and sink.getvalue() == b"deep"

        with pytest.raises(FileExistsError), volume.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"again"), "/one.txt")
        with volume.batch_upload(force=True) as batch:
            batch.put_file(io.BytesIO(b"replaced"), "/one.txt")
        assert b"".join(volume.read_file("one.txt")) == b"replaced"

        volume.copy_files(["/one.txt", "/tree/top.txt"], "/copies/")
        volume.copy_files(["/one.txt"], "/renamed.txt")
        assert _paths(volume, "/copies") == {"copies/one.txt", "copies/top.txt"}
        assert b"".join(volume.read_file("renamed.txt")) == b"replaced"

        volume.remove_file("/renamed.txt")
        with pytest.raises(modal.exception.InvalidError):
            volume.remove_file("/tree")  # a non-empty folder needs recursive=True
        volume.remove_file("/tree", recursive=True)
        assert _paths(volume) == {"one.txt", "mem", "copies"}
        with pytest.raises(FileNotFoundError):
            b"".join(volume.read_file("/tree/top.txt"))
        with pytest.raises(FileNotFoundError):
            volume.remove_file("/tree")
        with pytest.raises(NotFoundError):
            volume.listdir("/tree")


def test_named_volumes_are_found_listed_and_deleted(modal_emulator):
    with pytest.raises(NotFoundError):
        modal.Volume.from_name("emulator-never-made").hydrate()
    volume = modal.Volume.from_name("emulator-named-volume", create_if_missing=True)
    with volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"kept"), "/kept.txt")
    again = modal.Volume.from_name("emulator-named-volume")
    assert b"".join(again.read_file("/kept.txt")) == b"kept"
    assert again.object_id == volume.object_id
    assert "emulator-named-volume" in [listed.name for listed in modal.Volume.objects.list()]
    modal.Volume.objects.delete("emulator-named-volume")
    with pytest.raises(NotFoundError):
        modal.Volume.from_name("emulator-named-volume").hydrate()
    assert modal.Volume.from_name("emulator-named-volume", create_if_missing=True).listdir("/") == []


def test_a_container_write_reaches_the_client_after_it_commits(modal_emulator):
    app = modal.App("emulator-volume-commit")
    with modal.Volume.ephemeral() as volume:
        write = _writer(app, volume, "commit_writer", commit=True)
        with app.run():
            assert write.remote("nested/out.txt", "from the container") == "written"
        assert b"".join(volume.read_file("/nested/out.txt")) == b"from the container"
    record = modal_emulator.recorder.function("commit_writer")
    assert record.volumes == {"/root/data": volume.object_id}


def test_a_client_upload_is_what_a_new_container_sees(modal_emulator):
    app = modal.App("emulator-volume-upload")
    with modal.Volume.ephemeral() as volume:
        with volume.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"uploaded"), "/in/data.txt")
        read = _reader(app, volume, "upload_reader")
        with app.run():
            assert read.remote("in/data.txt") == "uploaded"


def test_a_deletion_in_a_container_propagates_on_commit(modal_emulator):
    app = modal.App("emulator-volume-delete")

    def delete(path: str) -> None:
        import pathlib

        pathlib.Path("data", path).unlink()
        volume.commit()

    with modal.Volume.ephemeral() as volume:
        with volume.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"doomed"), "/doomed.txt")
            batch.put_file(io.BytesIO(b"kept"), "/kept.txt")
        remover = app.function(image=image, serialized=True, volumes={"/root/data": volume}, name="remover")(
            delete
        )
        with app.run():
            remover.remote("doomed.txt")
        assert _paths(volume) == {"kept.txt"}


def test_commits_keep_other_containers_files_and_the_last_writer_wins(modal_emulator):
    app = modal.App("emulator-volume-last-writer")
    with modal.Volume.ephemeral() as volume:
        first = _writer(app, volume, "first_writer", commit=True)
        second = _writer(app, volume, "second_writer", commit=True)
        with app.run():
            first.remote("first.txt", "1")
            second.remote("second.txt", "2")
            first.remote("shared.txt", "from first")
            second.remote("shared.txt", "from second")
        assert _paths(volume) == {"first.txt", "second.txt", "shared.txt"}
        assert b"".join(volume.read_file("shared.txt")) == b"from second"


def test_reading_from_the_client_is_refused_a_commit(modal_emulator):
    with modal.Volume.ephemeral() as volume, pytest.raises(RuntimeError, match="inside a container"):
        volume.commit()


def test_reloading_with_a_file_of_the_volume_open_fails(modal_emulator):
    app = modal.App("emulator-volume-open-file")

    def reload_while_open() -> str:
        with open("data/held.txt", "w"):
            try:
                volume.reload()
            except RuntimeError as error:
                return str(error)
        return "reloaded"

    with modal.Volume.ephemeral() as volume:
        reloader = app.function(
            image=image, serialized=True, volumes={"/root/data": volume}, name="reloader"
        )(reload_while_open)
        with app.run():
            assert "open files" in reloader.remote()


@pytest.fixture
def explicit_commits_only() -> Iterator[None]:
    """An emulator without background commits, so that only commit() and a container's exit commit."""
    with run_emulator(background_commit_secs=None) as emulator, emulator.client_environment():
        yield


@pytest.fixture
def quick_background_commits() -> Iterator[None]:
    with run_emulator(background_commit_secs=0.5) as emulator, emulator.client_environment():
        yield


def test_a_running_container_commits_in_the_background(quick_background_commits, tmp_path):
    app = modal.App("emulator-volume-background")
    release = tmp_path / "release"
    with modal.Volume.ephemeral() as volume:
        write = _writer(app, volume, "background_writer", commit=False)
        with app.run():
            call = write.spawn("background.txt", "soon", release=str(release))
            # Never committed by the function, which is still running: only a background commit shows it.
            _wait_until(lambda: "background.txt" in _paths(volume), "a background commit showed the file")
            release.touch()
            call.get(timeout=30)


def test_other_containers_see_a_write_only_after_commit_and_reload(explicit_commits_only, tmp_path):
    app = modal.App("emulator-volume-visibility")
    written, release = tmp_path / "written", tmp_path / "release"
    with modal.Volume.ephemeral() as volume:
        write = _writer(app, volume, "visibility_writer", commit=True)
        read = _reader(app, volume, "visibility_reader")
        with app.run():
            call = write.spawn("note.txt", "hello", signal=str(written), release=str(release))
            _wait_until(written.exists, "the writer wrote its file")
            assert read.remote("note.txt") is None  # written but not committed
            assert "note.txt" not in _paths(volume)
            release.touch()
            assert call.get(timeout=30) == "written"  # committed now
            assert read.remote("note.txt") is None  # the reader's container has not reloaded
            assert read.remote("note.txt", reload=True) == "hello"
        assert b"".join(volume.read_file("note.txt")) == b"hello"


def test_a_container_commits_when_it_exits(explicit_commits_only):
    app = modal.App("emulator-volume-exit-commit")
    with modal.Volume.ephemeral() as volume:
        write = _writer(app, volume, "exit_writer", commit=False, scaledown_window=2)
        with app.run():
            write.remote("at_exit.txt", "flushed")
            assert "at_exit.txt" not in _paths(volume)
            # Idle for its scaledown window, the container is told to stop and commits on its way out.
            _wait_until(lambda: "at_exit.txt" in _paths(volume), "the exiting container committed")
        assert b"".join(volume.read_file("at_exit.txt")) == b"flushed"


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _peak_memory_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc")
def test_a_large_file_streams_through_files_not_memory(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    size = 128 << 20
    big = tmp_path / "big.bin"
    with big.open("wb") as sink:
        for _ in range(size >> 20):
            sink.write(os.urandom(1 << 20))
    emulator = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        variables = {}
        while len(variables) < 4:
            name, _, value = emulator.stdout.readline().removeprefix("export ").strip().partition("=")
            variables[name] = value.strip("'")
        before = _peak_memory_kib(emulator.pid)
        from mini.local._environ import applied
        from tests.emulator.server import _drop_cached_client

        with applied(variables):
            _drop_cached_client()
            with modal.Volume.ephemeral() as volume:
                with volume.batch_upload() as batch:
                    batch.put_file(big, "/big.bin")
                with (tmp_path / "copy.bin").open("wb") as sink:
                    assert volume.read_file_into_fileobj("/big.bin", sink) == size
            _drop_cached_client()
        grown_mib = (_peak_memory_kib(emulator.pid) - before) / 1024
        assert grown_mib < size / (1 << 20) / 3, f"the emulator's peak memory grew by {grown_mib:.0f} MiB"
        assert _sha256(tmp_path / "copy.bin") == _sha256(big)
    finally:
        emulator.send_signal(signal.SIGINT)  # it stops the way it documents, removing its files
        emulator.communicate(timeout=30)


def test_the_modal_client_inside_a_container_reaches_the_emulator_as_that_container(modal_emulator):
    app = modal.App("emulator-volume-in-container-client")

    def upload_from_the_container(name: str) -> list[str]:
        import io

        import modal

        volume = modal.Volume.from_name(name, create_if_missing=True)
        with volume.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"from inside"), "/inside.txt")
        return [entry.path for entry in volume.listdir("/")]

    uploader = app.function(image=image, serialized=True, name="in_container_client")(
        upload_from_the_container
    )
    with modal_emulator.recorder.counting() as client_rpcs, app.run():
        assert uploader.remote("emulator-from-container") == ["inside.txt"]
    volume = modal.Volume.from_name("emulator-from-container")
    assert b"".join(volume.read_file("inside.txt")) == b"from inside"
    assert modal_emulator.recorder.container_rpc_counts["VolumePutFiles"] >= 1
    assert client_rpcs["VolumePutFiles"] == 0  # counted as the container's, not as a client's


def test_a_container_type_client_without_a_token_is_refused_outside_a_container(modal_emulator):
    from modal_proto import api_pb2

    with (
        modal.Client(modal_emulator.url, api_pb2.CLIENT_TYPE_CONTAINER, None) as client,
        pytest.raises(modal.exception.AuthError),
        modal.Volume.ephemeral(client=client),
    ):
        pass
