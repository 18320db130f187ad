"""Live reports: what `mini.report` costs the call that reports, and what receiving reports costs its caller.

The callee: one call runs `STEPS` steps of a fixed amount of Python work (`STEP_WORK` iterations: `step_us`
each, from the loop without reports) and reports after every step (`mini.report(step=i, loss=...)`),
against the same loop without reports; each is timed inside the call, so dispatch is not in it. The target
is at most 5 % slower; the per-report cost (`report_us`) says how that scales to other step sizes. Judged
on the CPU time of the call's process (the reporting thread's and the one that sends the reports), the two
loops back to back in each round, the median of the rounds' ratios (their range beside it): on a shared
machine wall times move with its load, and CPU times less. Wall times are given too.
Run in process mode, as a detached local call (its reports go to the run folder) and on Modal through
the emulator (its containers put them on the session's queue).

The caller: its CPU time (this process's, with the emulator in a process of its own) for a call that reports
`STEPS` times with nothing else to do, against one that does not report, with `on_report` counting what
arrives: reports (and the earlier ones each replaced, when they came faster than the transport carried
them).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.workloads import Sizes

STEPS = 10_000
STEP_WORK = 4000  # iterations of the loop body per step: about 100 µs of Python on this machine
TARGET = 1.05
ROUNDS = 5


def step(work: int) -> float:
    total = 0.0
    for i in range(work):
        total += i * 0.5
    return total


def training_loop(steps: int, work: int, report: bool) -> tuple[float, float]:
    """Seconds the loop took, measured inside the call: wall time, and the CPU time of the call's whole
    process (its own thread's and whatever thread sends its reports)."""
    import mini

    started, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        loss = step(work)
        if report:
            mini.report(step=i, loss=loss)
    return time.perf_counter() - started, time.process_time() - cpu


def run(sizes: Sizes) -> dict[str, Any]:
    """Per backend: the loop's seconds with and without reports and their ratio, the per-report cost in
    the callee, and the caller's CPU seconds for receiving the reports.

    >>> run(FULL)["backends"]["process"]["slowdown"]
    1.02
    """
    import cloudpickle

    from mini import LocalApparatus, ModalApparatus

    # The emulator's containers and detached calls cannot import this folder: the functions travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    steps = STEPS if sizes.map_items >= 10_000 else 1_000
    rounds = ROUNDS if steps == STEPS else 1
    backends: dict[str, Any] = {}
    with LocalApparatus("bench-reports", workers=1, mode="process") as app:
        backends["process"] = _measure(app, steps, rounds)
    backends["detached local"] = _detached(steps, rounds)
    with _emulator():
        app = ModalApparatus("bench-reports", max_containers=1)
        try:
            backends["modal (emulator)"] = _measure(app, steps, rounds)
        finally:
            app.close()
    # A step's cost, from the loop without reports in process mode (CPU time: load does not change it).
    step_us = backends["process"]["without_reports_cpu_s"] / steps * 1e6
    return {"steps": steps, "step_work": STEP_WORK, "step_us": step_us, "backends": backends}


def _measure(app: Any, steps: int, rounds: int) -> dict[str, Any]:
    received = [0, 0]  # reports, and earlier reports they replaced

    def count(report: Any) -> None:
        received[0] += 1
        received[1] += report.coalesced

    watched = app.w(on_report=count)
    watched.run(training_loop, 10, STEP_WORK, True)  # warm: a worker or container up, the function loaded
    quiet: list[tuple[float, float]] = []
    loud: list[tuple[float, float]] = []
    quiet_cpu: list[float] = []
    loud_cpu: list[float] = []
    last = [0, 0]
    for round_number in range(rounds):
        order = ((False, quiet, quiet_cpu), (True, loud, loud_cpu))
        for report, seconds, cpu in order if round_number % 2 else order[::-1]:
            before = list(received)
            cpu_before = time.process_time()
            seconds.append(watched.run(training_loop, steps, STEP_WORK, report))
            cpu.append(time.process_time() - cpu_before)
            if report:
                last = [received[0] - before[0], received[1] - before[1]]
    return _figures(quiet, loud, steps) | {
        "caller_cpu_s": statistics.median(loud_cpu) - statistics.median(quiet_cpu),
        "caller_cpu_quiet_s": statistics.median(quiet_cpu),
        "reports_received": last[0],  # by the last call that reported
        "reports_coalesced": last[1],
    }


def _detached(steps: int, rounds: int) -> dict[str, Any]:
    import tempfile

    from mini import LocalApparatus

    quiet: list[tuple[float, float]] = []
    loud: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder, _working_in(Path(folder)):
        with LocalApparatus("bench-reports", workers=1) as app:
            for _ in range(rounds):
                for report, seconds in ((False, quiet), (True, loud)):
                    job = app.spawn(training_loop, steps, STEP_WORK, report)
                    seconds.append(tuple(job.result(timeout=600)))
        kept = job.run.reports(0)
        return _figures(quiet, loud, steps) | {
            "reports_kept": len(kept),
            "reports_coalesced": sum(report.coalesced for report in kept),
            "events_file_kb": job.run.folder.events_path(0).stat().st_size / 1024,
        }


def _figures(quiet: list[tuple[float, float]], loud: list[tuple[float, float]], steps: int) -> dict[str, Any]:
    # Each round runs the two loops back to back: their ratio within a round moves less with the machine's
    # load than either does across rounds.
    pairs = [(without_cpu, with_cpu) for (_, without_cpu), (_, with_cpu) in zip(quiet, loud, strict=True)]
    ratios = [with_cpu / without_cpu for without_cpu, with_cpu in pairs]
    costs = [(with_cpu - without_cpu) / steps * 1e6 for without_cpu, with_cpu in pairs]
    slowdown = statistics.median(ratios)
    return {
        "without_reports_cpu_s": statistics.median(cpu for _, cpu in quiet),
        "with_reports_cpu_s": statistics.median(cpu for _, cpu in loud),
        "slowdown": slowdown,
        "slowdown_range": [min(ratios), max(ratios)],
        "report_us": statistics.median(costs),
        "met": slowdown <= TARGET,
        "without_reports_s": statistics.median(wall for wall, _ in quiet),
        "with_reports_s": statistics.median(wall for wall, _ in loud),
    }


@contextlib.contextmanager
def _working_in(folder: Path) -> Iterator[None]:
    """A throwaway project as the working directory, so that detached runs leave nothing in this one."""
    (folder / "pyproject.toml").write_text('[project]\nname = "bench-reports"\nversion = "0"\n')
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _emulator() -> Iterator[None]:
    """An emulator in a process of its own (its CPU is not the caller's), this process its client."""
    from tests.emulator.server import client_environment

    from bench.emulator import emulator_process

    with emulator_process() as (environment, _), client_environment(_client_variables(environment)):
        yield


def _client_variables(environment: dict[str, str]) -> dict[str, str]:
    names = ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH")
    return {name: environment[name] for name in names}
