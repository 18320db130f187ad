"""The run registry: one folder per detached run under the project's `.mini/runs/`.

    .mini/runs/<run id>/run.json                 the record (backend, function, git, calls and their ids)
    .mini/runs/<run id>/function.pkl             the pickled function, shared by the run's calls
    .mini/runs/<run id>/options.pkl              the options the calls ran under (to launch them again)
    .mini/runs/<run id>/calls/<index>/...        per call: payload, outcome, markers, log, events
    .mini/runs/<run id>/calls/<index>/attempts/<n>/  what an earlier attempt left (see `mini retry`)

Every file is written whole (write-then-rename), so a reader sees the previous version or the next one and
a crash never leaves half a record. Run ids are claimed with an exclusive `mkdir`, so concurrent launches
never share a folder. Reading needs no backend, no image and no network.

>>> folder = open_run("20261123-170102-a3f9")
>>> folder.record().function, folder.outcome_summary(0)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mini.project import atomic_write, atomic_writes, read_json, state_path
from mini.runs.errors import RunError, RunNotFound

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mini.serialization import Outcome

FORMAT = 1
_RECORD = "run.json"


@dataclass(frozen=True)
class CallRecord:
    """One call of a run: its position, a readable summary of its arguments, and the backend's id for it."""

    index: int
    args: str
    backend_id: str | None = None
    attempt: int = 1  # launches of this call so far: 1, then one more per `mini retry` that included it


