"""The result cache beyond what the behaviour suite shows on every backend: canonical keys, functions without
source, bad arguments, what is and is not in the key, two processes at once, a folder deleted mid-sweep,
entries that cannot be read back, large results, and managing caches (`list_caches`, `clear_cache`,
`mini cache`)."""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mini import Apparatus, LocalApparatus, OptionError, clear_cache, list_caches
from mini.backend import Backend
from mini.cache.keys import Unhashable, argument_digest, function_identity
from mini.cli import main as mini_main
from mini.errors import ArgumentError, BackendError
from mini.progress import Progress
from tests.behaviour import calls
from tests.runs.conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    monkeypatch.setenv("MINI_PROJECT", str(root))
    return root


@pytest.fixture
def app(project: Path) -> Iterator[Apparatus]:
    with LocalApparatus("cache-tests", workers=2) as apparatus:
        yield apparatus


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def executions(folder: Path) -> Counter[int]:
    return Counter(int(path.name.split("-")[1]) for path in folder.glob("ran-*"))


def cache_dir(project: Path, name: str) -> Path:
    return project / ".mini" / "cache" / name


# ----- canonical keys ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Config:
    lr: float
    layers: list[int]


@dataclasses.dataclass
class OtherConfig:
    lr: float
    layers: list[int]


class Colour(enum.Enum):
    RED = 1


def test_equal_values_hash_alike_whatever_their_order_or_identity():
    assert argument_digest({"a": 1, "b": [2, 3]}) == argument_digest({"b": [2, 3], "a": 1})
    assert argument_digest({3, 1, 2}) == argument_digest({2, 3, 1})
    assert argument_digest(Config(0.1, [1, 2])) == argument_digest(Config(0.1, [1, 2]))
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert argument_digest(array) == argument_digest(array.copy())
    assert argument_digest(array.T) == argument_digest(np.ascontiguousarray(array.T)), "a strided view"
    assert argument_digest({"x": array, "c": Colour.RED}) == argument_digest(
        {"c": Colour.RED, "x": array + 0}
    )
    assert argument_digest(10**5000) == argument_digest(10**5000)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ([1, 2], (1, 2)),
        (True, 1),
        (1, 1.0),
        ("1", 1),
        ({1, 2}, frozenset({1, 2})),
        ({"a": 1}, {"a": 2}),
        (Config(0.1, [1]), OtherConfig(0.1, [1])),
        (np.zeros(4, dtype=np.int32), np.zeros(4, dtype=np.int64)),
        (np.zeros(4), np.zeros((2, 2))),
        (b"ab", bytearray(b"ab")),
        (("a", "bc"), ("ab", "c")),
    ],
)
def test_different_values_hash_differently(one, other):
    assert argument_digest(one) != argument_digest(other)


def test_a_volume_is_keyed_by_its_name_and_backend(project):
    from mini import ModalApparatus

    local = LocalApparatus("volumes")
    assert argument_digest(local.volume("runs")) == argument_digest(local.volume("runs"))
    assert argument_digest(local.volume("runs")) != argument_digest(local.volume("other"))
    assert argument_digest(local.volume("runs")) != argument_digest(ModalApparatus("volumes").volume("runs"))


def test_a_value_without_a_canonical_hash_is_named_with_where_it_sits():
    with pytest.raises(Unhashable) as caught:
        argument_digest({"model": Config(0.1, [1, threading.Lock()])})
    assert "lock" in caught.value.reason and caught.value.path == "['model'].layers[1]"
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(Unhashable, match="list"):
        argument_digest(looped)


def _offset(amount: int) -> Callable[[int], int]:
    def add(x: int) -> int:
        return x + amount

    return add


def _recursive() -> Callable[[int], int]:
    def countdown(n: int) -> int:
        return 0 if n == 0 else countdown(n - 1)

    return countdown


