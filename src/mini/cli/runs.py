"""`mini ls|status|results|logs|cancel|retry|watch|plot`: questions about detached runs, and `mini run
--detach`.

Every verb here reads the run registry of the project (`bin/mini`'s, `--project DIR`, or the working
directory's). The read-only ones load no backend and build nothing: they read files (and, for a remote
backend, ask it about the recorded call ids).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mini.cli.output import live_progress, render_table
from mini.runs import Job, Run, RunError
from mini.runs.events import RunEvents
from mini.runs.inner_calls import read_inner_calls
from mini.runs.state import CallState, count_statuses, run_status

_WATCH_INTERVAL = 0.5  # seconds between looks while watching a run


# Calls a run's status lists without --all.
_LISTED = 50


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ls = subparsers.add_parser("ls", help="list this project's detached runs, newest first")
    ls.add_argument("--app", help="only runs launched on this backend (local, modal)")
    ls.add_argument("--limit", type=int, default=20, help="show at most N runs (default: 20)")

    status = subparsers.add_parser("status", help="where a run and each of its calls stand")
    status.add_argument("run", metavar="RUN", nargs="?", help="a run id or a unique prefix (default: newest)")
    status.add_argument("--json", action="store_true", help="print the record and states as JSON")
    status.add_argument(
        "--all",
        action="store_true",
        help=f"list every call (a run of more than {_LISTED} lists only its calls that are not done)",
    )

    results = subparsers.add_parser("results", help="the results of a settled run (or of one call)")
    results.add_argument(
        "run", metavar="RUN", nargs="?", help="a run id, or RUN/INDEX for one call (default: newest)"
    )
    results.add_argument("call", metavar="CALL", nargs="?", type=int, help="only this call's result")
    results.add_argument("--json", action="store_true", help="print the results as JSON")

    logs = subparsers.add_parser(
        "logs", help="what a run's calls printed (each line prefixed [INDEX], unless one call is named)"
    )
    logs.add_argument("run", metavar="RUN", help="a run id, or RUN/INDEX for one call")
    logs.add_argument("call", metavar="CALL", nargs="?", type=int, help="only this call's output")
    logs.add_argument("--call", dest="call_option", metavar="N", type=int, help="only call N's output")

    plot = subparsers.add_parser("plot", help="draw each call's curve of a reported metric to a PNG")
    plot.add_argument("run", metavar="RUN", help="a run id or a unique prefix")
    plot.add_argument("--metric", required=True, help="the metric to draw, as the calls reported it (loss)")
    plot.add_argument(
        "-o", "--output", metavar="PNG", help="where to write the image (default: RUN-METRIC.png here)"
    )

    cancel = subparsers.add_parser("cancel", help="stop a run's calls that have not finished")
    cancel.add_argument("run", metavar="RUN", help="a run id, or RUN/INDEX for one call")

    retry = subparsers.add_parser(
        "retry",
        help="launch a settled run's failed, cancelled and lost calls again, on its own backend and options",
    )
    retry.add_argument("run", metavar="RUN", help="a run id or a unique prefix")

    watch = subparsers.add_parser(
        "watch", help="follow a run until it settles; exit code 0 only if every call succeeded"
    )
    watch.add_argument("run", metavar="RUN", help="a run id or a unique prefix")

    for parser in (ls, status, results, logs, cancel, retry, plot):
        parser.set_defaults(handler=run)
    return watch


def run(args: argparse.Namespace) -> int:
    return _HANDLERS[args.verb](args)


# ----- the verbs -------------------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> int:
    from mini.project import find_project_root
    from mini.runs.registry import list_runs, runs_dir

    root = find_project_root()
    rows = []
    for folder in list_runs(root):
        the_run: Run[Any] = Run(folder)
        try:
            record = the_run.record
        except RunError as error:
            rows.append([folder.id, "damaged", "", "", str(error)[:60], ""])
            continue
        if args.app and record.backend != args.app:
            continue
        states = the_run.states()
        rows.append(
            [
                folder.id,
                run_status(states),
                _settled(states),
                record.backend,
                record.function,
                _ago(record.created),
            ]
        )
        if len(rows) >= args.limit:
            break
    if not rows:
        where = runs_dir(root)
        if args.app and list_runs(root):
            print(f"no runs on the {args.app} backend in {where}; `mini ls` shows every run.")
        else:
            print(f"no runs recorded in {where} yet; start one with app.spawn_map or `mini run --detach`.")
        return 0
    print(render_table(["RUN", "STATUS", "SETTLED", "APP", "FUNCTION", "LAUNCHED"], rows))
    return 0


def _status(args: argparse.Namespace) -> int:
    the_run = _open_run(args.run)
    record = the_run.record
    states = the_run.states()
    if args.json:
        print(json.dumps(_status_json(the_run, states), indent=1))
        return 0
    counts = count_statuses(states)
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    git = "not a git checkout"
    if record.git_commit:
        git = f"git {record.git_commit[:10]}{' (uncommitted changes)' if record.git_dirty else ''}"
    print(f"run {record.id}: {run_status(states)} ({summary or 'no calls'})")
    print(f"  {record.kind} of {record.function} on {record.backend}, apparatus {record.apparatus!r}")
    print(f"  launched {_when(record.created)} from {git}")
    if record.image_hash:
        print(f"  image {record.image_hash}")
    retried = any(call.attempt > 1 for call in record.calls)
    listed, left_out = _listed(list(zip(record.calls, states, strict=True)), args.all)
    rows = [
        [
            str(call.index),
            state.status,
            *([str(call.attempt)] if retried else []),
            _duration(state),
            _cut(call.args),
            the_run[call.index].backend_id or "",
            state.detail,
        ]
        for call, state in listed
    ]
    if rows:
        header = ["#", "STATUS", *(["ATTEMPT"] if retried else []), "TIME", "ARGS", "ID", "DETAIL"]
        print(render_table(header, rows, indent=2))
    if left_out:
        print(f"  not listed: {left_out} (`mini status {record.id} --all` lists every call)")
    for call, _ in listed:
        inner = read_inner_calls(the_run.folder, call.index)
        if inner is not None:
            who = "main(app)" if record.kind == "experiment" else f"call #{call.index}"
            print(f"  {who} made {inner}")
    return 0


def _results(args: argparse.Namespace) -> int:
    the_run, jobs, single = _select(args.run, args.call)
    if args.run is None:
        print(f"run {the_run.id} (the newest):", file=sys.stderr)
    states = [job.state() for job in jobs]
    waiting = [(job, state) for job, state in zip(jobs, states, strict=True) if not state.settled]
    if waiting:
        named = ", ".join(f"{job.id} ({state.status})" for job, state in waiting[:5])
        more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        print(
            f"mini results: not finished yet: {named}{more}. `mini watch {the_run.id}` waits for it; "
            f"`mini status {the_run.id}` shows each call.",
            file=sys.stderr,
        )
        return 1
    values: list[Any] = []
    failed = False
    for job in jobs:
        try:
            values.append(job.result(timeout=0))
        except (ModuleNotFoundError, AttributeError) as error:
            print(
                f"mini results: the result of {job.id} cannot be loaded here ({error}); load it in Python "
                f"where that code is importable: Job.open({job.id!r}).result()",
                file=sys.stderr,
            )
            return 2
        except Exception as exc:
            failed = True
            values.append({"error": f"{type(exc).__name__}: {exc}"})
            cause = getattr(exc.__cause__, "text", "")
            print(f"{job.id} failed: {type(exc).__name__}: {exc}\n{cause}", file=sys.stderr)
    result = values[0] if single else values
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        from mini.cli.output import render_result

        print(render_result(result))
    if failed:
        print(f"`mini logs {the_run.id} CALL` shows a failed call's output.", file=sys.stderr)
    return 1 if failed else 0


def _logs(args: argparse.Namespace) -> int:
    if args.call is not None and args.call_option is not None and args.call != args.call_option:
        from mini.cli.failures import UsageError

        raise UsageError(f"two different calls named ({args.call} and --call {args.call_option}): name one.")
    the_run, jobs, single = _select(args.run, args.call if args.call is not None else args.call_option)
    for job in jobs:
        text = job.logs()
        if single:
            print(text, end="" if text.endswith("\n") or not text else "\n")
        else:
            for line in text.splitlines():
                print(f"[{job.index}] {line}")
    record = the_run.record
    if record.kind == "experiment" and record.backend == "modal":
        print(
            "(what main(app) printed here; its calls ran on Modal, in the app "
            f"mini-{record.apparatus}, whose output Modal keeps: `bin/modal app list` shows the app's id, "
            "`bin/modal app logs APP_ID` its output)"
        )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from mini.runs.plotting import plot_metric

    the_run = _open_run(args.run)
    print(plot_metric(the_run, args.metric, args.output))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    the_run, jobs, single = _select(args.run, None)
    cancelled = sum(job.cancel() for job in jobs)
    if single:
        done = "cancelled the call" if cancelled else "the call had already finished; nothing to cancel"
        print(f"run {the_run.id}: {done}.")
    else:
        others = "the others had already finished"
        print(f"cancelled {cancelled} of {len(jobs)} calls of run {the_run.id}; {others}.")
    return 0


def _retry(args: argparse.Namespace) -> int:
    the_run = _open_run(args.run)
    jobs = the_run.retry()
    if not jobs:
        print(f"run {the_run.id}: nothing to retry; every call finished.")
        return 0
    named = ", ".join(f"#{job.index}" for job in jobs[:20]) + (" ..." if len(jobs) > 20 else "")
    print(
        f"run {the_run.id}: launched {len(jobs)} call(s) again on {the_run.record.backend} ({named}). "
        f"Follow them with `mini watch {the_run.id}`, then `mini results {the_run.id}`."
    )
    return 0


def _watch(args: argparse.Namespace) -> int:
    the_run = _open_run(args.run)
    try:
        states = _watch_live(the_run) if sys.stdout.isatty() else _watch_lines(the_run)
    except KeyboardInterrupt:
        print(f"\nstopped watching; run {the_run.id} goes on (`mini cancel {the_run.id}` stops it).")
        return 130
    return 0 if all(state.status == "done" for state in states) else 1


def _watch_live(the_run: Run[Any], **options: Any) -> list[CallState]:
    """A progress bar of the run's calls (for an experiment, of the calls its main(app) makes), with a line
    per running call that has reported or started: its latest metrics, where it runs, for how long.
    `options` go to the bar (`mini.progress.rich_bar`)."""
    following = RunEvents(the_run)
    with live_progress(the_run.id, **options) as show:
        while True:
            states = the_run.states()
            settled = sum(state.settled for state in states)
            total: int | None = len(states)
            completed = settled
            if the_run.record.kind == "experiment":
                inner = read_inner_calls(the_run.folder, 0)
                total = inner.made if inner is not None else None
                completed = inner.made - inner.queued - inner.running if inner is not None else 0
            text = f"{run_status(states)} · {_counts_text(the_run, states)}"
            show(completed, total, text, _call_lines(the_run, following, states))
            if settled == len(states):
                return states
            time.sleep(_WATCH_INTERVAL)


def _watch_lines(the_run: Run[Any]) -> list[CallState]:
    """One line each time the run's counts change, and one each time a running call reports: for a log file
    or a pipe."""
    following = RunEvents(the_run)
    last = ""
    said: dict[str, str] = {}
    while True:
        states = the_run.states()
        counts = _counts_text(the_run, states)
        line = f"{the_run.id}: {run_status(states)}, {_settled(states)} settled · {counts}"
        if line != last:
            print(line, flush=True)
            last = line
        for label, text in _call_lines(the_run, following, states):
            # What it said and where, not the clock: a call that says nothing new adds no line.
            what = _CLOCK.sub("", text)
            if said.get(label) != what:
                print(f"  {label} {what}", flush=True)
                said[label] = what
        if all(state.settled for state in states):
            return states
        time.sleep(_WATCH_INTERVAL)


def _call_lines(the_run: Run[Any], following: RunEvents, states: list[CallState]) -> list[tuple[str, str]]:
    """A line per running call that said something; for an experiment, per running call of its main(app)."""
    if the_run.record.kind == "experiment":
        inner = read_inner_calls(the_run.folder, 0)
        return list(inner.lines) if inner is not None and not states[0].settled else []
    return following.running(states)


_CLOCK = re.compile(r" · \d+(m\d\d)?s$")  # how long a call has run, at the end of its line (`describe`)

_HANDLERS = {
    "ls": _ls,
    "status": _status,
    "results": _results,
    "logs": _logs,
    "cancel": _cancel,
    "retry": _retry,
    "watch": _watch,
    "plot": _plot,
}


# ----- `mini run --detach` ---------------------------------------------------------------------------


def run_experiment(
    target: str,
    backend: str,
    name: str,
    settings: dict[str, Any],
    options: dict[str, Any],
    plot: str | None = None,
) -> Any:
    """Load an experiment and return its `main(app)`: what a detached `mini run` runs in its own process."""
    from mini.cli.experiment import load_experiment, run_main

    module = load_experiment(target)
    result = run_main(module, backend, name, settings, options)
    if plot:
        module.plot(result, plot)
    return result


def detach_experiment(
    target: str,
    backend: str,
    name: str,
    settings: dict[str, Any],
    options: dict[str, Any],
    plot: str | None,
) -> int:
    """Start `main(app)` in its own process and session, recorded as a run on `backend`; print its id at once.

    The experiment's calls then run on `backend` as usual, driven by that process: on the local backend the
    whole run survives this shell; on Modal the driving process runs on this machine and must stay up. The
    calls main(app) makes are counted in the run's folder as they go (`mini.runs.inner_calls`).
    """
    from mini.local.backend import LocalBackend
    from mini.options import Options

    label = f"{target}:main"
    if Path(target).is_file():
        target = str(Path(target).resolve())
    if plot:
        plot = str(Path(plot).resolve())
    driver = LocalBackend(name, workers=1, mode="process").launcher(name, Options())
    arguments = (target, backend, name, settings, options, plot)
    the_run = driver.start(
        name,
        run_experiment,
        [arguments],
        None,
        kind="experiment",
        label=label,
        backend=backend,
        settings={**settings, **options},
    )
    print(the_run.id)
    print(
        f"started {label} on {backend} in the background. "
        f"Follow it with `mini watch {the_run.id}`, then `mini results {the_run.id}`.",
        file=sys.stderr,
    )
    return 0


# ----- helpers ---------------------------------------------------------------------------------------


def _open_run(run_id: str | None) -> Run[Any]:
    from mini.project import find_project_root
    from mini.runs.errors import RunNotFound
    from mini.runs.registry import list_runs, runs_dir

    root = find_project_root()
    if run_id is None:
        folders = list_runs(root)
        if not folders:
            raise RunNotFound(f"no runs recorded in {runs_dir(root)} yet.")
        return Run(folders[0])
    return Run.open(run_id.partition("/")[0], root)


def _select(run_id: str | None, call: int | None) -> tuple[Run[Any], list[Job[Any]], bool]:
    """The run (default: the newest), the calls named (RUN/INDEX, or RUN and CALL, or every call), and
    whether one was named."""
    the_run = _open_run(run_id)
    _, _, index = (run_id or "").partition("/")
    if index:
        if not index.isdigit():
            raise RunError(f"{run_id!r} is not a call id: use RUN/INDEX, e.g. {the_run.id}/0")
        call = int(index)
    if call is not None:
        if not 0 <= call < len(the_run):
            raise RunError(
                f"run {the_run.id} has {len(the_run)} calls, numbered from 0: there is no call {call}."
            )
        return the_run, [the_run[call]], True
    return the_run, list(the_run), len(the_run) == 1


def _listed(calls: list[tuple[Any, CallState]], everything: bool) -> tuple[list[tuple[Any, CallState]], str]:
    """The calls `mini status` lists, and how many (with what status) it leaves out. A large run lists
    those not done, up to `_LISTED` of them: the ones to look at, and a table a terminal can show (and rich
    can draw in well under a second)."""
    if everything or len(calls) <= _LISTED:
        return calls, ""
    unfinished = [(call, state) for call, state in calls if state.status != "done"]
    listed = unfinished[:_LISTED]
    shown = {call.index for call, _ in listed}
    left = count_statuses(state for call, state in calls if call.index not in shown)
    return listed, ", ".join(f"{n:,} {status}" for status, n in left.items() if n)


def _status_json(the_run: Run[Any], states: list[CallState]) -> dict[str, Any]:
    record = the_run.record.to_json()
    for call, job, state in zip(record["calls"], the_run, states, strict=True):
        call.update(status=state.status, detail=state.detail, started=state.started, finished=state.finished)
        call["backend_id"] = job.backend_id
        inner = read_inner_calls(the_run.folder, job.index)
        call["inner_calls"] = None if inner is None else {**asdict(inner), "made": inner.made}
    return {"id": the_run.id, "status": run_status(states), "counts": count_statuses(states), **record}


def _settled(states: list[CallState]) -> str:
    return f"{sum(state.settled for state in states)}/{len(states)}"


def _counts_text(the_run: Run[Any], states: list[CallState]) -> str:
    """`running 1 · done 0 · ...`; for an experiment (one call), the calls its main(app) has made."""
    if the_run.record.kind != "experiment":
        return " · ".join(f"{status} {n}" for status, n in count_statuses(states).items())
    inner = read_inner_calls(the_run.folder, 0)
    return f"main(app) made {inner}" if inner is not None else "main(app) has made no call yet"


def _cut(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(state: CallState) -> str:
    if state.started is None:
        return ""
    end = state.finished if state.finished is not None else time.time()
    return _seconds(end - state.started)


def _seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _ago(moment: float) -> str:
    return f"{_seconds(max(time.time() - moment, 0))} ago"


def _when(moment: float) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(moment))} ({_ago(moment)})"
