"""The Modal part of the results: issue 19's Modal targets judged against raw modal measured in the same run,
and the tables beside them (`bench.modal_overhead`, `bench.modal_memory`, `bench.modal_status`).

>>> rows = targets(results)              # each {"target", "goal", "measured", "met", "factor", "section"}
>>> lines = markdown(results)            # the "Modal" section of results.md
"""

from __future__ import annotations

from typing import Any

MINI, RAW = "mini", "raw modal"
SECTION = "modal"
SECTIONS = ("modal", "modal_memory", "modal_status")  # the results sections shown here
_LOOKS = ("running", "finished, first look", "again")

# Why a target is missed, from the profiles taken when it was (see bench/README.md for how to take one).
WHY = {
    "that have all just finished": (
        "Modal gives a function call's result only through FunctionGetOutputs on that call, so a look that "
        "finds 10,000 calls newly finished makes 10,000 of them (64 at once) and stores each outcome in two "
        "files of the run folder (two syncs to disk for the whole batch). In the profile of such a look, "
        "creating those 20,000 files takes about half the time (0.4-0.5 ms per file on this machine's "
        "disk) and waiting for the fetches, which the emulator in the benchmark's process serves on the "
        "same two cores, most of the rest. Every later look, and every look while calls run, asks nothing "
        "per call; `mini watch` fetches each call's result as it finishes, so only a run nobody looked at "
        "pays this, once."
    ),
}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 19's Modal targets, each measured against raw modal in the same run where it has a peer."""
    rows: list[dict[str, Any]] = []
    modal = results.get("modal")
    if modal and RAW in modal.get("map", {}):
        mapped, run = modal["map"], modal["run"]
        n = f"{mapped['inputs']:,}-input map"
        for key, what, goal in (
            ("client_cpu_us_per_input", "client CPU per input", 0.9),
            ("rpcs_per_input", "RPCs per input", 1.0),
            ("bytes_sent_per_input", "bytes sent per input", 1.0),
        ):
            rows.append(_at_most(f"{n}: {what} vs raw modal's", mapped[MINI][key], mapped[RAW][key], goal))
        rows.append(
            _at_most(
                "warm `run` latency vs `f.remote`",
                run[MINI]["latency_ms_median"],
                run[RAW]["latency_ms_median"],
                1.2,
            )
        )
        calls = run[MINI]["rpcs_per_call"]
        rows.append(_row("warm `run`: RPCs per call", "2", f"{calls:.2f}", calls <= 2.0, 2.0 / calls))
    memory = results.get("modal_memory")
    if memory:
        ours, theirs = memory[MINI], memory[RAW]
        rows.append(
            _row(
                f"client memory over a {ours['inputs']:,}-input generator",
                "flat (≤ +10 MB)",
                f"{ours['growth_mb']:+.1f} MB (raw modal {theirs['growth_mb']:+.1f} MB)",
                ours["flat"],
                None,
            )
        )
    status = results.get("modal_status")
    if status:
        goal = status["goal_s"]
        for look, what in (
            ("running", "while they are queued or running"),
            ("finished, first look", "that have all just finished"),
            ("again", "again, all settled"),
        ):
            seconds = status["looks"][look]["seconds"]
            rows.append(
                _row(
                    f"status: a look at {status['calls']:,} calls {what}",
                    f"≤ {goal:g} s",
                    f"{seconds:.2f} s",
                    seconds <= goal,
                    goal / seconds,
                )
            )
    return rows


def markdown(results: dict[str, Any]) -> list[str]:
    """The Modal section: the targets, then each table, with the load each part ran under."""
    if not any(name in results for name in SECTIONS):
        return []
    sections = results.get("meta", {}).get("sections", {})
    lines = ["## Modal: mini against raw modal (issue 19), on the emulator", ""]
    rows = [row for row in results.get("targets", []) if row.get("section") == SECTION]
    if rows:
        lines += ["| target | goal | measured | result |", "|---|---|---|---|"]
        for row in rows:
            verdict = "met" if row["met"] else "**missed**"
            if row["factor"] is not None:
                verdict += f" ({row['factor']:.2f}× the goal)"
            lines.append(f"| {row['target']} | {row['goal']} | {row['measured']} | {verdict} |")
        lines.append("")
        missed = [
            (row["target"], why)
            for row in rows
            if not row["met"]
            for key, why in WHY.items()
            if key in row["target"]
        ]
        if missed:
            lines += ["Where a target was missed, why:", ""]
            lines += [f"- {target}: {why}" for target, why in missed]
            lines.append("")
    if "modal" in results:
        lines += _overhead_table(results["modal"], _load(sections, "modal"))
    if "modal_memory" in results:
        lines += _memory_table(results["modal_memory"], _load(sections, "modal_memory"))
    if "modal_status" in results:
        lines += _status_table(results["modal_status"], _load(sections, "modal_status"))
    return lines


