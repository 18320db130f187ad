"""The Modal rows: `ModalApparatus`'s client-side cost per input beside raw modal's, on the emulator.

Both run in the same process against the same emulator, in interleaved rounds: mini's `app.map(abs, xs)`
and `app.run(abs, x)`, and a plain modal function (`serialized=True`, `abs` of its argument) called with
`f.map(xs)` and `f.remote(x)`, each with two containers. The emulator serves in a thread of this process
and runs its containers as subprocesses; everything else in this process is the client. So the client's
cost is separated from the server's and the workers' by CPU time: the process's CPU seconds minus the
emulator thread's, per input (for mini also its loop thread's share). Wall time per input is given too; it
includes the emulator's and the containers' work.

RPCs are counted by the emulator's recorder (a map's every RPC, its closing acknowledgement included);
bytes sent are the serialized size of every gRPC message the client sends, counted in the client's gRPC
library.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.harness import clock
from bench.workloads import Sizes

MAP_INPUTS = 5_000
QUICK_MAP_INPUTS = 50
MAP_ROUNDS = 3
RUN_CALLS = 40
MINI, RAW = "mini", "raw modal"
# RPCs a running app makes on its own schedule, whatever the calls do.
_BACKGROUND = {"AppHeartbeat", "AppGetLogs"}


def run(sizes: Sizes) -> dict[str, Any]:
    """Map and run overhead of `ModalApparatus` and of raw modal on the emulator, keyed by subject.

    >>> run(FULL)["map"]["mini"]["rpcs_per_input"]
    0.21
    """
    import modal
    from tests.emulator.server import run_emulator

    from mini import ModalApparatus

    quick = sizes.map_items < 10_000
    inputs = QUICK_MAP_INPUTS if quick else MAP_INPUTS
    rounds = 1 if quick else MAP_ROUNDS
    calls = 3 if quick else RUN_CALLS
    with run_emulator() as emulator, emulator.client_environment():
        app = ModalApparatus("bench-modal", max_containers=2)
        raw_app = modal.App("bench-raw-modal")
        raw = raw_app.function(serialized=True, image=modal.Image.debian_slim(), max_containers=2)(_trivial())
        try:
            with raw_app.run():
                started = time.perf_counter()
                app.run(abs, -1)  # image, app and containers: the cold start, not measured below
                cold_seconds = time.perf_counter() - started
                raw.remote(-1)
                list(app.map(abs, range(-20, 0)))  # both containers of each warm
                list(raw.map(range(-20, 0)))
                server = emulator._thread
                assert server is not None and server.native_id is not None
                maps: dict[str, Callable[[range], list[int]]] = {
                    MINI: lambda items: _settled(list(app.map(abs, items))),
                    RAW: lambda items: list(raw.map(items)),
                }
                runs: dict[str, Callable[[], int]] = {
                    MINI: lambda: app.run(abs, -1),
                    RAW: lambda: raw.remote(-1),
                }
                return {
                    "cold_start_s": cold_seconds,
                    "map": _map_overhead(maps, emulator.recorder, server.native_id, inputs, rounds),
                    "run": _run_latency(runs, emulator.recorder, calls),
                }
        finally:
            app.close()


def _trivial() -> Callable[[int], int]:
    # Defined in a function so that modal pickles it by value: the bench package is not in the image.
    def trivial(x: int) -> int:
        return abs(x)

    return trivial


def _settled(results: list[int]) -> list[int]:
    """`results`, once mini's map has nothing left on modal's loop (its last acknowledgement is sent after
    the map returns), so that its RPCs and CPU time are all counted in its own round."""
    from mini.modal_backend._invocation import client_loop

    async def busy() -> bool:
        current = asyncio.current_task()
        names = [
            getattr(task.get_coro(), "__qualname__", "")
            for task in asyncio.all_tasks()
            if task is not current
        ]
        return any(name.startswith(("MapInvocation.", "_EventReader.")) for name in names)

    deadline = time.monotonic() + 30
    while asyncio.run_coroutine_threadsafe(busy(), client_loop()).result() and time.monotonic() < deadline:
        time.sleep(0.001)
    return results


def _map_overhead(
    maps: dict[str, Callable[[range], list[int]]], recorder: Any, server_tid: int, inputs: int, rounds: int
) -> dict[str, Any]:
    """Per subject: the median over `rounds` interleaved rounds of each figure of an `inputs`-input map."""
    items = range(-inputs, 0)
    expected = [abs(item) for item in items]
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in maps}
    for _ in range(rounds):
        for name, mapped in maps.items():
            with recorder.counting() as rpcs, _bytes_sent() as sent, _client_cpu(server_tid) as cpu:
                started = time.perf_counter()
                results = mapped(items)
                wall = time.perf_counter() - started
            if results != expected:
                raise AssertionError(f"{name}'s map returned wrong results; its timings would be meaningless")
            counts = {rpc: count for rpc, count in sorted(rpcs.items()) if rpc not in _BACKGROUND}
            samples[name].append(
                {
                    "rpcs": counts,
                    "rpcs_per_input": sum(counts.values()) / inputs,
                    "bytes_sent_per_input": sent["bytes"] / inputs,
                    "client_cpu_us_per_input": cpu["client"] / inputs * 1e6,
                    "mini_loop_cpu_us_per_input": cpu["mini"] / inputs * 1e6,
                    "wall_us_per_input": wall / inputs * 1e6,
                }
            )
    return {"inputs": inputs, "rounds": rounds, **{name: _medians(rows) for name, rows in samples.items()}}


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    figures: dict[str, Any] = {
        key: statistics.median(row[key] for row in rows) for key in rows[0] if key != "rpcs"
    }
    # The RPCs of the round whose count per input is the median one.
    figures["rpcs"] = sorted(rows, key=lambda row: row["rpcs_per_input"])[len(rows) // 2]["rpcs"]
    return figures


def _run_latency(runs: dict[str, Callable[[], int]], recorder: Any, calls: int) -> dict[str, Any]:
    """Per subject: warm single-call latency, one call of each in turn, and RPCs per call."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    rpcs: dict[str, Counter[str]] = {name: Counter() for name in runs}
    for _ in range(calls):
        for name, call in runs.items():
            with recorder.counting() as counted:
                samples[name].append(clock(call))
            rpcs[name].update({rpc: n for rpc, n in counted.items() if rpc not in _BACKGROUND})
    return {
        "calls": calls,
        **{
            name: {
                "latency_ms_median": statistics.median(samples[name]) * 1e3,
                "latency_ms_min": min(samples[name]) * 1e3,
                "rpcs_per_call": sum(rpcs[name].values()) / calls,
                "rpcs": dict(sorted(rpcs[name].items())),
            }
            for name in runs
        },
    }


