"""`python -m bench [--quick] [--only SECTION,...] [--out FOLDER]`: run the benchmark sections in order and
write `results.json` and `results.md` (by default into `bench/`)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    cache,
    closures,
    execution_models,
    image_spec,
    memory,
    modal_memory,
    modal_overhead,
    modal_status,
    report,
    reports,
    volumes,
    workloads,
)
from bench.workloads import FULL, QUICK, Sizes

# Each section returns a JSON-ready dict that lands in results.json under its name; a section
# report.markdown does not know is listed as key/value lines.
SECTIONS: list[tuple[str, Callable[[Sizes], dict[str, Any]]]] = [
    ("local", workloads.run),
    ("closures", lambda sizes: closures.run()),
    ("memory", memory.run),
    ("image_spec", lambda sizes: image_spec.run()),
    ("modal", modal_overhead.run),
    ("modal_memory", modal_memory.run),
    ("modal_status", modal_status.run),
    ("volumes", volumes.run),
    ("execution_models", execution_models.run),
    ("cache", cache.run),
    ("reports", reports.run),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sections, write the results, and return them.

    >>> main(["--quick", "--only", "local", "--out", "/tmp/bench"])["local"]["one_call"]["unit"]
    'µs'
    """
    options = _parser().parse_args(argv)
    chosen = options.only.split(",") if options.only else [name for name, _ in SECTIONS]
    unknown = set(chosen) - {name for name, _ in SECTIONS}
    if unknown:
        raise SystemExit(f"bench: no section {', '.join(sorted(unknown))}; choose from {_names()}")
    sizes = QUICK if options.quick else FULL
    started = time.perf_counter()
    results = _kept(Path(options.out), options.quick) if options.only else {}
    results["meta"] = {**_meta(options.quick), "sections": results.get("meta", {}).get("sections", {})}
    for name, section in SECTIONS:
        if name in chosen:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            section_started = time.perf_counter()
            load_before = _load()
            results[name] = section(sizes)
            seconds = time.perf_counter() - section_started
            results["meta"]["sections"][name] = {
                "date": results["meta"]["date"],
                "mini_commit": results["meta"]["mini_commit"],
                "load_before": load_before,
                "load_after": _load(),
                "seconds": seconds,
            }
            print(f"bench: {name} took {seconds:.0f} s", file=sys.stderr)
    results["targets"] = report.targets(results)
    results["meta"]["load_after"] = _load()
    results["meta"]["seconds"] = time.perf_counter() - started
    paths = report.write(results, Path(options.out))
    print(f"bench: wrote {', '.join(map(str, paths))}", file=sys.stderr)
    return results


def _kept(folder: Path, quick: bool) -> dict[str, Any]:
    """The sections an earlier run wrote into `folder` (of the same kind, quick or full), which a run of
    `--only` some sections keeps: each section says when, at which commit and under which load it ran."""
    try:
        earlier: dict[str, Any] = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    if earlier.get("meta", {}).get("quick") != quick:
        return {}
    earlier.pop("targets", None)
    return earlier


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one round: a smoke run, not figures"
    )
    parser.add_argument("--only", metavar="SECTION,...", help=f"run only these sections: {_names()}")
    parser.add_argument("--out", default=str(Path(__file__).parent), help="folder for results.json/.md")
    return parser


def _names() -> str:
    return ", ".join(name for name, _ in SECTIONS)


def _meta(quick: bool) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "load_before": _load(),
        "mini_commit": _commit(),
    }


def _commit() -> str:
    """The commit measured, marked when `src/` differs from it (other work in progress in this checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        changes = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" with uncommitted changes in src/" if changes.stdout.strip() else "")


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
