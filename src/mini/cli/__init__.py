"""The `mini` command line: a thin shell over the library. Each verb lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module exposes add_parser(subparsers) and run(args) -> int.
_VERBS = ("mini.cli.run", "mini.cli.runs", "mini.image.report", "mini.cli.doctor")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="mini",
        description="Run experiment code here or on Modal's GPUs. `mini VERB --help` for each verb.",
    )
    subparsers = root.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in _VERBS:
        verb = importlib.import_module(name)
        verb.add_parser(subparsers).set_defaults(handler=verb.run)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("mini: interrupted; outstanding calls were stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