def test_a_function_is_keyed_by_its_code_defaults_and_closure():
    assert function_identity(_offset(1)) == function_identity(_offset(1))
    assert function_identity(_offset(1)) != function_identity(_offset(2)), "closures differ by their values"
    assert function_identity(functools.partial(calls.add, 1)) != function_identity(
        functools.partial(calls.add, 2)
    )
    assert function_identity(_recursive()) == function_identity(_recursive()), (
        "a function closing over itself"
    )


def _compiled(source: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {}
    exec(compile(source, "<typed at a prompt>", "exec"), namespace)
    return namespace["f"]


def test_a_function_without_source_is_keyed_by_its_code_and_a_builtin_is_refused():
    first = _compiled("def f(x, folder):\n    return x + 1\n")
    again = _compiled("def f(x, folder):\n    return x + 1\n")
    edited = _compiled("def f(x, folder):\n    return x + 2\n")
    assert function_identity(first) == function_identity(again)
    assert function_identity(first) != function_identity(edited)
    with pytest.raises(OptionError, match=r"builtins:pow .* no source and no Python code object"):
        function_identity(pow)


# ----- through an apparatus ----------------------------------------------------------------------------


def test_a_function_typed_at_a_prompt_is_cached_by_its_code(app, folder):
    step = _compiled(
        "from pathlib import Path\nimport uuid\n"
        "def f(x, folder):\n    Path(folder, f'ran-{x}-{uuid.uuid4().hex}').touch()\n    return x + 1\n"
    )
    cached = app.w(cache="typed")
    assert list(cached.map(step, range(3), [str(folder)] * 3)) == [1, 2, 3]
    assert list(cached.map(step, range(3), [str(folder)] * 3)) == [1, 2, 3]
    assert executions(folder) == Counter(range(3))
    with pytest.raises(OptionError, match="no source"):
        cached.run(pow, 2, 3)


def test_an_argument_that_cannot_be_hashed_is_named(app, folder):
    cached = app.w(cache="bad-arguments")
    with pytest.raises(ArgumentError, match=r"argument 'x' \(position 0\) of call #1 to tally .*lock"):
        list(cached.map(calls.tally, [1, threading.Lock()], [str(folder)] * 2))
    with pytest.raises(ArgumentError, match=r"keyword argument 'folder' of every call .* \(at \[0\]\)"):
        list(cached.map(calls.tally, [1], kwargs={"folder": [object()]}))
    assert app.run(len, [object()]) == 1, "without a cache nothing is hashed"


def test_options_that_cannot_change_a_result_are_not_part_of_the_key(app, folder):
    cached = app.w(cache="options")
    assert list(cached.map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    changed = cached.w(timeout=30, retries=2, max_containers=3, cpu=2.0, memory=512, progress=False)
    assert list(changed.map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    assert executions(folder) == Counter(range(3))
    # The environment a call sees can change what it returns: another env is another key.
    assert list(cached.w(env={"MINI_TEST": "1"}).map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    assert executions(folder) == Counter({0: 2, 1: 2, 2: 2})
    # Positional and keyword spellings are different calls; keywords in any order are the same.
    assert cached.run(calls.add, 1, 2, bias=3) == cached.run(calls.add, 1, 2, bias=3) == 6
    first = list(cached.map(calls.tally, [5], kwargs={"folder": str(folder)}))
    assert first == [25] and executions(folder)[5] == 1
    assert list(cached.map(calls.tally, [5], [str(folder)])) == [25] and executions(folder)[5] == 2


def test_cache_true_is_named_after_the_apparatus_and_false_turns_it_off(app, project, folder):
    assert list(app.w(cache=True).map(calls.tally, range(2), [str(folder)] * 2)) == [0, 1]
    assert [info.name for info in list_caches()] == ["cache-tests"]
    assert list(app.w(cache=True).w(cache=False).map(calls.tally, range(2), [str(folder)] * 2)) == [0, 1]
    assert executions(folder) == Counter({0: 2, 1: 2})
    for bad in ("", "../up", ".hidden", "a b", 3):
        with pytest.raises(OptionError, match="cache"):
            app.w(cache=bad)


class Unreachable(Backend):
    """A backend that cannot be reached: opening a dispatch fails, as a Modal without network would."""

    kind: ClassVar[str] = "unreachable"
    opened = 0

    async def open_dispatch(self, fn, fn_blob, options, *, ordered):
        Unreachable.opened += 1
        raise BackendError("cannot reach the backend")

    def close(self) -> None:
        pass


def test_a_fully_cached_map_never_opens_a_dispatch(app, folder):
    assert list(app.w(cache="offline").map(calls.tally, range(4), [str(folder)] * 4)) == [0, 1, 4, 9]
    offline = Apparatus("offline", Unreachable()).w(cache="offline")
    assert list(offline.map(calls.tally, range(4), [str(folder)] * 4)) == [0, 1, 4, 9]
    assert offline.run(calls.tally, 2, str(folder)) == 4
    assert Unreachable.opened == 0
    with pytest.raises(BackendError, match="cannot reach"):
        list(offline.map(calls.tally, range(5), [str(folder)] * 5))  # input 4 is not cached
    assert Unreachable.opened == 1


def test_a_fully_cached_map_on_modal_needs_no_modal(app, folder, monkeypatch):
    from mini import ModalApparatus

    assert list(app.w(cache="no-network").map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    monkeypatch.setenv("MODAL_SERVER_URL", "http://127.0.0.1:9")  # nothing listens there
    with ModalApparatus("no-network").w(cache="no-network", gpu="A100") as offline:
        assert list(offline.map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    assert executions(folder) == Counter(range(3))


def test_a_cache_folder_deleted_mid_sweep_is_recreated(app, project, folder):
    cached = app.w(cache="deleted")
    results = cached.map(calls.tally_or_block, range(4), [str(folder)] * 4, [1] * 4)
    assert next(results) == 0  # kept as it arrived
    shutil.rmtree(project / ".mini")
    (folder / "release").touch()
    assert list(results) == [1, 4, 9]  # kept in a new segment, in a folder made again
    assert cache_dir(project, "deleted").is_dir()
    assert (project / ".mini" / ".gitignore").read_text() == "*\n", "the state folder ignores itself again"
    before = executions(folder)
    assert list(cached.map(calls.tally_or_block, range(4), [str(folder)] * 4, [1] * 4)) == [0, 1, 4, 9]
    assert executions(folder) - before == Counter({0: 1}), "only the call kept before the deletion is lost"


def _segments(project: Path, name: str) -> list[Path]:
    return sorted(cache_dir(project, name).glob("*.seg"))


SWEEP = """
import sys
from mini import LocalApparatus
from tests.behaviour import calls
from tests.runs.conftest import wait_until

name, folder, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with LocalApparatus("child", workers=2) as app:
    print(list(app.w(cache=name).map(calls.tally_after_everyone, range(count), [folder] * count)))
"""


def _sweep_in_a_process(project: Path, name: str, folder: Path, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "MINI_PROJECT": str(project), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", SWEEP, name, str(folder), str(count)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_running_the_same_cached_sweep(app, project, folder):
    (folder / "expected").write_text("2")  # each call waits until both processes are running calls
    children = [_sweep_in_a_process(project, "together", folder, 30) for _ in range(2)]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert out.strip() == str([x * x for x in range(30)])
    assert len(_segments(project, "together")) == 2, "each process writes a segment of its own"
    (info,) = list_caches()
    assert info.entries == 30 and info.unreadable_segments == 0
    before = executions(folder)
    cached = app.w(cache="together")
    assert list(cached.map(calls.tally_after_everyone, range(30), [str(folder)] * 30)) == [
        x * x for x in range(30)
    ]
    assert executions(folder) == before, "every entry of either process reads back"


INTERRUPTED = """
import sys
from mini import LocalApparatus
from tests.behaviour import calls
from tests.runs.conftest import wait_until

name, folder = sys.argv[1], sys.argv[2]
with LocalApparatus("child", workers=2, mode="process") as app:
    # Inputs 3-5 block until released; a timeout makes process mode send the calls one at a time.
    for value in app.w(cache=name, timeout=300).map(calls.tally_or_block, range(6), [folder] * 6, [3] * 6):
        print(value, flush=True)
"""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_a_map_whose_calling_process_is_interrupted_keeps_what_it_received(app, project, folder, how):
    env = {**os.environ, "MINI_PROJECT": str(project), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, "interrupted", str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        received = [int(child.stdout.readline()) for _ in range(3)]
        assert received == [0, 1, 4]
        # Both workers hold blocked calls: nothing else can finish before the signal.
        wait_until(lambda: sum(executions(folder)[x] for x in range(3, 6)) == 2, what="two blocked calls")
        child.send_signal(how)
        _, err = child.communicate(timeout=60)
    finally:
        (folder / "release").touch()
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    if how == signal.SIGINT:
        assert "KeyboardInterrupt" in err
    before = executions(folder)
    cached = app.w(cache="interrupted")
    assert list(cached.map(calls.tally_or_block, range(6), [str(folder)] * 6, [3] * 6)) == [
        x * x for x in range(6)
    ]
    assert executions(folder) - before == Counter(range(3, 6)), "the rerun ran calls the child had received"


def test_a_frame_cut_short_by_a_crash_is_ignored(app, project, folder):
    child = _sweep_in_a_process(project, "torn", folder, 5)
    assert child.wait(timeout=120) == 0
    (segment,) = _segments(project, "torn")
    os.truncate(segment, segment.stat().st_size - 3)  # as if the writer died mid-write
    cached = app.w(cache="torn")
    assert list(cached.map(calls.tally_after_everyone, range(5), [str(folder)] * 5)) == [0, 1, 4, 9, 16]
    rerun = executions(folder) - Counter(range(5))
    assert rerun and set(rerun) <= set(range(5)) and max(rerun.values()) == 1


def test_entries_of_another_format_are_ignored_and_recomputed(app, project, folder):
    cached = app.w(cache="old")
    assert list(cached.map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    (segment,) = _segments(project, "old")
    data = bytearray(segment.read_bytes())
    data[12:16] = (99).to_bytes(4, "little")  # the format number in the segment's header
    segment.unlink()
    (segment.parent / "1-written-by-another-mini.seg").write_bytes(data)
    assert list(cached.map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    assert executions(folder) == Counter({0: 2, 1: 2, 2: 2})
    (info,) = list_caches()
    assert (info.entries, info.unreadable_segments) == (3, 1)


class Fragile:
    """A result that cannot be unpickled once `broken` names its token (a class renamed since, say)."""

    broken: ClassVar[set[str]] = set()

    def __init__(self, token: str) -> None:
        self.token = token

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.token,))


def _rebuild(token: str) -> Fragile:
    if token in Fragile.broken:
        raise ImportError(f"no longer importable: {token}")
    return Fragile(token)


def fragile(x: int, folder: str) -> Fragile:
    calls.tally(x, folder)
    return Fragile(uuid.uuid4().hex)


def test_an_entry_that_cannot_be_unpickled_is_a_miss(app, folder):
    cached = app.w(cache="fragile")
    first = list(cached.map(fragile, range(3), [str(folder)] * 3))
    Fragile.broken.add(first[1].token)
    again = list(cached.map(fragile, range(3), [str(folder)] * 3))
    assert [r.token for r in again][::2] == [r.token for r in first][::2]
    assert again[1].token != first[1].token
    assert executions(folder) == Counter({0: 1, 1: 2, 2: 1})


def test_large_results_are_kept_and_read_back_without_extra_copies(project):
    size = 32 * 1024 * 1024
    items = size // 8
    with LocalApparatus("large", workers=1, mode="process") as app:
        app.run(calls.ones, 1)  # a warm worker

        def peak(run: Callable[[], Any]) -> tuple[Any, int]:
            tracemalloc.start()
            try:
                value = run()
                return value, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        _, plain = peak(lambda: app.run(calls.ones, items))
        cached = app.w(cache="large")
        _, missed = peak(lambda: cached.run(calls.ones, items))
        hit, loaded = peak(lambda: cached.run(calls.ones, items))
    assert hit.shape == (items,) and hit.flags.writeable and float(hit.sum()) == items
    assert missed < plain + size // 4, f"keeping a result copied it: {missed} bytes at peak, {plain} without"
    assert loaded < size * 1.25, f"reading an entry back took {loaded} bytes at peak for {size}"
    (info,) = list_caches()
    assert info.entries == 1 and info.bytes > size


def test_caches_are_listed_and_cleared(app, project, folder):
    started = time.time()
    assert list(app.w(cache="first").map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    assert list(app.w(cache="second").map(calls.tally, range(5), [str(folder)] * 5)) == [0, 1, 4, 9, 16]
    listed = {info.name: info for info in list_caches()}
    assert set(listed) == {"first", "second"}
    assert (listed["first"].entries, listed["second"].entries) == (3, 5)
    assert listed["first"].bytes > 0 and listed["first"].last_used >= started - 1
    removed = clear_cache("first")
    assert removed is not None and removed.entries == 3
    assert not cache_dir(project, "first").exists()
    assert [info.name for info in list_caches()] == ["second"]
    assert clear_cache("first") is None
    assert list(app.w(cache="first").map(calls.tally, range(3), [str(folder)] * 3)) == [0, 1, 4]
    assert executions(folder) == Counter({0: 3, 1: 3, 2: 3, 3: 1, 4: 1}), "cleared entries are recomputed"


def test_mini_cache_ls_and_clear(app, project, folder, capsys):
    assert mini_main(["cache", "ls"]) == 0
    assert "no caches" in capsys.readouterr().out
    list(app.w(cache="spirals-v1").map(calls.tally, range(4), [str(folder)] * 4))
    assert mini_main(["cache", "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, _, row = (line.replace("┃", " ").replace("│", " ").split() for line in lines)
    (info,) = list_caches()
    assert header == ["NAME", "ENTRIES", "SIZE", "LAST", "USED"]
    assert row[:4] == ["spirals-v1", "4", str(info.bytes), "B"] and row[-1] == "ago"
    assert mini_main(["cache", "clear", "spirals-v1"]) == 0
    assert "cleared cache spirals-v1 (4 entries" in capsys.readouterr().out
    assert mini_main(["cache", "clear", "spirals-v1"]) == 1
    assert "no cache named 'spirals-v1'" in capsys.readouterr().err


def test_a_hit_reports_nothing(app, folder):
    for x in range(2):
        (folder / f"seen-{x}").touch()
    heard: list[Any] = []
    cached = app.w(cache="reports", on_report=heard.append)
    assert list(cached.map(calls.reporting, range(2), [str(folder)] * 2)) == [0, 1]
    assert {report.index for report in heard} == {0, 1}
    heard.clear()
    assert list(cached.map(calls.reporting, range(2), [str(folder)] * 2)) == [0, 1]
    assert heard == [], "a call answered from the cache does not run, so it reports nothing"


def test_stream_refuses_a_variant_with_a_cache(app, folder):
    cached = app.w(cache="streams")
    with pytest.raises(OptionError, match=r"stream does not use the result cache.*\.w\(cache=False\)"):
        next(cached.stream(calls.count_up, str(folder)))
    assert not (folder / "yielded-0").exists(), "nothing was dispatched"
    (folder / "proceed-0").touch()
    assert next(cached.w(cache=False).stream(calls.count_up, str(folder))) == 0


def test_the_progress_bar_counts_cached_calls(capsys):
    progress = Progress("sweep", enabled=True, total=4)
    progress.update(submitted=1, running=0, done=1, failed=0, cached=3, finished=True)
    progress.close()
    drawn = capsys.readouterr().err
    assert "4/4" in drawn and "cached 3" in drawn
