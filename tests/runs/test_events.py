"""The events file of a detached call (`mini.runs.events`): appended by its call, followed by readers."""

from __future__ import annotations

from pathlib import Path

from mini.modal_backend.container import packed, unpacked
from mini.reports import Placement
from mini.runs.events import MAX_PENDING_REPORTS, CallEventFile, CallHistory, EventReader, append, history


def test_a_reader_follows_the_file_and_never_reads_a_line_still_being_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.read() == [], "no file yet: nothing said yet"
    append(path, [{"kind": "output", "stream": "stdout", "text": "one"}])
    with path.open("a") as file:
        file.write('{"kind": "output", "stream": "stdout", "te')  # a writer half-way through a line
    assert [event["text"] for event in reader.read()] == ["one"]
    with path.open("a") as file:
        file.write('xt": "two"}\n')
    assert [event["text"] for event in reader.read()] == ["two"]
    assert reader.read() == []


def test_a_line_cut_short_by_a_killed_writer_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"kind": "output", "stream": "stdout", "text": "cut\n')
    append(path, [{"kind": "output", "stream": "stdout", "text": "after"}])
    assert [text for _, text in history(path, 0).lines] == ["after"]


def test_each_start_begins_an_attempt_and_reports_carry_where_it_ran(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = CallEventFile(path)
    for attempt, host in ((1, "first"), (2, "second")):
        events.emit(0, "started", Placement(100.0 * attempt, host, 4, ("H100",)))
        events.emit(0, "report", (100.0 * attempt + 1, {"loss": 1.0 / attempt}, 0))
    events.close()
    folded = history(path, 7)
    assert [(r.index, r.attempt, r.metrics, r.placement.host) for r in folded.reports] == [
        (7, 1, {"loss": 1.0}, "first"),
        (7, 2, {"loss": 0.5}, "second"),
    ]
    assert folded.placement == Placement(200.0, "second", 4, ("H100",)) and folded.attempt == 2


def test_reports_beyond_the_pending_limit_are_coalesced_with_their_count(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = CallEventFile(path)
    events._closed.set()  # no background writes: every report is pending at once
    events._thread.join()
    for i in range(MAX_PENDING_REPORTS + 50):
        events.emit(0, "report", (float(i), {"i": i, "tag": "a" if i < 10 else "b"}, 0))
    events.close()
    reports = history(path, 0).reports
    assert len(reports) == MAX_PENDING_REPORTS
    assert reports[-1].metrics == {"i": MAX_PENDING_REPORTS + 49, "tag": "b"} and reports[-1].coalesced == 50
    assert sum(1 + r.coalesced for r in reports) == MAX_PENDING_REPORTS + 50


def test_a_copied_source_counts_its_chunks_and_ends(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    line = {"kind": "report", "time": 1.0, "metrics": {"x": 1}, "coalesced": 0}
    append(path, [{**line, "source": "fc-1", "seq": 0}, {**line, "source": "fc-1", "seq": 1}])
    append(path, [{"kind": "end", "source": "fc-1"}])
    folded = CallHistory(0)
    folded.feed(EventReader(path).read())
    assert folded.copied == {"fc-1": 2} and folded.ended == {"fc-1"}


def test_events_are_packed_into_pickles_under_the_limit_and_back_in_order() -> None:
    events = [("in-1", "output", ("stdout", f"{i:05d}" + "x" * 1000)) for i in range(3000)]
    blobs = packed(events, limit=100_000)
    assert len(blobs) > 1 and all(len(blob) <= 100_000 for blob in blobs)
    assert [event for blob in blobs for event in unpacked(blob)] == events


def test_the_reports_of_an_experiments_calls_are_kept_and_coalesced_call_by_call(tmp_path: Path) -> None:
    from mini.reports import Report

    path = tmp_path / "events.jsonl"
    events = CallEventFile(path)
    events._closed.set()  # no background writes: every report is pending at once
    events._thread.join()
    where = Placement(1.0, "vm", 2)
    for i in range(MAX_PENDING_REPORTS + 100):
        events.inner_report(41, Report(i % 2, {"i": i}, float(i), placement=where))
    events.close()
    folded = history(path, 0)
    assert sorted(folded.series) == [(1, 0), (1, 1)], "map 41 of the process is the file's map 1"
    for index in (0, 1):
        reports = folded.series[(1, index)]
        assert all(r.metrics["i"] % 2 == index for r in reports), "coalesced only into its own call's"
        assert reports[-1].metrics["i"] == MAX_PENDING_REPORTS + 98 + index
        assert reports[0].placement == where
    assert sum(1 + r.coalesced for r in folded.reports) == MAX_PENDING_REPORTS + 100
