"""The progress of each map: its total when the inputs have a length, and counts told to listeners (what a
detached experiment records of the calls it makes), on every backend the `app` fixture gives."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
from pathlib import Path

import pytest

from mini import LocalApparatus
from mini.progress import Counts, Progress, listening
from tests.behaviour import calls

ROOT = Path(__file__).resolve().parents[1]


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


def shout(x: int) -> int:
    print(f"line from call {x}", flush=True)
    return x


def test_what_worker_processes_print_goes_through_this_processs_own_streams(capsys):
    # Where a progress bar (or a notebook) has taken sys.stdout over, the calls' lines must go there too,
    # each with the index of the call that printed it.
    with LocalApparatus("echo", workers=2, mode="process") as app:
        assert list(app.map(shout, range(3))) == [0, 1, 2]
    printed = capsys.readouterr().out
    assert {f"[{x}] line from call {x}" for x in range(3)} <= set(printed.splitlines())


EXPERIMENT = """
import time


def shout(x):
    print(f"line from call {x}", flush=True)
    time.sleep(0.05)
    return x


def main(app):
    return sum(app.map(shout, range(12)))
"""


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_the_lines_calls_print_appear_above_the_bar_on_a_terminal(tmp_path, mode):
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    screen = run_on_a_terminal([str(ROOT / "bin" / "mini"), "run", "exp.py", "--mode", mode], tmp_path)
    assert "66" in screen, screen
    colourless = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    lines = [line for line in re.split(r"[\r\n]", colourless) if "line from call" in line]
    assert len(lines) >= 12
    # Worker processes' lines carry the index of the call that printed them (thread mode's are the caller's
    # own prints).
    prefix = r"\[\d+\] " if mode == "process" else ""
    for line in lines:
        # Each starts a line of its own (rich erases the bar's line first); none follows the bar's text.
        assert re.fullmatch(rf"(\x1b\[2K)?{prefix}line from call \d+", line), repr(line)


def run_on_a_terminal(command: list[str], cwd: Path) -> str:
    """What `command` writes to a pseudo-terminal (stdout and stderr), 80 columns wide."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    process = subprocess.Popen(command, cwd=cwd, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 1 << 16)
        except OSError:  # the terminal closed: every process holding it has ended
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=120)
    os.close(controller)
    return output.decode(errors="replace")
