"""Volumes (`app.volume(name)`): files written in a call outlive it, and the same code writes and reads
them on every backend: from the caller, from later calls, from a new apparatus and from a new process."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mini import OptionError, Volume
from mini.project import find_project_root, state_path
from tests.behaviour import calls

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def volume(app) -> Iterator[Volume]:
    """A volume of its own for each test; a local one's folder is removed afterwards."""
    name = f"suite-{uuid.uuid4().hex[:12]}"
    made = app.volume(name)
    try:
        yield made
    finally:
        shutil.rmtree(state_path(find_project_root(), "volumes", name, create=False), ignore_errors=True)


def test_a_call_writes_and_the_caller_reads_lists_and_downloads(app, volume, tmp_path):
    app.run(calls.write_in_volume, volume, "a/params.bin", b"weights")
    app.run(calls.write_in_volume, volume, "a/curve.json", b"[1, 0.5]")

    assert volume.listdir("") == ["a"]
    assert volume.listdir("a") == ["curve.json", "params.bin"]
    assert volume.read_bytes("a/params.bin") == b"weights"
    assert volume.download("a/params.bin", tmp_path / "one" / "params.bin").read_bytes() == b"weights"
    folder = volume.download("a", tmp_path / "all")
    assert sorted(path.name for path in folder.iterdir()) == ["curve.json", "params.bin"]
    assert (folder / "curve.json").read_bytes() == b"[1, 0.5]"


def test_later_calls_of_the_apparatus_and_its_variants_read_what_earlier_calls_wrote(app, volume):
    names = [f"run-{i}/out.bin" for i in range(3)]
    list(app.map(calls.write_in_volume, [volume] * 3, names, [f"out {i}".encode() for i in range(3)]))

    assert list(app.map(calls.read_in_volume, [volume] * 3, names)) == [b"out 0", b"out 1", b"out 2"]
    assert app.w(timeout=120).run(calls.read_in_volume, volume, names[1]) == b"out 1"
    assert app.run(calls.use_volume_api, volume, "listdir", "") == ["run-0", "run-1", "run-2"]
    assert app.run(calls.use_volume_api, volume, "read_bytes", names[2]) == b"out 2"


def test_calls_writing_different_files_both_land_and_for_one_file_the_last_writer_wins(app, volume):
    list(app.map(calls.write_in_volume, [volume] * 2, ["left.bin", "right.bin"], [b"L", b"R"]))
    app.run(calls.write_in_volume, volume, "shared.bin", b"first")
    app.run(calls.write_in_volume, volume, "shared.bin", b"second")

    assert volume.listdir("") == ["left.bin", "right.bin", "shared.bin"]
    assert volume.read_bytes("shared.bin") == b"second"


def test_the_files_survive_a_new_apparatus_and_a_new_process(app, backend, volume):
    app.run(calls.write_in_volume, volume, "kept/notes.txt", b"for tomorrow")
    app.close()

    from tests.support.backends import make_apparatus

    with make_apparatus(backend) as again:
        reopened = again.volume(volume.name)
        assert reopened.read_bytes("kept/notes.txt") == b"for tomorrow"
        assert again.run(calls.read_in_volume, reopened, "kept/notes.txt") == b"for tomorrow"

    code = textwrap.dedent(
        f"""
        import cloudpickle, tests.behaviour.calls as calls
        from tests.support.backends import make_apparatus
        cloudpickle.register_pickle_by_value(calls)
        with make_apparatus({backend!r}) as app:
            volume = app.volume({volume.name!r})
            print(volume.read_bytes("kept/notes.txt").decode())
            print(app.run(calls.read_in_volume, volume, "kept/notes.txt").decode())
        """
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == ["for tomorrow", "for tomorrow"]


def test_an_upload_is_read_in_a_call(app, volume, tmp_path):
    (tmp_path / "train.csv").write_bytes(b"x,y\n1,2\n")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "top.txt").write_bytes(b"top")
    (tmp_path / "tree" / "sub" / "deep.txt").write_bytes(b"deep")

    volume.upload(tmp_path / "train.csv", "inputs/train.csv")
    volume.upload(tmp_path / "tree", "inputs/tree")

    assert app.run(calls.read_in_volume, volume, "inputs/train.csv") == b"x,y\n1,2\n"
    assert app.run(calls.read_in_volume, volume, "inputs/tree/sub/deep.txt") == b"deep"
    assert volume.listdir("inputs") == ["train.csv", "tree"]
    assert volume.listdir("inputs/tree") == ["sub", "top.txt"]


