"""The progress of each map: its total when the inputs have a length, and counts told to listeners (what a
detached experiment records of the calls it makes), on every backend the `app` fixture gives."""

from __future__ import annotations

import threading

import pytest

from mini import LocalApparatus
from mini.progress import Counts, Progress, listening
from tests.behaviour import calls


class Seen:
    """A listener that keeps every map's counts, in the order they came."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.maps: dict[int, list[Counts]] = {}

    def __call__(self, progress_id: int, counts: Counts) -> None:
        with self._lock:
            self.maps.setdefault(progress_id, []).append(counts)

    def only(self) -> list[Counts]:
        assert len(self.maps) == 1, self.maps
        return next(iter(self.maps.values()))


def test_a_map_over_inputs_with_a_length_knows_its_total_from_the_start(app):
    seen = Seen()
    with listening(seen):
        assert list(app.map(calls.square, range(20))) == [x * x for x in range(20)]
    counts = seen.only()
    assert {c.total for c in counts} == {20}, "0/20 from the first update, not 0/?"
    assert counts[-1].finished and counts[-1].done == 20 and counts[-1].queued == 0


@pytest.mark.parametrize(
    ("inputs", "total"),
    [
        ((range(5), [1] * 3), 3),  # zip stops at the shortest
        (((x for x in range(4)),), None),  # a generator has no length
    ],
)
def test_the_total_is_the_shortest_length_or_unknown(inputs, total):
    seen = Seen()
    with LocalApparatus("progress") as app, listening(seen):
        list(app.map(calls.add, *inputs) if len(inputs) > 1 else app.map(calls.square, *inputs))
    counts = seen.only()
    assert {c.total for c in counts} == {total}
    assert counts[-1].finished


def test_a_single_call_and_a_map_stopped_early_are_told_how_they_ended(tmp_path):
    seen = Seen()
    with LocalApparatus("progress", workers=2) as app, listening(seen):
        assert app.run(calls.square, 3) == 9
        try:
            for _ in app.map(calls.quick_or_block, range(10), [str(tmp_path)] * 10):
                break  # input 0 came back; the others are blocked or queued
        finally:
            (tmp_path / "release").touch()  # threads cannot be stopped: let the blocked ones end
    single, stopped = (seen.maps[key][-1] for key in sorted(seen.maps))
    assert (single.total, single.done, single.finished) == (1, 1, True)
    assert stopped.finished and stopped.running == 0 and stopped.queued == 0
    assert stopped.done + stopped.cancelled == stopped.submitted and stopped.cancelled > 0


def test_listeners_are_removed_when_the_block_ends():
    seen = Seen()
    with listening(seen):
        pass
    Progress("after", enabled=False, total=1).update(submitted=1, running=1, done=0, failed=0)
    assert seen.maps == {}
