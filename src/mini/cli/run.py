"""`mini run EXPERIMENT`: load an experiment (a file or `package.module`) and call its `main(app)`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mini import backends
from mini.cli.experiment import load_experiment, run_main
from mini.cli.failures import UsageError
from mini.cli.output import render_result

_LOCAL_DEFAULTS = {"workers": 2, "mode": "thread"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="run an experiment's main(app) on the chosen backend",
        description="Load EXPERIMENT (a .py file or an importable package.module), build the apparatus, call "
        "its main(app) and print what it returns.",
    )
    parser.add_argument(
        "experiment", metavar="EXPERIMENT", help="a .py file or a module such as experiment.sweep"
    )
    parser.add_argument(
        "--app", choices=backends.names(), help="backend (default: $MINI_APP, [tool.mini] app, or local)"
    )
    parser.add_argument("--name", help="apparatus name (default: the experiment's module name)")
    local = parser.add_argument_group("local backend")
    local.add_argument("--workers", type=_positive_int, help="parallel workers (default: 2)")
    local.add_argument(
        "--mode",
        choices=("thread", "process", "isolated"),
        help="thread (default): calls in this process; a call that ends the process (os._exit, a segfault) "
        "ends the run. process: each call in a worker process. isolated: process, in the image's environment",
    )
    options = parser.add_argument_group("options for every backend")
    options.add_argument("--timeout", type=float, help="seconds a call may run")
    options.add_argument("--retries", type=int, help="re-run a failing call up to N times")
    options.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    remote = parser.add_argument_group("modal backend")
    remote.add_argument("--gpu", help="GPU type, e.g. A100 or H100:2")
    remote.add_argument("--max-containers", type=int, help="cap on containers running at once")
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the result as JSON")
    output.add_argument("--plot", metavar="PNG", help="call the experiment's plot(result, PNG)")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="run main(app) in a background process that outlives this shell; print its run id at once "
        "(then `mini watch RUN`, `mini results RUN`)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    backend = backends.chosen(args.app, _project())
    if backend not in backends.names():
        raise UsageError(
            f"unknown app {backend!r} (from MINI_APP or [tool.mini] app); choose one of: "
            f"{', '.join(backends.names())}."
        )
    settings = _local_settings(args) if backend == "local" else _no_local_flags(args, backend)
    if settings.get("mode") == "thread" and not args.detach and args.owns_process:
        from mini.cli.crash_guard import watch_for_a_crash

        exit_code = watch_for_a_crash()
        if exit_code is not None:  # the watching parent: the command ran (or died) in its child
            return exit_code
    module = load_experiment(args.experiment)
    if args.plot and not callable(getattr(module, "plot", None)):
        raise UsageError(f"{args.experiment} defines no plot(result, path), so --plot cannot be used.")
    options = {
        "timeout": args.timeout,
        "retries": args.retries,
        "progress": args.progress,
        "gpu": args.gpu,
        "max_containers": args.max_containers,
    }
    name = args.name or _default_name(args.experiment)
    chosen = {k: v for k, v in options.items() if v is not None}
    if args.detach:
        from mini.cli.runs import detach_experiment

        return detach_experiment(args.experiment, backend, name, settings, chosen, args.plot)
    result = run_main(module, backend, name, settings, chosen)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(render_result(result))
    if args.plot:
        module.plot(result, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _local_settings(args: argparse.Namespace) -> dict[str, Any]:
    given = {"workers": args.workers, "mode": args.mode}
    return {key: default if given[key] is None else given[key] for key, default in _LOCAL_DEFAULTS.items()}


def _no_local_flags(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    given = [
        flag for flag, value in (("--mode", args.mode), ("--workers", args.workers)) if value is not None
    ]
    if given:
        raise UsageError(
            f"{' and '.join(given)} {'do' if len(given) > 1 else 'does'} not apply to --app {backend}: they "
            "choose how the local backend runs calls. For Modal use --gpu, --max-containers, --timeout "
            "and --retries."
        )
    return {}


def _default_name(target: str) -> str:
    """`sweep` for experiment.sweep, `my-exp` for path/to/my_exp.py."""
    is_file = target.endswith(".py") or Path(target).is_file()
    return (Path(target).stem if is_file else target.rsplit(".", 1)[-1]).replace("_", "-")


def _project() -> Path | None:
    named = os.environ.get("MINI_PROJECT")
    return Path(named) if named else None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value
