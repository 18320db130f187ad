"""The `mini image` verb: show the image spec of the project in the working directory.

mini image               # summary
mini image --full        # every pin
mini image --diff        # what changed since the last dispatch
mini image --json        # one JSON object, for scripts
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mini.image.diff import SpecDiff, diff_specs, load_dispatched_spec
from mini.image.spec import ImageSpec, derive_image_spec


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `image` on an argparse sub-parser collection; `run` handles the parsed arguments.

    parser = add_parser(root_parser.add_subparsers(dest="verb"))
    """
    parser = subparsers.add_parser(
        "image",
        help="show the image spec: Python version, pins, shipped packages, content hashes",
        description="Show what would run remotely: Python version, locked pins, shipped packages and "
        "content hashes. Never contacts Modal.",
    )
    parser.add_argument("--full", action="store_true", help="list every pinned requirement")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--diff", action="store_true", help="show what changed since the last dispatch")
    output.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    parser.add_argument(
        "--group",
        action="append",
        dest="groups",
        metavar="NAME",
        help="ship exactly these dependency groups (repeatable; default: all but dev and local)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the spec as `args` ask; return the exit status. An `ImageSpecError` propagates: `mini` prints
    it as one message with the exit code of its kind (`mini.cli.failures`).

    sys.exit(run(parser.parse_args(["image", "--json"])))
    """
    spec = derive_image_spec(groups=getattr(args, "groups", None))
    if args.json:
        print(json.dumps(spec_summary(spec), indent=2))
        return 0
    print(format_spec(spec, full=args.full))
    if args.diff:
        previous = load_dispatched_spec(spec.project_root)
        print()
        if previous is None:
            print("No dispatch recorded yet for this project: nothing to compare with.")
        else:
            print(format_diff(diff_specs(previous, spec)))
    return 0


def spec_summary(spec: ImageSpec) -> dict[str, Any]:
    """The `--json` object: python_version, requirements, packages, image_hash, source_hash, cached.

    spec_summary(derive_image_spec())["image_hash"]
    """
    return {
        "python_version": spec.python_version,
        "requirements": list(spec.requirements),
        "packages": [package.name for package in spec.packages],
        "image_hash": spec.image_hash,
        "source_hash": spec.source_hash,
        "cached": spec.cached,
    }


def format_spec(spec: ImageSpec, *, full: bool = False) -> str:
    """The human summary of a spec; `full` adds one line per pin.

    print(format_spec(derive_image_spec(), full=True))
    """
    origin = "from the .mini cache" if spec.cached else "exported from uv.lock"
    lines = [
        f"Project      {spec.project_root}",
        f"Python       {spec.python_version}",
        f"Base image   {spec.base_image}",
        f"Pins         {len(spec.requirements)} ({origin})",
    ]
    if full:
        lines += [f"  {requirement}" for requirement in spec.requirements]
    packages = ", ".join(package.name for package in spec.packages)
    lines += [
        f"Packages     {packages} ({len(spec.source_files)} files, mounted at start)",
        f"Image hash   {spec.image_hash}",
        f"Source hash  {spec.source_hash}",
    ]
    return "\n".join(lines)


def format_summary(spec: ImageSpec) -> str:
    """One line for the moment a spec is dispatched: its hashes and the packages it ships.

    format_summary(spec)  # "image 3fa2c1 (cached spec), sources 9b0e4d (experiment, mini)"
    """
    cached = " (cached spec)" if spec.cached else ""
    packages = ", ".join(package.name for package in spec.packages)
    return f"image {spec.image_hash[:6]}{cached}, sources {spec.source_hash[:6]} ({packages})"


def format_diff(diff: SpecDiff) -> str:
    """Describe a `SpecDiff` for people: whether the image rebuilds, and why.

    print(format_diff(diff_specs(previous, current)))
    """
    if not diff.rebuilds_image and not diff.sources_changed:
        return "Unchanged since the last dispatch."
    lines = ["Since the last dispatch:"]
    lines.append("  the image will be rebuilt:" if diff.rebuilds_image else "  the image is unchanged.")
    for label, change in (("Python", diff.python_version), ("base image", diff.base_image)):
        if change:
            lines.append(f"    {label}: {change[0]} -> {change[1]}")
    if diff.extra_commands:
        lines.append("    extra commands changed")
    lines += [f"    + {line}" for line in diff.pins_added]
    lines += [f"    - {line}" for line in diff.pins_removed]
    lines += [f"    ~ {old} -> {new}" for old, new in diff.pins_changed]
    if diff.sources_changed:
        lines.append("  shipped sources changed (mounted at start; no rebuild):")
        lines += [f"    + {path}" for path in diff.files_added]
        lines += [f"    - {path}" for path in diff.files_removed]
        lines += [f"    ~ {path}" for path in diff.files_changed]
    return "\n".join(lines)
