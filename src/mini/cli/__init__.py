"""The `mini` command line: a thin shell over the library. Each verb lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Verb -> the module that registers it (add_parser(subparsers) -> parser, run(args) -> int). Only the module
# of the verb being run is imported, so read-only verbs stay fast and one broken verb cannot break the rest.
_MODULES = {
    "run": "mini.cli.run",
    "image": "mini.image.report",
    "doctor": "mini.cli.doctor",
    **dict.fromkeys(("ls", "status", "results", "logs", "cancel", "watch"), "mini.cli.runs"),
}


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `verb`, only that verb's module is loaded."""
    root = argparse.ArgumentParser(
        prog="mini",
        description="Run experiment code here or on Modal's GPUs. `mini VERB --help` for each verb.",
    )
    subparsers = root.add_subparsers(dest="verb", metavar="VERB", required=True)
    wanted = [_MODULES[verb]] if verb in _MODULES else list(dict.fromkeys(_MODULES.values()))
    for name in wanted:
        module = importlib.import_module(name)
        module.add_parser(subparsers).set_defaults(handler=module.run)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((word for word in argv if not word.startswith("-")), None)
    args = parser(verb).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("mini: interrupted; outstanding calls were stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
