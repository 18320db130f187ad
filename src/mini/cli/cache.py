"""`mini cache ls|clear`: the project's result caches (`app.w(cache=NAME)`), over `mini.cache`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from mini.cli.output import render_table


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("cache", help="list or clear the project's result caches")
    verbs = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verbs.add_parser("ls", help="each cache: its entries, size on disk and when a map last used it")
    clear = verbs.add_parser("clear", help="delete a cache; its calls run again next time")
    clear.add_argument("name", metavar="NAME", help="the cache's name, as given to .w(cache=NAME)")
    return parser


def run(args: argparse.Namespace) -> int:
    from mini.cache import clear_cache, list_caches
    from mini.cache.folders import caches_dir

    if args.action == "ls":
        caches = list_caches()
        if not caches:
            print(f"no caches in {caches_dir()} yet; use one with app.w(cache='NAME').")
            return 0
        rows = [[c.name, str(c.entries), _size(c.bytes), _ago(c.last_used)] for c in caches]
        print(render_table(["NAME", "ENTRIES", "SIZE", "LAST USED"], rows))
        for info in caches:
            if info.unreadable_segments:
                print(
                    f"{info.name}: {info.unreadable_segments} file(s) written by another version of mini (or "
                    "damaged) are ignored; their calls run again. `mini cache clear` removes them."
                )
        return 0
    removed = clear_cache(args.name)
    if removed is None:
        known = ", ".join(c.name for c in list_caches()) or "none"
        print(f"mini cache clear: no cache named {args.name!r} (known: {known}).", file=sys.stderr)
        return 1
    print(f"cleared cache {removed.name} ({removed.entries} entries, {_size(removed.bytes)}).")
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _ago(moment: float | None) -> str:
    if moment is None:
        return "never"
    seconds = max(time.time() - moment, 0)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"
