"""Judging and writing the results: issue 8's targets as met/missed, `results.json` and `results.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import modal_report

MINI = ("mini thread", "mini process")
COMPETITORS = ("ThreadPool(2)", "ProcessPool(2)", "joblib loky(2)")
_COLUMNS = (*MINI, "mini isolated", *COMPETITORS, "serial")
PROCESS_PEERS = ("ProcessPool(2)", "joblib loky(2)")
_BUSY = (
    " Other processes held the CPU during this run (two free cores would give every process pool close to "
    "2×), so the speedups in (c) say little; rerun on a quiet machine."
)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's targets, each with the goal, the measured figure, `met`, and the factor against the goal
    (above 1 means that much better than needed, below 1 that much short of it).

    >>> targets(results)[0]
    {'target': '(a) process-mode latency vs ProcessPool', 'goal': '≤ 1.2×', 'measured': '3.10×', ...}
    """
    rows: list[dict[str, Any]] = []
    local = results.get("local")
    if local:
        latency = local["one_call"]["values"]
        rows.append(
            _at_most(
                "(a) process-mode latency vs ProcessPool", latency, "mini process", "ProcessPool(2)", 1.2
            )
        )
        rows.append(
            _at_most("(a) thread-mode latency vs ThreadPool", latency, "mini thread", "ThreadPool(2)", 1.5)
        )
        throughput = local["map_trivial"]["values"]
        rows.append(_at_least("(b) process-mode map throughput vs joblib", throughput, "joblib loky(2)", 1.0))
        rows.append(
            _at_least("(b) process-mode map throughput vs ProcessPool", throughput, "ProcessPool(2)", 30.0)
        )
        speedup = local["gil_bound"]["values"]["mini process"]
        rows.append(_row("(c) process-mode speedup, 2 workers", "≥ 1.85×", f"{speedup:.2f}×", speedup / 1.85))
        for key, what in (("array_argument", "argument"), ("array_result", "result")):
            rate = local[key]["gb_per_s"]["mini process"]
            size = f"{local[key]['bytes'] / 1e6:g} MB"
            rows.append(_row(f"(d) process-mode {size} array {what}", "≥ 1 GB/s", f"{rate:.2f} GB/s", rate))
    if local:
        rows += _issue_19(local)
    closures = results.get("closures")
    if closures:
        for mode in MINI:
            failures = [f"{kind}: {outcome}" for kind, outcome in closures[mode].items() if outcome != "ok"]
            measured = "; ".join(failures) or "lambda and closure ok"
            rows.append(
                {
                    "target": f"(e) `__main__` lambda and closure, {mode}",
                    "goal": "work",
                    "measured": measured,
                    "met": not failures,
                    "factor": None,
                }
            )
    cached = results.get("cache")
    if cached:
        rate, ratio, items = cached["cached_items_per_s"], cached["miss_ratio"], cached["items"]
        rows.append(
            _row(
                f"(cache) fully cached map of {items:,} trivial calls",
                "≥ 20,000 items/s",
                f"{rate:,.0f} items/s",
                rate / 20_000,
            )
        )
        rows.append(
            _row(
                f"(cache) a miss on a process-mode map of {items:,} trivial calls",
                "≤ 1.1×",
                f"{ratio:.3f}×",
                1.1 / ratio,
            )
        )
    memory = results.get("memory")
    if memory:
        for mode, figures in memory.items():
            growth = figures["growth_mb"]
            rows.append(
                {
                    "target": f"memory: {figures['inputs']:,}-input map, {mode} mode",
                    "goal": "flat peak RSS",
                    "measured": f"+{growth:.1f} MB after the first {figures['checkpoint']:,}",
                    "met": figures["flat"],
                    "factor": None,
                }
            )
    volumes = results.get("volumes")
    if volumes:
        for backend, figures in volumes.items():
            rows.append(
                {
                    "target": f"volumes: {figures['file_mb']} MiB upload and download, {backend}",
                    "goal": "flat peak RSS",
                    "measured": f"+{figures['growth_mb']:.1f} MB over a {figures['baseline_mb']} MiB file's",
                    "met": figures["flat"],
                    "factor": None,
                }
            )
    for backend, figures in results.get("execution_models", {}).items():
        batching, concurrency = figures["batching"], figures["concurrency"]
        rows.append(
            _row(
                f"batching: {batching['inputs']:,} inputs, max_batch_size={batching['max_batch_size']}, "
                f"{batching['invocation_ms']:g} ms per invocation, {backend}",
                "≥ 10× unbatched",
                f"{batching['speedup']:.1f}× "
                f"({batching['unbatched_s']:.2f} s → {batching['batched_s']:.2f} s)",
                batching["speedup"] / 10,
            )
        )
        rows.append(
            _row(
                f"concurrency: {concurrency['calls']} × {concurrency['wait_ms']:g} ms on one worker, "
                f"concurrent_inputs={concurrency['concurrent_inputs']}, {backend}",
                f"≤ 5× {concurrency['ideal_s']:g} s",
                f"{concurrency['seconds']:.2f} s ({concurrency['times_ideal']:.1f}× ideal)",
                5 / concurrency["times_ideal"],
            )
        )
    rows += modal_report.targets(results)
    reports = results.get("reports")
    if reports:
        for backend, figures in reports["backends"].items():
            rows.append(
                _row(
                    f"reports: {reports['steps']:,} in a loop of {reports['step_us']:.0f} µs steps, "
                    f"{backend}",
                    "≤ 1.05× without",
                    f"{figures['slowdown']:.3f}× ({figures['report_us']:.1f} µs a report; rounds "
                    f"{figures['slowdown_range'][0]:.3f}–{figures['slowdown_range'][1]:.3f}×)",
                    1.05 / figures["slowdown"],
                )
            )
    return rows


