"""Large buffers cross to worker processes through shared memory (`mini.local._shared_memory`), with copy
semantics, and no segment outlives what uses it: after a worker crash, Ctrl-C in a map, or the caller's end.

Segments are anonymous memory files (memfd), so they show in /proc as "memfd:mini" mappings and
descriptors, never in /dev/shm; a segment is gone once no process maps it or holds its descriptor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mini import LocalApparatus, WorkerCrashed
from mini.local import _shared_memory
from tests.behaviour import calls
from tests.test_local_processes import _wait_gone

pytestmark = pytest.mark.skipif(not _shared_memory.AVAILABLE, reason="shared memory needs memfd (Linux)")

ELEMENTS = 400_000  # float64: 3.2 MB, over the size from which buffers go through shared memory
ROOT = str(Path(__file__).parents[1])
# A script's own count of mini's segments it holds (mapped or as descriptors).
COUNT_SEGMENTS = textwrap.dedent(
    """
    def segments(pid="self"):
        import os
        folder = f"/proc/{pid}/fd"
        held = 0
        for name in os.listdir(folder):
            try:
                held += "memfd:mini" in os.readlink(os.path.join(folder, name))
            except OSError:
                pass
        with open(f"/proc/{pid}/maps") as maps:
            return held + sum("memfd:mini" in line for line in maps)
    """
)
namespace: dict = {}
exec(COUNT_SEGMENTS, namespace)
segments = namespace["segments"]


@pytest.fixture(scope="module", params=["process", "isolated"])
def app(request):
    with LocalApparatus("shared-memory", workers=2, mode=request.param) as apparatus:
        yield apparatus


def _array(value: float = 1.0):
    import numpy

    return numpy.full(ELEMENTS, value)


def _dev_shm() -> list[str]:
    return sorted(os.listdir("/dev/shm"))


# ----- copy semantics ------------------------------------------------------------------------------------


def test_an_argument_reaches_the_callee_through_shared_memory(app):
    assert "memfd:mini" in app.run(calls.mapping_of, _array())
    small = _array()[: _shared_memory.SHARED_BYTES // 16]  # half the size: through the socket
    assert "memfd:mini" not in app.run(calls.mapping_of, small.copy())


def test_a_callee_writing_its_argument_leaves_the_callers_array_alone(app):
    array = _array(1.0)
    assert app.run(calls.fill_and_sum, array, -1.0) == ELEMENTS
    assert (array == 1.0).all()
    # The segment the callee wrote in is used again: the next call still sees only what it was given.
    array[:] = 2.0
    assert app.run(calls.fill_and_sum, array, -1.0) == 2.0 * ELEMENTS
    assert list(app.map(calls.fill_and_sum, [array, _array(3.0)], [-1.0, -1.0])) == [
        2.0 * ELEMENTS,
        3.0 * ELEMENTS,
    ]
    assert (array == 2.0).all()


def test_a_result_in_shared_memory_is_the_callers_own(app):
    first = app.run(calls.keep_full, ELEMENTS, 1.0)
    assert "memfd:mini" in calls.mapping_of(first)
    second = app.run(calls.keep_full, ELEMENTS, 2.0)  # while `first` is held, its memory is not reused
    app.run(calls.change_kept, 9.0)  # the callee's later writes to what it returned
    assert (first == 1.0).all() and (second == 2.0).all()
    first[:] = 5.0  # and the caller's writes to one result reach no other
    third = app.run(calls.full, ELEMENTS, 3.0)
    assert (second == 2.0).all() and (third == 3.0).all() and first.flags.writeable


def test_a_result_that_is_its_argument_is_a_copy(app):
    array = _array(1.0)
    result = app.run(calls.identity, array)
    array[:] = 4.0  # the caller's later writes never reach the result
    assert (result == 1.0).all()
    result[:] = 6.0
    assert (array == 4.0).all()


def test_a_retried_call_sees_its_argument_as_it_was_given(app, tmp_path):
    # The first attempt writes all over the argument's segment, then kills its worker.
    array = _array(1.0)
    marker = str(tmp_path / "crashed-once")
    assert app.w(retries=1).run(calls.scribble_then_crash_once, array, marker) == ELEMENTS
    assert Path(marker).exists() and (array == 1.0).all()


# ----- cleanup -------------------------------------------------------------------------------------------


def test_a_crashed_workers_segments_are_let_go():
    before, held_before = _dev_shm(), segments()
    with LocalApparatus("crashes", workers=1, mode="process") as app:
        held = []
        for _ in range(3):
            with pytest.raises(WorkerCrashed):
                app.run(calls.crash_holding, _array())
            held.append(segments())
        assert held[0] == held[1] == held[2], "each crash left a segment behind"
        assert app.run(calls.fill_and_sum, _array(), 0.0) == ELEMENTS
    assert segments() == held_before  # the pool's own go with it
    assert _dev_shm() == before


def test_ctrl_c_in_a_map_leaves_no_segment(tmp_path):
    before = _dev_shm()
    script = COUNT_SEGMENTS + textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {ROOT!r})
        import numpy
        from mini import LocalApparatus
        from tests.behaviour import calls
        app = LocalApparatus("interrupted", workers=2, mode="process")
        array = numpy.ones({ELEMENTS})
        try:
            list(app.map(calls.mark_and_block_holding, [1, 2, 3, 4], [{str(tmp_path)!r}] * 4, [array] * 4))
        except KeyboardInterrupt:
            print(json.dumps({{"segments": segments()}}), flush=True)
            raise
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        while len(list(tmp_path.glob("started-*"))) < 2:
            assert parent.poll() is None, "the script ended early"
            os.sched_yield()
        pids = [int(p.read_text()) for p in tmp_path.glob("started-*")]
        assert all(segments(pid) > 0 for pid in pids)  # each worker maps its argument's segment
        parent.send_signal(signal.SIGINT)
        out, _ = parent.communicate(timeout=60)
        assert json.loads(out.splitlines()[-1]) == {"segments": 0}
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists()
    finally:
        parent.kill()
        (tmp_path / "release").touch()
    assert _dev_shm() == before


@pytest.mark.parametrize("end", ["returns", "is killed"])
def test_no_segment_outlives_the_callers_process(tmp_path, end):
    before = _dev_shm()
    if end == "returns":
        (tmp_path / "release").touch()  # the call marks itself and returns at once
    script = COUNT_SEGMENTS + textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        import numpy
        from mini import LocalApparatus
        from tests.behaviour import calls
        app = LocalApparatus("exiting", workers=2, mode="process")
        kept = app.run(calls.full, {ELEMENTS}, 1.0)  # a result held in a worker's segment
        assert segments() > 0
        # Then (not closing the apparatus) it returns, or is killed while a call holds a large argument.
        app.run(calls.mark_and_block_holding, 1, {str(tmp_path)!r}, numpy.ones({ELEMENTS}))
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        if end == "returns":
            assert parent.wait(timeout=120) == 0
        else:
            while not (tmp_path / "started-1").exists():
                assert parent.poll() is None, "the script ended early"
                os.sched_yield()
            assert segments(int((tmp_path / "started-1").read_text())) > 0
            parent.kill()
            parent.wait()
        _wait_gone(int((tmp_path / "started-1").read_text()))  # and with it, every segment it held
    finally:
        parent.kill()
        (tmp_path / "release").touch()
    assert _dev_shm() == before
