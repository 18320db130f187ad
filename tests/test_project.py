"""Project state: the one `.mini/` layout, atomic writes under concurrent writers, and locks."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading

import pytest

from mini.project import (
    atomic_file,
    atomic_write,
    atomic_writes,
    exclusive_lock,
    find_project_root,
    state_dir,
    state_path,
    volume_folder,
)


def test_the_state_folder_is_created_on_first_use_and_ignores_itself_in_git(tmp_path):
    assert not state_dir(tmp_path).exists()
    runs = state_path(tmp_path, "runs")
    assert runs == tmp_path / ".mini" / "runs" and runs.is_dir()
    assert (tmp_path / ".mini" / ".gitignore").read_text() == "*\n"
    assert not state_path(tmp_path, "cache", create=False).exists()


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "deep" / "f.json"
    atomic_write(path, json.dumps({"v": 1}).encode())
    atomic_write(path, json.dumps({"v": 2}).encode(), durable=False)
    assert json.loads(path.read_text()) == {"v": 2}
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_atomic_writes_replace_many_files_with_one_sync(tmp_path, monkeypatch):
    import os

    syncs = []
    monkeypatch.setattr(os, "sync", lambda: syncs.append(1))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.json").write_text("old")
    atomic_writes([(tmp_path / "a" / "1.json", b"one"), (tmp_path / "b" / "2.json", b"two")])
    assert (tmp_path / "a" / "1.json").read_text() == "one" and (
        tmp_path / "b" / "2.json"
    ).read_text() == "two"
    assert syncs == [1], "one sync for every file, before any replaces its path"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["1.json", "2.json"]


def test_atomic_writes_that_fail_part_way_replace_nothing_and_leave_no_temporary_file(tmp_path):
    (tmp_path / "kept.json").write_text("old")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OSError):
        atomic_writes([(tmp_path / "kept.json", b"new"), (tmp_path / "a-file" / "x.json", b"never")])
    assert (tmp_path / "kept.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "kept.json"]


def test_atomic_file_writes_in_pieces_and_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "big.bin"
    with atomic_file(path, durable=False) as out:
        for piece in (b"a" * 10, b"b" * 10):
            out.write(piece)
        assert not path.exists()  # nothing under the name until the block ends
    assert path.read_bytes() == b"a" * 10 + b"b" * 10
    with pytest.raises(OSError, match="disk"), atomic_file(path) as out:
        out.write(b"half")
        raise OSError("disk went away")
    assert path.read_bytes() == b"a" * 10 + b"b" * 10
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


def test_a_volumes_folder_is_under_the_state_folder(tmp_path):
    assert volume_folder(tmp_path, "ckpt") == tmp_path / ".mini" / "volumes" / "ckpt"
    assert (tmp_path / ".mini" / "volumes" / "ckpt").is_dir()


def _write_many(path: str, writer: int) -> None:
    from pathlib import Path

    for attempt in range(200):
        atomic_write(
            Path(path), json.dumps({"writer": writer, "attempt": attempt, "pad": "x" * 5000}).encode()
        )


def test_concurrent_writers_never_leave_a_torn_file(tmp_path):
    path = tmp_path / "shared.json"
    atomic_write(path, b'{"writer": -1}')
    seen: list[dict] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(json.loads(path.read_bytes()))  # a torn file would not parse

    reader = threading.Thread(target=read)
    reader.start()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(path), n)) for n in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join()
    stop.set()
    reader.join()
    assert all(process.exitcode == 0 for process in writers)
    assert json.loads(path.read_bytes())["attempt"] == 199
    assert len(seen) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


_TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as handle:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("held")
    else:
        print("free")
"""


def test_an_exclusive_lock_is_held_against_other_processes_until_the_block_ends(tmp_path):
    lock = tmp_path / "x.lock"

    def other_process_sees() -> str:
        done = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(lock)], capture_output=True, text=True)
        return done.stdout.strip()

    with exclusive_lock(lock):
        assert other_process_sees() == "held"
    assert other_process_sees() == "free"


def test_mini_project_names_the_project(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.setenv("MINI_PROJECT", str(tmp_path))
    assert find_project_root() == tmp_path.resolve()
    monkeypatch.setenv("MINI_PROJECT", str(tmp_path / "nothing"))
    with pytest.raises(Exception, match="holds no pyproject.toml"):
        find_project_root()