def _issue_19(local: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 19's local targets, each against the best peer measured in the same run (rows whose runners
    were not measured are left out)."""
    rows: list[dict[str, Any]] = []
    latency = local["one_call"]["values"]
    peers = [name for name in PROCESS_PEERS if name in latency]
    if "mini process" in latency and peers:
        best = min(peers, key=lambda name: latency[name])
        rows.append(_against("(19) process-mode latency, one call", latency, "mini process", best, 1.0, "≤"))
    if {"mini thread", "ThreadPool(2)"} <= set(latency):
        rows.append(
            _against("(19) thread-mode latency, one call", latency, "mini thread", "ThreadPool(2)", 1.3, "≤")
        )
    throughput = local["map_trivial"]["values"]
    peers = [name for name in PROCESS_PEERS if name in throughput]
    if "mini process" in throughput and peers:
        best = max(peers, key=lambda name: throughput[name])
        title = local["map_trivial"].get("title", "b) map of trivial calls").removeprefix("b) ")
        rows.append(_against(f"(19) process-mode {title}", throughput, "mini process", best, 1.5, "≥"))
    for mode in ("process", "isolated"):
        for key, what in (("array_argument", "argument"), ("array_result", "result")):
            rates = local[key]["gb_per_s"]
            rate = rates.get(f"mini {mode}")
            if rate is None:
                continue
            shown = ", ".join(f"{name} {rates[name]:.2f}" for name in PROCESS_PEERS if name in rates)
            size = f"{local[key]['bytes'] / 1e6:g} MB"
            measured = f"{rate:.2f} GB/s" + (f" ({shown} GB/s)" if shown else "")
            rows.append(_row(f"(19) {mode}-mode {size} array {what}", "≥ 5 GB/s", measured, rate / 5))
    return rows


def _against(
    target: str, values: dict[str, float], ours: str, theirs: str, goal: float, sense: str
) -> dict[str, Any]:
    ratio = values[ours] / values[theirs]
    unit = "µs" if sense == "≤" else "items/s"
    measured = f"{ratio:.2f}× ({ours} {_number(values[ours])}, {theirs} {_number(values[theirs])} {unit})"
    factor = goal / ratio if sense == "≤" else ratio / goal
    return _row(f"{target} vs the best peer", f"{sense} {goal:g}×", measured, factor)


def _at_most(target: str, values: dict[str, float], ours: str, theirs: str, goal: float) -> dict[str, Any]:
    ratio = values[ours] / values[theirs]
    return _row(target, f"≤ {goal:g}×", f"{ratio:.2f}×", goal / ratio)


def _at_least(target: str, values: dict[str, float], theirs: str, goal: float) -> dict[str, Any]:
    ratio = values["mini process"] / values[theirs]
    return _row(target, f"≥ {goal:g}×", f"{ratio:.2f}×", ratio / goal)


def _row(target: str, goal: str, measured: str, factor: float) -> dict[str, Any]:
    return {"target": target, "goal": goal, "measured": measured, "met": factor >= 1.0, "factor": factor}


def write(results: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write `results.json` and `results.md` into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    as_json = folder / "results.json"
    as_markdown = folder / "results.md"
    as_json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    as_markdown.write_text(markdown(results))
    return as_json, as_markdown


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables, for humans and the closing note."""
    meta = results["meta"]
    quick = ", **quick smoke run: figures are meaningless**" if meta["quick"] else ""
    lines = [
        "# mini benchmarks",
        "",
        f"{meta['date']}, mini {meta['mini_commit']}, Python {meta['python']}, {meta['cpus']} CPUs "
        f"(load average {meta['load_before']} before, {meta['load_after']} after), "
        f"{meta['seconds']:.0f} s in all{quick}. "
        "Medians of interleaved rounds: compare ratios within this run, not absolute times across runs."
        + (
            " Sections can be re-run alone: the last table says when each was measured."
            if meta.get("sections")
            else ""
        ),
        "",
    ]
    if "local" in results:
        lines += _local_tables(results["local"], results.get("closures"))
    if "targets" in results:
        lines += [
            "## Targets (issue 8: LocalApparatus, 2 workers; issue 16: the result cache; "
            "issue 19: local speed)",
            "",
        ]
        lines += ["| target | goal | measured | result |", "|---|---|---|---|"]
        for row in [row for row in results["targets"] if not row.get("section")]:
            verdict = "met" if row["met"] else "**missed**"
            if row["factor"] is not None:
                verdict += f" ({row['factor']:.2f}× the goal)"
            lines.append(f"| {row['target']} | {row['goal']} | {row['measured']} | {verdict} |")
        lines.append("")
        lines += _why_missed([row for row in results["targets"] if not row.get("section")])
    if "memory" in results:
        lines += _memory_table(results["memory"])
    lines += modal_report.markdown(results)
    if "execution_models" in results:
        lines += _execution_models_table(results["execution_models"])
    if "cache" in results:
        lines += _cache_table(results["cache"])
    if "reports" in results:
        lines += _reports_table(results["reports"])
    known = {
        "meta",
        "local",
        "closures",
        "targets",
        "memory",
        "execution_models",
        "cache",
        *modal_report.SECTIONS,
        "reports",
    }
    for section, figures in results.items():
        if section not in known:
            lines += [f"## {section}", ""] + [f"- {key}: {value}" for key, value in figures.items()] + [""]
    lines += [
        "dask and ray are not dependencies of this project, so their columns from the issue are left out.",
        "",
    ]
    lines += _when_measured(meta.get("sections", {}))
    return "\n".join(lines)


