"""The benchmark harness runs end to end on tiny sizes and writes results a reader can use (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main
from bench.report import targets


def test_quick_local_run_writes_json_and_markdown(tmp_path: Path) -> None:
    main(["--quick", "--only", "local", "--out", str(tmp_path)])

    results = json.loads((tmp_path / "results.json").read_text())
    runners = {"mini thread", "mini process", "ThreadPool(2)", "ProcessPool(2)", "joblib loky(2)"}
    for key in ("one_call", "map_trivial", "gil_bound", "array_argument", "array_result"):
        values = results["local"][key]["values"]
        assert runners <= set(values), key
        assert all(value > 0 for value in values.values()), key
    assert {row["target"].split(" ")[0] for row in results["targets"]} == {"(a)", "(b)", "(c)", "(d)", "(19)"}
    for key in ("array_argument", "array_result"):  # isolated workers, for their transport of arrays
        assert results["local"][key]["values"]["mini isolated"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| a) one call, warm pool | µs |" in table
    assert "quick smoke run" in table


def test_targets_judge_met_and_missed() -> None:
    local = {
        "one_call": {
            "values": {"mini process": 130.0, "ProcessPool(2)": 100.0, "mini thread": 60, "ThreadPool(2)": 50}
        },
        "map_trivial": {
            "values": {"mini process": 600_000.0, "joblib loky(2)": 500_000.0, "ProcessPool(2)": 16_000}
        },
        "gil_bound": {"values": {"mini process": 1.9}},
        "array_argument": {"bytes": 100_000_000, "gb_per_s": {"mini process": 2.0}},
        "array_result": {"bytes": 100_000_000, "gb_per_s": {"mini process": 0.5}},
    }
    verdicts = {row["target"]: (row["met"], round(row["factor"], 2)) for row in targets({"local": local})}

    assert verdicts["(a) process-mode latency vs ProcessPool"] == (False, 0.92)
    assert verdicts["(a) thread-mode latency vs ThreadPool"] == (True, 1.25)
    assert verdicts["(b) process-mode map throughput vs joblib"] == (True, 1.2)
    assert verdicts["(b) process-mode map throughput vs ProcessPool"] == (True, 1.25)
    assert verdicts["(c) process-mode speedup, 2 workers"] == (True, 1.03)
    assert verdicts["(d) process-mode 100 MB array result"] == (False, 0.5)


def test_issue_19_targets_are_judged_against_the_best_peer_of_the_run() -> None:
    local = {
        "one_call": {
            "values": {
                "mini process": 90.0,
                "ProcessPool(2)": 100.0,
                "joblib loky(2)": 9_000.0,
                "mini thread": 40.0,
                "ThreadPool(2)": 30.0,
            }
        },
        "map_trivial": {
            "title": "b) map of 10,000 trivial calls",
            "values": {"mini process": 600_000.0, "joblib loky(2)": 500_000.0, "ProcessPool(2)": 16_000},
        },
        "gil_bound": {"values": {"mini process": 1.9}},
        "array_argument": {"bytes": 100_000_000, "gb_per_s": {"mini process": 6.0, "mini isolated": 4.0}},
        "array_result": {"bytes": 100_000_000, "gb_per_s": {"mini process": 5.0, "joblib loky(2)": 0.2}},
    }
    verdicts = {row["target"]: (row["met"], round(row["factor"], 2)) for row in targets({"local": local})}

    assert verdicts["(19) process-mode latency, one call vs the best peer"] == (True, 1.11)
    assert verdicts["(19) thread-mode latency, one call vs the best peer"] == (False, 0.98)
    assert verdicts["(19) process-mode map of 10,000 trivial calls vs the best peer"] == (False, 0.8)
    assert verdicts["(19) process-mode 100 MB array argument"] == (True, 1.2)
    assert verdicts["(19) isolated-mode 100 MB array argument"] == (False, 0.8)
    assert verdicts["(19) process-mode 100 MB array result"] == (True, 1.0)
    assert "(19) isolated-mode 100 MB array result" not in verdicts  # not measured in this run


def test_quick_volumes_run_moves_the_file_intact_on_both_backends(tmp_path: Path) -> None:
    results = main(["--quick", "--only", "volumes", "--out", str(tmp_path)])["volumes"]
    assert set(results) == {"local", "modal"}
    for figures in results.values():
        assert figures["intact"] and figures["file_mb"] > figures["baseline_mb"] > 0
        assert figures["peak_mb"] >= figures["peak_after_baseline_mb"] > 0
    assert "volumes: 32 MiB upload and download, modal" in (tmp_path / "results.md").read_text()


def test_quick_execution_models_run_answers_every_input_and_sections_run_alone_are_kept(
    tmp_path: Path,
) -> None:
    models = main(["--quick", "--only", "execution_models", "--out", str(tmp_path)])["execution_models"]
    assert set(models) == {"process", "modal"}
    for figures in models.values():
        assert figures["batching"]["speedup"] > 0 and figures["concurrency"]["seconds"] > 0
    main(["--quick", "--only", "image_spec", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"execution_models", "image_spec"} <= set(results)
    assert set(results["meta"]["sections"]) == {"execution_models", "image_spec"}
    table = (tmp_path / "results.md").read_text()
    assert "## Execution models" in table and "| image_spec |" in table


def test_quick_cache_run_reports_both_figures_and_judges_them(tmp_path: Path) -> None:
    results = main(["--quick", "--only", "cache", "--out", str(tmp_path)])
    cached = results["cache"]
    assert cached["cached_items_per_s"] > 0 and cached["miss_ratio"] > 0 and cached["load"]
    judged = {row["target"].split(" ")[0] for row in results["targets"]}
    assert judged == {"(cache)"}
    assert "## Result cache (process mode, 2 workers)" in (tmp_path / "results.md").read_text()


def test_cache_targets_judge_met_and_missed() -> None:
    cached = {"cached_items_per_s": 30_000.0, "miss_ratio": 1.21, "items": 10_000}
    verdicts = {row["target"]: (row["met"], round(row["factor"], 2)) for row in targets({"cache": cached})}
    assert verdicts["(cache) fully cached map of 10,000 trivial calls"] == (True, 1.5)
    assert verdicts["(cache) a miss on a process-mode map of 10,000 trivial calls"] == (False, 0.91)


def test_modal_targets_are_judged_against_raw_modal_measured_beside_them() -> None:
    def subject(cpu: float, rpcs: float, sent: float) -> dict[str, float]:
        return {"client_cpu_us_per_input": cpu, "rpcs_per_input": rpcs, "bytes_sent_per_input": sent}

    def run(latency: float, rpcs: float) -> dict[str, float]:
        return {"latency_ms_median": latency, "rpcs_per_call": rpcs}

    modal = {
        "map": {"inputs": 5000, "mini": subject(300, 0.2, 100), "raw modal": subject(1000, 0.8, 90)},
        "run": {"calls": 40, "mini": run(6.0, 2.0), "raw modal": run(4.0, 2.0)},
    }
    looks = {
        name: {"seconds": seconds}
        for name, seconds in [("running", 1.0), ("finished, first look", 9.0), ("again", 0.3)]
    }
    results = {
        "modal": modal,
        "modal_memory": {
            "mini": {"inputs": 100_000, "growth_mb": 0.3, "flat": True},
            "raw modal": {"growth_mb": 81.0},
        },
        "modal_status": {"calls": 10_000, "goal_s": 5.0, "looks": looks},
    }
    verdicts = {row["target"]: row["met"] for row in targets(results) if row.get("section") == "modal"}
    assert verdicts == {
        "5,000-input map: client CPU per input vs raw modal's": True,
        "5,000-input map: RPCs per input vs raw modal's": True,
        "5,000-input map: bytes sent per input vs raw modal's": False,
        "warm `run` latency vs `f.remote`": False,
        "warm `run`: RPCs per call": True,
        "client memory over a 100,000-input generator": True,
        "status: a look at 10,000 calls while they are queued or running": True,
        "status: a look at 10,000 calls that have all just finished": False,
        "status: a look at 10,000 calls again, all settled": True,
    }


def test_quick_modal_run_measures_mini_and_raw_modal_side_by_side(tmp_path: Path) -> None:
    results = main(["--quick", "--only", "modal", "--out", str(tmp_path)])["modal"]
    for name in ("mini", "raw modal"):
        assert results["map"][name]["rpcs_per_input"] > 0 and results["run"][name]["rpcs_per_call"] > 0
    assert results["run"]["mini"]["rpcs_per_call"] == 2.0
    assert "## Modal: mini against raw modal (issue 19)" in (tmp_path / "results.md").read_text()


def test_quick_reports_run_counts_every_report_on_each_backend(tmp_path: Path) -> None:
    results = main(["--quick", "--only", "reports", "--out", str(tmp_path)])["reports"]
    steps = results["steps"]
    assert set(results["backends"]) == {"process", "detached local", "modal (emulator)"}
    for backend, figures in results["backends"].items():
        assert figures["without_reports_s"] > 0 and figures["with_reports_s"] > 0, backend
        arrived = figures.get("reports_received", figures.get("reports_kept"))
        assert arrived + figures["reports_coalesced"] == steps, f"{backend}: every report arrived or counted"
    table = (tmp_path / "results.md").read_text()
    assert "## Live reports: the reporting call and its caller" in table
    assert f"reports: {steps:,} in a loop of" in table
