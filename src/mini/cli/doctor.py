"""`mini doctor`: check what breaks first (uv and the lock, the image spec, Python, the trust store, proxy
settings, DNS, the TLS chain to Modal, the token) and print a table of them, with a fix under each failure.
Bounded in time, offline too. The checks are `mini.modal_backend.auth` and `.reachability`'s.

    mini doctor
    mini doctor --timeout 3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from typing import Any

from mini.cli.output import render_table
from mini.image import ImageSpecError, derive_image_spec
from mini.image.errors import UvNotFoundError
from mini.image.project import read_pyproject
from mini.image.uv_command import find_uv
from mini.modal_backend.auth import TokenStatus, configured_token, no_token, server_url, verify_token
from mini.modal_backend.reachability import (
    DEFAULT_TIMEOUT,
    Reachability,
    probe_control_plane,
    without_password,
)
from mini.project import find_project_root
from mini.tls import CA_BUNDLE_VARIABLES, TrustStoreError, ca_sources, ensure_grpc_trusts_system_ca

_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class Finding:
    """One check of the report: `verdict` is "ok", "FAIL" or "skip"."""

    verdict: str
    name: str
    detail: str
    fix: str = ""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `doctor` on the `mini` sub-parsers; `run` handles the parsed arguments."""
    parser = subparsers.add_parser(
        "doctor",
        help="check uv, the lock, the image spec, Python, TLS, proxies, DNS and the Modal token",
        description="Check what breaks first and say how to fix each problem. Exits 1 if anything failed.",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds per network step (default: %(default)s)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Print a table, one row per check (and a fix under each problem); 0 when nothing failed, else 1."""
    findings = diagnose(timeout=args.timeout)
    print(render_table(["", "CHECK", "RESULT"], _rows(findings)), flush=True)
    return 1 if any(finding.verdict == "FAIL" for finding in findings) else 0


def _rows(findings: list[Finding]) -> list[list[str]]:
    # Each finding's verdict, check and detail, then its fix (if any) on a row of its own, under the detail.
    rows: list[list[str]] = []
    for finding in findings:
        rows.append([finding.verdict, finding.name, finding.detail])
        if finding.fix:
            rows.append(["", "", f"fix: {finding.fix}"])
    return rows


def diagnose(*, timeout: float = DEFAULT_TIMEOUT) -> list[Finding]:
    """Run every check; network steps give up after about `timeout` seconds each.

    [f for f in diagnose(timeout=3) if f.verdict == "FAIL"]
    """
    findings = [_python(), _uv(), _image_spec(), _trust_store(), _proxy_settings()]
    url = server_url()
    reachability = probe_control_plane(url, timeout=timeout)
    findings += _network(reachability)
    findings.append(_token(url, reachability, timeout))
    return findings


def _python() -> Finding:
    running = sys.version_info[:3]
    shown = ".".join(map(str, running))
    modal_requires = importlib.metadata.metadata("modal").get_all("Requires-Python") or [""]
    bounds = {"modal": modal_requires[0]}
    with contextlib.suppress(ImageSpecError):  # no project: the image spec check reports it
        bounds["this project"] = (
            read_pyproject(find_project_root()).get("project", {}).get("requires-python", "")
        )
    refused = [who for who, spec in bounds.items() if spec and not _satisfies(running, spec)]
    summary = "; ".join(f"{who} requires {spec}" for who, spec in bounds.items() if spec)
    if refused:
        return Finding(
            "FAIL",
            "Python",
            f"{shown} is outside what {' and '.join(refused)} support ({summary})",
            "install a supported Python with `uv python install 3.11`, then `./go install`",
        )
    return Finding("ok", "Python", f"{shown} ({summary})")


def _uv() -> Finding:
    try:
        uv = find_uv()
    except UvNotFoundError as error:
        return Finding("FAIL", "uv", str(error))  # the message ends with what to do
    try:
        version = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        return Finding("FAIL", "uv", f"{uv} does not run: {error}", "reinstall it: `pip install --force uv`")
    return Finding("ok", "uv", f"{version.stdout.strip()} at {uv}")


def _image_spec() -> Finding:
    try:
        spec = derive_image_spec()
    except ImageSpecError as error:
        # An ImageSpecError's message already ends with what to do.
        return Finding("FAIL", "lock & image", str(error).replace("\n", " | "))
    origin = "cached" if spec.cached else "exported"
    return Finding(
        "ok",
        "lock & image",
        f"{len(spec.requirements)} pins ({origin} from uv.lock), Python {spec.python_version}, "
        f"{len(spec.packages)} shipped packages, image {spec.image_hash[:12]}",
    )


def _trust_store() -> Finding:
    broken = [
        name for name in CA_BUNDLE_VARIABLES if os.environ.get(name) and not os.path.isfile(os.environ[name])
    ]
    if broken:
        listed = ", ".join(f"{name}={os.environ[name]}" for name in broken)
        return Finding(
            "FAIL", "trust store", f"{listed}: no such file", f"unset {broken[0]} or point it at a CA bundle"
        )
    try:
        bundle = ensure_grpc_trusts_system_ca()
    except TrustStoreError as error:
        return Finding("FAIL", "trust store", str(error))
    if bundle is None:
        return Finding("ok", "trust store", "certifi's CAs (the system adds none)")
    sources = ", ".join(f"{origin} {path}" for origin, path in ca_sources())
    return Finding("ok", "trust store", f"certifi's CAs plus {sources}, combined in {bundle}")


def _proxy_settings() -> Finding:
    settings = [
        f"{name}={without_password(value)}"
        for name in _PROXY_VARIABLES
        for value in {os.environ.get(name), os.environ.get(name.lower())}
        if value
    ]
    if not settings:
        return Finding("ok", "proxy settings", "none set (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY)")
    if importlib.util.find_spec("python_socks") is None:
        return Finding(
            "FAIL",
            "proxy settings",
            f"{', '.join(settings)} but Modal's proxy support (python-socks) is not installed",
            "`./go install` (mini depends on modal[api-proxy-support])",
        )
    return Finding("ok", "proxy settings", ", ".join(settings))


def _network(reachability: Reachability) -> list[Finding]:
    url = urllib.parse.urlparse(reachability.server_url)
    stages = ["DNS", "proxy" if reachability.proxy_url else "connection"] + (
        ["TLS"] if url.scheme == "https" else []
    )
    findings = [
        Finding("ok" if hop.ok else "FAIL", hop.stage, hop.detail, hop.fix) for hop in reachability.hops
    ]
    for stage in stages[len(reachability.hops) :]:
        findings.append(Finding("skip", stage, "not tried: an earlier step failed"))
    return findings


def _token(url: str, reachability: Reachability, timeout: float) -> Finding:
    token = configured_token()
    if token is None:
        check = no_token()
    elif reachability.failure is not None:
        return Finding("skip", "token", f"{token[0]} found; not checked because {url} is unreachable")
    else:
        check = verify_token(url, token, timeout=timeout)
    verdict = "ok" if check.status is TokenStatus.ACCEPTED else "FAIL"
    return Finding(verdict, "token", f"{check.status.value}: {check.detail}", check.fix)


def _satisfies(version: tuple[int, ...], specifiers: str) -> bool:
    """Whether `version` meets every clause of a PEP 440 specifier such as ">=3.10,<3.16" (no wildcards)."""
    compare = {
        ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
    }
    for clause in specifiers.split(","):
        match = re.fullmatch(r"\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)\s*", clause)
        if match is None:
            continue  # ~= and wildcards: rare for requires-python, and not worth a parser here
        bound = tuple(int(part) for part in match[2].split("."))
        if not compare[match[1]](version[: len(bound)], bound):
            return False
    return True
