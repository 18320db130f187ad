"""The Modal rows: `ModalApparatus`'s client-side cost per input, measured against the emulator.

The emulator serves in a thread of this process and runs its containers as subprocesses; everything else
in this process is the client. So the client's cost is separated from the server's and the workers' by CPU
time: the process's CPU seconds minus the emulator thread's, per input, split into mini's share (its loop
thread) and the rest (modal's client, in its own thread, and the caller). The call itself is `abs` on a
small int (a builtin, so it needs nothing shipped), which takes no time. Wall time per input is given too;
it includes the emulator's and the containers' work.

RPCs are counted by the emulator's recorder; bytes sent are the serialized size of every gRPC message the
client sends (requests and their input payloads), counted in the client's gRPC library.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import clock, median
from bench.workloads import Sizes

MAP_INPUTS = 1_000
QUICK_MAP_INPUTS = 50
RUN_CALLS = 20
# RPCs a running app makes on its own schedule, whatever the calls do.
_BACKGROUND = {"AppHeartbeat", "AppGetLogs"}


def run(sizes: Sizes) -> dict[str, Any]:
    """Map and run overhead of `ModalApparatus` on the emulator.

    >>> run(FULL)["map"]["rpcs_per_input"]
    0.125
    """
    from tests.emulator.server import run_emulator

    from mini import ModalApparatus

    quick = sizes.map_items < 10_000
    inputs = QUICK_MAP_INPUTS if quick else MAP_INPUTS
    calls = 3 if quick else RUN_CALLS
    with run_emulator() as emulator, emulator.client_environment():
        app = ModalApparatus("bench-modal", max_containers=2)
        try:
            started = time.perf_counter()
            app.run(abs, -1)  # image, app and containers: the cold start, not measured below
            cold_seconds = time.perf_counter() - started
            list(app.map(abs, range(-20, 0)))  # both containers warm
            server = emulator._thread
            assert server is not None and server.native_id is not None
            return {
                "cold_start_s": cold_seconds,
                "map": _map_overhead(app, emulator.recorder, server.native_id, inputs),
                "run": _run_latency(app, emulator.recorder, calls),
            }
        finally:
            app.close()


def _map_overhead(app: Any, recorder: Any, server_tid: int, inputs: int) -> dict[str, Any]:
    items = range(-inputs, 0)
    with recorder.counting() as rpcs, _bytes_sent() as sent, _client_cpu(server_tid) as cpu:
        started = time.perf_counter()
        results = list(app.map(abs, items))
        wall = time.perf_counter() - started
    if results != [abs(item) for item in items]:
        raise AssertionError("ModalApparatus.map returned wrong results; its timings would be meaningless")
    counts = {name: count for name, count in sorted(rpcs.items()) if name not in _BACKGROUND}
    return {
        "inputs": inputs,
        "rpcs": counts,
        "rpcs_per_input": sum(counts.values()) / inputs,
        "bytes_sent_per_input": sent["bytes"] / inputs,
        "client_cpu_us_per_input": cpu["client"] / inputs * 1e6,
        "mini_loop_cpu_us_per_input": cpu["mini"] / inputs * 1e6,
        "wall_us_per_input": wall / inputs * 1e6,
        "wall_s": wall,
    }


def _run_latency(app: Any, recorder: Any, calls: int) -> dict[str, Any]:
    with recorder.counting() as rpcs:
        samples = [clock(lambda: app.run(abs, -1)) for _ in range(calls)]
    return {
        "calls": calls,
        "latency_ms_median": median(samples) * 1e3,
        "latency_ms_min": min(samples) * 1e3,
        "rpcs_per_call": sum(count for name, count in rpcs.items() if name not in _BACKGROUND) / calls,
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
