"""Volumes apart from any one backend's calls: names and paths, the local folder, what a backend without
volumes says, and the local backends refusing Modal's own `volumes=`. Every backend's behaviour is in
tests/behaviour/test_volumes.py."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from mini import Apparatus, LocalApparatus, MiniError, OptionError, Volume
from mini.backend import Backend
from mini.errors import NotSupportedError
from mini.project import find_project_root, state_path
from mini.volumes import check_name, inside
from tests.behaviour import calls


@pytest.fixture
def local_volume() -> Iterator[tuple[LocalApparatus, Volume]]:
    name = f"unit-{uuid.uuid4().hex[:10]}"
    with LocalApparatus("volume-units", mode="process") as app:
        try:
            yield app, app.volume(name)
        finally:
            shutil.rmtree(state_path(find_project_root(), "volumes", name, create=False), ignore_errors=True)


@pytest.mark.parametrize("name", ["checkpoints", "a", "sweep-2024.06", "A_b-c.d", "x" * 63, ".hidden", "..a"])
def test_valid_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "...", "a/b", "a b", "x" * 64, "é", "tab\t", 3, None, b"bytes"]
)
def test_invalid_names_are_option_errors(name):
    with pytest.raises(OptionError, match="invalid volume name"):
        check_name(name)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", ""),
        (".", ""),
        ("a", "a"),
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("a/./b", "a/b"),
        ("..a/b..", "..a/b.."),
    ],
)
def test_paths_inside_a_volume_are_normalised(given, expected):
    assert inside(given) == expected


@pytest.mark.parametrize("path", ["/", "/a", "..", "../a", "a/..", "a/../../b", "a/../b"])
def test_paths_that_are_absolute_or_climb_are_value_errors(path):
    with pytest.raises(ValueError, match="volume"):
        inside(path)


def test_a_local_volume_is_a_folder_of_the_project_made_at_once(local_volume):
    app, volume = local_volume
    folder = find_project_root() / ".mini" / "volumes" / volume.name
    assert volume.path == folder and folder.is_dir()
    assert volume.listdir("") == []
    assert app.w(timeout=60).volume(volume.name).path == folder  # variants share it


def test_an_isolated_worker_sees_the_volume_at_its_path_though_its_working_directory_is_empty(tmp_path):
    name = f"unit-{uuid.uuid4().hex[:10]}"
    try:
        with LocalApparatus("volume-isolated", mode="isolated") as app:
            volume = app.volume(name)
            folder = app.run(calls.write_in_volume, volume, "f.bin", b"isolated")
            assert folder == str(volume.path) and volume.read_bytes("f.bin") == b"isolated"
    finally:
        shutil.rmtree(state_path(find_project_root(), "volumes", name, create=False), ignore_errors=True)


def test_a_detached_local_call_writes_to_the_volume(local_volume):
    app, volume = local_volume
    job = app.spawn(calls.write_in_volume, volume, "from/spawn.bin", b"detached")
    job.result(timeout=120)
    assert volume.read_bytes("from/spawn.bin") == b"detached"


@pytest.mark.parametrize("mode", ["thread", "process", "isolated"])
def test_the_local_backends_refuse_modal_volumes_and_name_app_volume(mode):
    app = LocalApparatus("refuses", mode=mode)
    with pytest.raises(OptionError, match=r"app\.volume\(NAME\)"):
        app.w(volumes={"/data": "my-volume"})
    with pytest.raises(OptionError, match=r"app\.volume\(NAME\)"):
        LocalApparatus("refuses", mode=mode, volumes={"/data": "my-volume"})


def test_a_backend_without_volumes_says_so():
    class Inline(Backend):
        kind = "inline"

        async def open_dispatch(self, fn, fn_blob, options, *, ordered):
            raise AssertionError("not called")

        def close(self) -> None:
            pass

    app = Apparatus("no-volumes", Inline())
    with pytest.raises(NotSupportedError, match="has no volumes"):
        app.volume("checkpoints")
    with pytest.raises(OptionError):  # the name is checked first, whatever the backend
        app.volume("../x")


def test_a_local_volume_in_a_call_of_a_backend_that_mounts_volumes_elsewhere_has_no_path(local_volume):
    from mini.runtime import CallContext, calling

    _, volume = local_volume
    with (
        calling(CallContext(0, "modal", volumes=volume.path.parent)),
        pytest.raises(MiniError, match="local"),
    ):
        _ = volume.path
