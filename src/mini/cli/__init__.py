"""The `mini` command line: a thin shell over the library. Each verb lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Verb -> the module that registers it (add_parser(subparsers) -> parser, run(args) -> int). Only the module
# of the verb being run is imported, so read-only verbs stay fast and one broken verb cannot break the rest.
_MODULES = {
    "run": "mini.cli.run",
    "image": "mini.image.report",
    "doctor": "mini.cli.doctor",
    "auth": "mini.cli.auth",
    "cache": "mini.cli.cache",
    **dict.fromkeys(("ls", "status", "results", "logs", "cancel", "retry", "watch", "plot"), "mini.cli.runs"),
}


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `verb`, only that verb's module is loaded."""
    root = argparse.ArgumentParser(
        prog="mini",
        description="Run experiment code here or on Modal's GPUs. `mini VERB --help` for each verb.",
    )
    _add_common(root, argparse.SUPPRESS)
    subparsers = root.add_subparsers(dest="verb", metavar="VERB", required=True)
    wanted = [_MODULES[verb]] if verb in _MODULES else list(dict.fromkeys(_MODULES.values()))
    for name in wanted:
        module = importlib.import_module(name)
        module.add_parser(subparsers).set_defaults(handler=module.run)
    for sub in subparsers.choices.values():
        # Accepted after the verb too (`mini run X --traceback`); SUPPRESS keeps a value given before it.
        _add_common(sub, argparse.SUPPRESS)
    return root


def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--project",
        metavar="DIR",
        default=default,
        help="the project to work on (default: bin/mini's own, else the working directory's)",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        default=default,
        help="print the full traceback of any error (also: MINI_DEBUG=1)",
    )


def _verb(argv: list[str]) -> str | None:
    words = iter(argv)
    for word in words:
        if word == "--project":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `mini` command and return its exit code. Without `argv` it is this process's command (the
    `mini` console script), which `mini run` may then watch from a parent process (`crash_guard`)."""
    owns_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _verb(argv)
    try:
        args = parser(verb).parse_args(argv)
    except BrokenPipeError:  # `mini --help | head`
        return _quiet_after_broken_pipe()
    args.owns_process = owns_process
    from mini.cli import failures

    try:
        if getattr(args, "project", None):
            _use_project(args.project)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("mini: interrupted; outstanding calls were stopped.", file=sys.stderr)
        return failures.INTERRUPTED
    except BrokenPipeError:  # `mini results RUN | head`: the reader has all it wanted
        return _quiet_after_broken_pipe()
    except Exception as error:
        code = failures.exit_code(error)
        if code is None:
            raise  # the user's own code failed: its traceback (and the remote one) is the message
        if failures.traceback_wanted(args):
            import traceback

            traceback.print_exc()
        print(f"mini {args.verb}: {error}", file=sys.stderr)
        return code


def _use_project(folder: str) -> None:
    """Make `folder` the project of everything this command does, and of the processes it starts."""
    from mini.project import find_project_root

    os.environ["MINI_PROJECT"] = str(Path(folder).expanduser().resolve())
    find_project_root()  # a folder without pyproject.toml is refused now, not half-way through


def _quiet_after_broken_pipe() -> int:
    from mini.cli.failures import BROKEN_PIPE

    # Python flushes stdout again at exit, which would raise once more: point it at nothing first.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