def test_an_upload_replaces_a_file_whole_and_remove_deletes_files_and_folders(app, volume, tmp_path):
    (tmp_path / "v1").write_bytes(b"version 1, longer")
    (tmp_path / "v2").write_bytes(b"v2")
    volume.upload(tmp_path / "v1", "model/weights.bin")
    volume.upload(tmp_path / "v2", "model/weights.bin")
    app.run(calls.write_in_volume, volume, "model/other.bin", b"o")
    app.run(calls.write_in_volume, volume, "keep.bin", b"k")

    assert app.run(calls.read_in_volume, volume, "model/weights.bin") == b"v2"
    volume.remove("model/other.bin")
    assert volume.listdir("model") == ["weights.bin"]
    volume.remove("model")
    assert volume.listdir("") == ["keep.bin"]
    assert app.run(calls.read_in_volume, volume, "model/weights.bin") is None
    volume.remove("")
    assert volume.listdir("") == []


def test_a_failed_calls_partial_writes_are_kept(app, volume):
    with pytest.raises(RuntimeError, match="partial checkpoint"):
        app.run(calls.write_then_fail, volume, "ckpt/step-100.bin")

    assert volume.read_bytes("ckpt/step-100.bin") == b"partial"
    assert app.run(calls.read_in_volume, volume, "ckpt/step-100.bin") == b"partial"


@pytest.mark.parametrize("bad", ["", "a/b", "../up", "..", ".", "has space", "x" * 64, "ünï", 7, None])
def test_an_invalid_name_is_an_option_error_and_nothing_is_made(app, backend, bad, request):
    folder = state_path(find_project_root(), "volumes")
    before = set(os.listdir(folder))
    recorder = request.getfixturevalue("modal_emulator").recorder if backend == "modal" else None
    volumes_before = dict(recorder.volumes) if recorder else None

    with pytest.raises(OptionError, match="invalid volume name"):
        app.volume(bad)

    assert set(os.listdir(folder)) == before
    if recorder is not None:
        assert recorder.volumes == volumes_before


def test_the_longest_valid_name_works(app):
    name = f"suite-{uuid.uuid4().hex}".ljust(63, "x")
    volume = app.volume(name)
    try:
        app.run(calls.write_in_volume, volume, "f.bin", b"63")
        assert volume.read_bytes("f.bin") == b"63"
    finally:
        shutil.rmtree(state_path(find_project_root(), "volumes", name, create=False), ignore_errors=True)


ESCAPING = ["../outside.txt", "a/../../outside.txt", "/etc/passwd", "/"]


@pytest.mark.parametrize("path", ESCAPING)
def test_a_path_that_leaves_the_volume_is_a_value_error(app, volume, path, tmp_path):
    (tmp_path / "f").write_bytes(b"f")
    attempts = {
        "read_bytes": lambda: volume.read_bytes(path),
        "listdir": lambda: volume.listdir(path),
        "download": lambda: volume.download(path, tmp_path / "copy"),
        "upload": lambda: volume.upload(tmp_path / "f", path),
        "remove": lambda: volume.remove(path),
    }
    for name, attempt in attempts.items():
        with pytest.raises(ValueError, match="volume") as caught:
            attempt()
        assert not isinstance(caught.value, OptionError), name
    with pytest.raises(ValueError, match="volume"):
        app.run(calls.use_volume_api, volume, "read_bytes", path)
    assert not (tmp_path / "copy").exists()


def test_a_missing_path_is_file_not_found_naming_the_volume_and_the_path(app, volume, tmp_path):
    app.run(calls.write_in_volume, volume, "present.bin", b"here")
    attempts = {
        "read_bytes": lambda: volume.read_bytes("absent/file.bin"),
        "listdir": lambda: volume.listdir("absent/file.bin"),
        "download": lambda: volume.download("absent/file.bin", tmp_path / "copy"),
        "remove": lambda: volume.remove("absent/file.bin"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(FileNotFoundError) as caught:
            attempt()
        assert volume.name in str(caught.value) and "absent/file.bin" in str(caught.value), name
    with pytest.raises(FileNotFoundError, match="absent/file.bin"):
        app.run(calls.use_volume_api, volume, "read_bytes", "absent/file.bin")
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        volume.upload(tmp_path / "nothing-here", "x.bin")
    assert not (tmp_path / "copy").exists()
    assert volume.listdir("") == ["present.bin"]


def test_a_folder_is_not_a_file_and_a_file_is_not_a_folder(app, volume, tmp_path):
    app.run(calls.write_in_volume, volume, "dir/file.bin", b"f")
    (tmp_path / "f").write_bytes(b"f")
    with pytest.raises(IsADirectoryError, match="dir"):
        volume.read_bytes("dir")
    with pytest.raises(IsADirectoryError, match="dir"):
        volume.upload(tmp_path / "f", "dir")
    with pytest.raises(NotADirectoryError, match="dir/file.bin"):
        volume.listdir("dir/file.bin")


def test_the_handle_pickles_and_names_its_volume(volume):
    again = pickle.loads(pickle.dumps(volume))
    assert again.name == volume.name
    assert repr(again) == repr(volume) and volume.name in repr(volume)