def _overhead_table(modal: dict[str, Any], load: str) -> list[str]:
    mapped, run = modal["map"], modal["run"]
    if RAW not in mapped:
        return []
    m, r = mapped[MINI], mapped[RAW]
    lines = [
        f"### Client cost per input and per call (warm apps, two containers each{load})",
        "",
        f"| figure | {MINI} | {RAW} | mini ÷ raw |",
        "|---|---|---|---|",
    ]
    for label, key, unit in (
        ("client CPU per input (all but the emulator)", "client_cpu_us_per_input", "µs"),
        ("RPCs per input", "rpcs_per_input", ""),
        ("bytes sent per input (gRPC messages)", "bytes_sent_per_input", "B"),
        ("wall time per input (with emulator and containers)", "wall_us_per_input", "µs"),
    ):
        lines.append(
            f"| map of {mapped['inputs']:,}: {label} | {_figure(m[key], unit)} | {_figure(r[key], unit)} | "
            f"{m[key] / r[key]:.2f}× |"
        )
    lines.append(f"| ↳ of which mini's loop thread | {_figure(m['mini_loop_cpu_us_per_input'], 'µs')} | | |")
    lines.append(f"| ↳ RPCs of the median round | {_rpcs(m['rpcs'])} | {_rpcs(r['rpcs'])} | |")
    rm, rr = run[MINI], run[RAW]
    lines.append(
        f"| run / `f.remote`, warm: latency (median of {run['calls']}) | {rm['latency_ms_median']:.2f} ms | "
        f"{rr['latency_ms_median']:.2f} ms | {rm['latency_ms_median'] / rr['latency_ms_median']:.2f}× |"
    )
    lines.append(
        f"| ↳ RPCs per call | {rm['rpcs_per_call']:.2f} ({_rpcs(rm['rpcs'])}) | "
        f"{rr['rpcs_per_call']:.2f} ({_rpcs(rr['rpcs'])}) | |"
    )
    lines.append(
        f"| mini's first call (image, app, containers; environment cached) | {modal['cold_start_s']:.2f} s "
        "| | |"
    )
    note = (
        "Medians over interleaved rounds in one process against one emulator, which serves from a thread of "
        "that process and runs containers as subprocesses: client CPU is the process's CPU time less that "
        "thread's, so neither the emulator's nor the containers' work is in it. Heartbeats and log polling "
        "are left out of the RPC counts; a map's closing acknowledgement is in them."
    )
    return [*lines, "", note, ""]


def _memory_table(memory: dict[str, Any], load: str) -> list[str]:
    lines = [
        f"### Client memory over a generator of small inputs (the emulator in its own process{load})",
        "",
        "| subject | inputs | results read | peak RSS after a warm-up map | peak RSS at the end | growth "
        "| items/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for subject, f in memory.items():
        lines.append(
            f"| {subject} | {f['inputs']:,} | {f['results_read']:,} | {f['peak_after_warmup_mb']:.1f} MB "
            f"(after {f['warmup']:,}) | {f['peak_mb']:.1f} MB | {f['growth_mb']:+.1f} MB | "
            f"{f['items_per_s']:,.0f} |"
        )
    note = (
        "Raw modal reads its input iterator ahead without bound; its map is stopped once it has read the "
        "whole generator, when its read-ahead is at its largest. mini keeps a bounded number of inputs in "
        "flight and runs to its last result."
    )
    return [*lines, "", note, ""]


def _status_table(status: dict[str, Any], load: str) -> list[str]:
    lines = [
        f"### `mini status` of a detached run of {status['calls']:,} calls (two containers{load})",
        "",
        "| look | seconds | RPCs | first line |",
        "|---|---|---|---|",
    ]
    for look in _LOOKS:
        figures = status["looks"][look]
        lines.append(
            f"| {look} | {figures['seconds']:.2f} | {_rpcs(figures['rpcs']) or 'none'} "
            f"| {figures['summary']} |"
        )
    note = (
        f"Each look is `mini status RUN` in a fresh process (its imports included). Spawning the run took "
        f"{status['spawn_s']:.1f} s; its calls then finished in {status['finish_s']:.1f} s."
    )
    return [*lines, "", note, ""]


def _at_most(target: str, ours: float, theirs: float, goal: float) -> dict[str, Any]:
    ratio = ours / theirs
    measured = f"{ratio:.2f}× ({_short(ours)} vs {_short(theirs)})"
    return _row(target, f"≤ {goal:g}×", measured, ratio <= goal, goal / ratio)


def _row(target: str, goal: str, measured: str, met: bool, factor: float | None) -> dict[str, Any]:
    return {
        "target": target,
        "goal": goal,
        "measured": measured,
        "met": met,
        "factor": factor,
        "section": SECTION,
    }


def _load(sections: dict[str, Any], name: str) -> str:
    when = sections.get(name)
    return f"; load average {when['load_before']} → {when['load_after']}" if when else ""


def _rpcs(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _figure(value: float, unit: str) -> str:
    text = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def _short(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