@dataclass(frozen=True)
class RunRecord:
    """What a run was: written at launch, read by every later question about it."""

    id: str
    kind: str  # "spawn", "spawn_map" or "experiment"
    backend: str
    apparatus: str
    function: str
    monitor: str  # "module:Class" of the `Monitor` that observes this run's calls
    created: float
    project_root: str
    image_hash: str | None
    git_commit: str | None
    git_dirty: bool | None
    calls: tuple[CallRecord, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    launcher: dict[str, Any] = field(default_factory=dict)  # the launching process, for liveness checks
    launched: float | None = None  # set once the backend has taken every call
    # How to make the launcher again (`mini retry`): {"backend": "local", "settings": {"workers": 2, ...}}
    relaunch: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown run record format {data.get('format')!r}")
        fields = {key: value for key, value in data.items() if key != "format"}
        fields["calls"] = tuple(CallRecord(**call) for call in fields["calls"])
        return cls(**fields)


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json(path)


class RunFolder:
    """The files of one run. Cheap to create; every method reads or writes the disk when called."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ----- the record --------------------------------------------------------------------------------

    def record(self) -> RunRecord:
        path = self.path / _RECORD
        try:
            data = _read_json(path)
            if data is None:
                raise RunNotFound(
                    f"run {self.id} has a folder ({self.path}) but no record in it: its launch was "
                    "interrupted or the entry was partly deleted. Remove the folder."
                )
            return RunRecord.from_json(data)
        except (ValueError, TypeError, KeyError) as error:
            raise RunError(
                f"the record of run {self.id} ({path}) cannot be read ({error}): it was edited by hand or "
                "written by another version of mini."
            ) from None

    def write_record(self, record: RunRecord) -> None:
        atomic_write(self.path / _RECORD, json.dumps(record.to_json(), indent=1).encode())

    def write_file(self, name: str, data: bytes) -> None:
        """A run-level file a backend keeps next to the record (e.g. its scheduler's identity)."""
        atomic_write(self.path / name, data)

    def read_json(self, name: str) -> dict[str, Any] | None:
        return _read_json(self.path / name)

    # ----- per call ----------------------------------------------------------------------------------

    def call_dir(self, index: int) -> Path:
        return self.path / "calls" / str(index)

    def write_call_file(self, index: int, name: str, data: bytes) -> None:
        atomic_write(self.call_dir(index) / name, data)

    def read_call_json(self, index: int, name: str) -> dict[str, Any] | None:
        return _read_json(self.call_dir(index) / name)

    def log_path(self, index: int) -> Path:
        return self.call_dir(index) / "log"

    def events_path(self, index: int) -> Path:
        """Where call `index`'s reports and placement are kept (`mini.runs.events`)."""
        from mini.runs.events import EVENTS

        return self.call_dir(index) / EVENTS

    def store_outcome(self, index: int, outcome: Outcome, attempts: int = 1) -> None:
        """Keep a call's outcome here for good (remote backends forget results after a while).

        The data is written before its summary, so a summary always has its data next to it.
        """
        self.write_call_file(index, "outcome.pkl", _encoded(outcome))
        self.write_call_file(index, "outcome.json", json.dumps(_summary(outcome, attempts)).encode())

    def store_outcomes(self, outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
        """`store_outcome` of many calls (each `Outcome.index` names its call) with two syncs to disk in
        all rather than two per call; returns their summaries."""
        atomic_writes(
            [(self.call_dir(outcome.index) / "outcome.pkl", _encoded(outcome)) for outcome in outcomes]
        )
        summaries = [_summary(outcome, 1) for outcome in outcomes]
        atomic_writes(
            [
                (self.call_dir(outcome.index) / "outcome.json", json.dumps(summary).encode())
                for outcome, summary in zip(outcomes, summaries, strict=True)
            ]
        )
        return summaries

    def outcome_summary(self, index: int) -> dict[str, Any] | None:
        """`{"ok", "error", "finished", "attempts"}` once the call has settled here, else None."""
        return self.read_call_json(index, "outcome.json")

    def load_outcome(self, index: int) -> Outcome:
        from mini.serialization import Outcome

        summary = self.outcome_summary(index)
        assert summary is not None, "load_outcome needs a settled call"
        return Outcome(index, bool(summary["ok"]), (self.call_dir(index) / "outcome.pkl").read_bytes())

    def archive_attempt(self, index: int) -> int:
        """Move what the call's last attempt left (outcome, markers, log, backend ids) to
        `attempts/<n>/`, so that the call starts again from its payload alone; returns n."""
        folder = self.call_dir(index)
        attempts = folder / "attempts"
        attempts.mkdir(exist_ok=True)
        number = 1 + sum(1 for _ in attempts.iterdir())
        target = attempts / str(number)
        target.mkdir()
        for item in folder.iterdir():
            if item.name not in ("payload.pkl", "attempts"):
                os.replace(item, target / item.name)
        return number

    def mark_cancelled(self, index: int) -> None:
        self.write_call_file(index, "cancelled.json", json.dumps({"cancelled": time.time()}).encode())

    def cancelled_at(self, index: int) -> float | None:
        marker = self.read_call_json(index, "cancelled.json")
        return None if marker is None else float(marker["cancelled"])


# ----- the registry ----------------------------------------------------------------------------------


def _encoded(outcome: Outcome) -> bytes:
    assert isinstance(outcome.data, bytes), "store an encoded outcome (see mini.serialization)"
    return outcome.data


def _summary(outcome: Outcome, attempts: int) -> dict[str, Any]:
    error = None
    if not outcome.ok:
        from mini.serialization import decode_error

        exc = decode_error(outcome.data)
        error = f"{type(exc).__name__}: {exc}"
    return {"ok": outcome.ok, "error": error, "finished": time.time(), "attempts": attempts}


def runs_dir(project_root: Path) -> Path:
    """`<project>/.mini/runs`, where this checkout's runs are recorded (it may not exist yet)."""
    return state_path(project_root, "runs", create=False)


def new_run_folder(project_root: Path, now: float | None = None) -> RunFolder:
    """Claim a fresh run id and its folder; never one another launch holds.

    Ids sort by launch time and read well in a shell: `20261123-170102-a3f9`.
    """
    parent = state_path(project_root, "runs")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    while True:
        path = parent / f"{stamp}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / "calls").mkdir()
        return RunFolder(path)


def list_runs(project_root: Path) -> list[RunFolder]:
    """This checkout's runs, newest first (folders without a record yet are left out)."""
    parent = runs_dir(project_root)
    if not parent.is_dir():
        return []
    folders = [RunFolder(p) for p in parent.iterdir() if (p / _RECORD).is_file()]
    return sorted(folders, key=_launch_order, reverse=True)


def _launch_order(folder: RunFolder) -> tuple[str, int]:
    # Ids name the second a run was launched; within one second, the function file written at launch says
    # which came first.
    try:
        written = (folder.path / "function.pkl").stat().st_mtime_ns
    except OSError:
        written = 0
    return folder.id[:15], written


def open_run(run_id: str, project_root: Path) -> RunFolder:
    """The run `run_id` (or the one run whose id starts with it); `RunNotFound` says what exists instead.

    >>> open_run("20261123-1701", root).record().backend
    'local'
    """
    parent = runs_dir(project_root)
    exact = parent / run_id
    if run_id and "/" not in run_id and exact.is_dir():
        return RunFolder(exact)
    known = list_runs(project_root)
    matches = [folder for folder in known if folder.id.startswith(run_id)] if run_id else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(folder.id for folder in matches[:10])
        raise RunNotFound(f"{run_id!r} matches several runs ({names}); give more of the id.")
    raise RunNotFound(_not_found_message(run_id, project_root, known))


def _not_found_message(run_id: str, project_root: Path, known: list[RunFolder]) -> str:
    elsewhere = launched_from(run_id)
    if elsewhere is not None and Path(elsewhere) != project_root:
        return (
            f"run {run_id} was launched from another checkout, {elsewhere}; its record lives there. "
            f"Run this command from that folder (cd {elsewhere})."
        )
    if elsewhere is not None:
        return (
            f"run {run_id} was launched from this checkout, but its entry in {runs_dir(project_root)} "
            "has been deleted; its results are gone with it."
        )
    if not known:
        return f"no run {run_id!r}: no runs are recorded in {runs_dir(project_root)} yet."
    listing = ", ".join(folder.id for folder in known[:10])
    more = f" and {len(known) - 10} more (see `mini ls`)" if len(known) > 10 else ""
    return f"no run {run_id!r} in {runs_dir(project_root)}. Known runs, newest first: {listing}{more}."


# ----- where runs were launched, across checkouts ---------------------------------------------------
# A one-line-per-launch journal in the user's state folder, so that an id from another checkout gets a
# useful answer. Lines are appended with O_APPEND in one write, which concurrent launches cannot tear.


def _journal() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mini" / "launched-runs.jsonl"


def note_launch(run_id: str, project_root: Path) -> None:
    """Remember which checkout `run_id` was launched from (best effort: a read-only home is fine)."""
    line = json.dumps({"id": run_id, "project_root": str(project_root)}) + "\n"
    with contextlib.suppress(OSError):
        path = _journal()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(handle, line.encode())
        finally:
            os.close(handle)


def launched_from(run_id: str) -> str | None:
    """The checkout `run_id` was launched from, if this user launched it; None if unknown."""
    try:
        lines = _journal().read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("id") == run_id:
                return str(entry.get("project_root"))
    return None