@contextlib.contextmanager
def _client_cpu(server_tid: int) -> Iterator[dict[str, float]]:
    """CPU seconds this process spent in the block less the emulator's thread (`client`), and of that,
    mini's loop thread (`mini`)."""
    mini_tid = next(t.native_id for t in threading.enumerate() if t.name == "mini-loop")
    assert mini_tid is not None
    figures = {"client": 0.0, "mini": 0.0}
    process, server, mini = time.process_time(), _thread_cpu(server_tid), _thread_cpu(mini_tid)
    try:
        yield figures
    finally:
        server = _thread_cpu(server_tid) - server
        figures["client"] = time.process_time() - process - server
        figures["mini"] = _thread_cpu(mini_tid) - mini


def _thread_cpu(tid: int) -> float:
    # utime and stime, fields 14 and 15 of /proc/<pid>/task/<tid>/stat (after the parenthesised name).
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _bytes_sent() -> Iterator[Counter[str]]:
    """Serialized bytes of every gRPC message the client sends in the block."""
    from grpclib.client import Stream

    sent: Counter[str] = Counter()
    original = Stream.send_message

    async def counted(self: Stream, message: Any, **kwargs: Any) -> None:
        sent["bytes"] += message.ByteSize()
        await original(self, message, **kwargs)

    Stream.send_message = counted  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        Stream.send_message = original  # type: ignore[method-assign]