def _execution_models_table(figures: dict[str, Any]) -> list[str]:
    lines = ["## Execution models: batching and input concurrency", ""]
    lines += [
        "| backend | map | unbatched | max_batch_size=100 | speedup |",
        "|---|---|---|---|---|",
    ]
    for backend, f in figures.items():
        b = f["batching"]
        lines.append(
            f"| {backend} | {b['inputs']:,} inputs, {b['invocation_ms']:g} ms per invocation | "
            f"{b['unbatched_s']:.2f} s | {b['batched_s']:.2f} s | {b['speedup']:.1f}× |"
        )
        lines.append(
            f"| {backend} | {b['inputs']:,} inputs, a function that costs nothing | "
            f"{b['trivial_unbatched_s']:.2f} s | {b['trivial_batched_s']:.2f} s | "
            f"{b['trivial_speedup']:.1f}× |"
        )
    lines += [
        "",
        "| backend | calls on one worker | concurrent_inputs | seconds | × ideal |",
        "|---|---|---|---|---|",
    ]
    for backend, f in figures.items():
        c = f["concurrency"]
        lines.append(
            f"| {backend} | {c['calls']} × {c['wait_ms']:g} ms | {c['concurrent_inputs']} | "
            f"{c['seconds']:.2f} | {c['times_ideal']:.1f}× |"
        )
    return [*lines, ""]


def _reports_table(figures: dict[str, Any]) -> list[str]:
    lines = ["## Live reports: the reporting call and its caller", ""]
    lines += [
        f"One call of {figures['steps']:,} steps of {figures['step_us']:.0f} µs of Python each, timed inside "
        "the call; with reports, `mini.report(step=i, loss=...)` after every step. Judged on the CPU time "
        "of the call's process (the loop's thread and the one sending its reports), which other processes' "
        "load leaves alone; wall times beside it. Caller CPU: this process's, less the same call without "
        "reports (the emulator runs in a process of its own).",
        "",
        "| backend | CPU without reports | CPU with reports | slower | per report | wall without → with | "
        "caller CPU | reports arrived (+ coalesced) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, f in figures["backends"].items():
        if "caller_cpu_s" in f:
            caller = f"{f['caller_cpu_s'] * 1000:.0f} ms"
            arrived = f"{f['reports_received']:,} (+{f['reports_coalesced']:,})"
        else:
            caller = "(none: kept in the run folder)"
            arrived = (
                f"{f['reports_kept']:,} kept (+{f['reports_coalesced']:,}), {f['events_file_kb']:.0f} KiB"
            )
        lines.append(
            f"| {backend} | {f['without_reports_cpu_s']:.3f} s | {f['with_reports_cpu_s']:.3f} s | "
            f"{(f['slowdown'] - 1) * 100:+.1f} % | {f['report_us']:.1f} µs | "
            f"{f['without_reports_s']:.3f} s → {f['with_reports_s']:.3f} s | {caller} | {arrived} |"
        )
    return [*lines, ""]


def _when_measured(sections: dict[str, Any]) -> list[str]:
    """Sections can be re-run alone (`--only`): when each one ran, at which commit, under which load."""
    if not sections:
        return []
    lines = ["## When each section was measured", ""]
    lines += ["| section | date | commit | load average before → after | seconds |", "|---|---|---|---|---|"]
    for name, when in sections.items():
        lines.append(
            f"| {name} | {when['date']} | {when['mini_commit']} | {when['load_before']} → "
            f"{when['load_after']} | {when['seconds']:.0f} |"
        )
    return [*lines, ""]


def _local_tables(local: dict[str, Any], closures: dict[str, Any] | None) -> list[str]:
    lines = ["## Local backend, 2 workers each", ""]
    lines += ["| workload | unit | " + " | ".join(_COLUMNS) + " |", "|---|---|" + "---|" * len(_COLUMNS)]
    for figures in local.values():
        cells = [_number(figures["values"].get(name)) for name in _COLUMNS]
        lines.append(f"| {figures['title']} | {figures['unit']} | " + " | ".join(cells) + " |")
        if "gb_per_s" in figures:
            cells = [_number(figures["gb_per_s"].get(name)) for name in _COLUMNS]
            lines.append("| ↳ as throughput | GB/s | " + " | ".join(cells) + " |")
    if closures:
        cells = [
            ("ok" if set(closures[n].values()) == {"ok"} else "fails") if n in closures else ""
            for n in _COLUMNS
        ]
        lines.append("| e) lambda / closure defined in `__main__` | | " + " | ".join(cells) + " |")
    gil = local["gil_bound"]
    work, serial, best = gil["calibrated_seconds"], gil["serial_seconds"], max(gil["values"].values())
    lines += [
        "",
        f"(c) ran {work:.2f} s of calibrated work in {serial:.2f} s serially; the best runner's speedup ",
    ]
    lines[-1] += f"was {best:.2f}×." + (_BUSY if work / serial < 0.9 or best < 1.7 else "")
    lines += ["The serial rows of (d) are the work alone (summing, allocating), without transport.", ""]
    lines += ["## mini against each competitor (above 1×: mini is better)", ""]
    lines += [
        "| workload | mode | " + " | ".join(COMPETITORS) + " |",
        "|---|---|" + "---|" * len(COMPETITORS),
    ]
    for figures in local.values():
        values = figures["values"]
        for mode in (*MINI, "mini isolated"):
            if mode not in values:
                continue
            cells = [_advantage(values[mode], values[other], figures["better"]) for other in COMPETITORS]
            lines.append(f"| {figures['title']} | {mode} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _advantage(ours: float, theirs: float, better: str) -> str:
    factor = theirs / ours if better == "lower" else ours / theirs
    return f"{factor:.2f}×"


def _cache_table(cached: dict[str, Any]) -> list[str]:
    items = f"{cached['items']:,}"
    lines = ["## Result cache (process mode, 2 workers)", ""]
    lines += ["| map of " + items + " trivial calls | items/s |", "|---|---|"]
    lines.append(f"| without a cache | {cached['plain_items_per_s']:,.0f} |")
    lines.append(f"| every call a miss (a new cache) | {cached['miss_items_per_s']:,.0f} |")
    lines.append(
        f"| every call a hit (the index read from disk first) | {cached['cached_items_per_s']:,.0f} |"
    )
    note = (
        f"Medians of {cached['rounds']} interleaved rounds; a miss costs {cached['miss_ratio']:.3f}× the map "
        f"without a cache. Load average during the section: {cached['load']}."
    )
    return [*lines, "", note, ""]


def _memory_table(memory: dict[str, Any]) -> list[str]:
    lines = ["## Memory: map over a generator of small inputs", ""]
    columns = ("mode", "inputs", "peak RSS after checkpoint", "peak RSS at the end", "growth", "worker peak")
    lines += ["| " + " | ".join((*columns, "items/s", "flat")) + " |", "|---" * (len(columns) + 2) + "|"]
    for mode, f in memory.items():
        lines.append(
            f"| {mode} | {f['inputs']:,} | {f['peak_at_checkpoint_mb']:.1f} MB (after {f['checkpoint']:,}) "
            f"| {f['peak_mb']:.1f} MB | {f['growth_mb']:+.1f} MB | {_worker_peak(mode, f)} "
            f"| {f['items_per_s']:,.0f} | {'yes' if f['flat'] else '**no**'} |"
        )
    note = "RSS of the calling process, where inputs wait; a process-mode worker holds one batch at a time."
    return [*lines, "", note, ""]


# Why a target can be missed, as profiled while building mini (py-spy and cProfile for the CPU per call,
# /proc/PID/task/*/schedstat for each process's CPU per item, timelines of a map's batches).
_MAP = (
    "per item of a map of trivial calls the parent spends about 1.7 µs of CPU (the call object, the batch "
    "message, each outcome's object and unpickling, ordering, handing results to the caller's thread) and "
    "the workers about 1.3 µs (each call's context, the call, pickling its result), where joblib spends "
    "about 1.7 µs and 0.4 µs: its workers call a pickled list of calls and pickle the list of results, with "
    "nothing kept per call, while mini keeps what a call is owed (its context for mini.runtime, its reports "
    "and printed lines, its own error, crash attribution). The parent is the bottleneck (its CPU per item "
    "bounds the map at about 590,000 items/s on two free cores); on two cores shared with other work the "
    "three processes also compete for both CPUs, and between batches the caller's thread waits 1-5 ms for "
    "the GIL that mini's loop thread holds, so the ratio swings from run to run."
)
_ARRAYS = (
    "each 100 MB array is copied once into shared memory (one memcpy: about 7 ms on a quiet machine) and the "
    "work itself (summing it, or allocating and filling a fresh one: the serial rows) takes about as long "
    "again, so 5 GB/s leaves a few ms for the rest; when other processes hold the CPU, copy and work each "
    "take two to three times as long (compare the serial rows across runs)."
)
_THREAD = (
    "a thread-mode run still pickles its arguments and result and builds a map's state for one call "
    "(MapRun, its dispatch and observer: about 10 µs of Python), where ThreadPoolExecutor passes references "
    "to a bare future. Both wake a worker thread and wait for it; mini wakes the thread that was idle last "
    "(its caches warm), so how the two compare depends on which threads the scheduler runs where."
)
_WHY = {
    "(a) thread-mode latency": _THREAD,
    "(19) thread-mode latency": _THREAD,
    "(a) process-mode latency": "one round trip to a worker from the caller's thread; the rest is noise.",
    "(19) process-mode latency": "one round trip to a worker from the caller's thread; the rest is noise.",
    "(b)": _MAP,
    "(19) process-mode map": _MAP,
    "(c)": "it needs two free cores (see the note under the first table).",
    "(d)": _ARRAYS,
    "(19) process-mode 100": _ARRAYS,
    "(19) isolated-mode 100": _ARRAYS,
}


def _why_missed(rows: list[dict[str, Any]]) -> list[str]:
    missed: dict[str, list[str]] = {}  # reason -> the missed targets it explains, in order
    for row in rows:
        reason = next((why for prefix, why in _WHY.items() if row["target"].startswith(prefix)), None)
        if not row["met"] and reason is not None:
            missed.setdefault(reason, []).append(row["target"])
    lines = [f"- {'; '.join(names)}: {reason}" for reason, names in missed.items()]
    return ["Where a target was missed, why:", "", *lines, ""] if lines else []


def _worker_peak(mode: str, figures: dict[str, Any]) -> str:
    return f"{figures['worker_peak_mb']:.1f} MB" if mode == "process" else "(same process)"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
