"""`mini auth`: store the Modal token with Modal's own tooling, or check the one Modal would use.

    mini auth                 # store $MODAL_TOKEN_ID/$MODAL_TOKEN_SECRET, else Modal's browser flow
    mini auth --check         # accepted / rejected / no token / unreachable (DNS, proxy, TLS...)

`./go auth` runs it. The library calls are in `mini.modal_backend.auth`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mini.cli.failures import UsageError
from mini.errors import ModalAuthError
from mini.modal_backend.auth import TokenStatus, check_token, new_token_interactively, store_token
from mini.modal_backend.reachability import DEFAULT_TIMEOUT
from mini.tls import ensure_grpc_trusts_system_ca

# `--check`'s answer, as scripts read it.
EXIT_STATUS = {
    TokenStatus.ACCEPTED: 0,
    TokenStatus.REJECTED: 1,
    TokenStatus.MISSING: 3,
    TokenStatus.UNREACHABLE: 4,
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `auth` on the `mini` sub-parsers; `run` handles the parsed arguments."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "auth",
        help="store the Modal token, or check it with --check",
        description="Store the Modal token (from MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, else Modal's browser "
        "flow), or check it with --check: exit 0 accepted, 1 rejected, 3 no token, 4 Modal unreachable.",
    )
    parser.add_argument("--check", action="store_true", help="check the token Modal would use; store nothing")
    parser.add_argument("--profile", help="Modal profile to store the token in (default: the active one)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per step (default: %(default)s)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Store or check the token; the exit status says how it went (`EXIT_STATUS` for `--check`). A
    `TrustStoreError` ends `mini` as on every verb (exit 6), never as an answer `--check` gives."""
    return _check(args.timeout) if args.check else _store(args.profile)


def _check(timeout: float) -> int:
    _close_stdin()
    check = check_token(timeout=timeout)
    print(check)
    return EXIT_STATUS[check.status]


def _store(profile: str | None) -> int:
    ensure_grpc_trusts_system_ca()
    token_id, token_secret = os.environ.get("MODAL_TOKEN_ID"), os.environ.get("MODAL_TOKEN_SECRET")
    if token_id and token_secret:
        path = store_token(token_id, token_secret, profile=profile)
        print(f"stored token {token_id} in {path} (owner-only); check it with `./go auth --check`")
        return 0
    if token_id or token_secret:
        raise UsageError("set both MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or neither.")
    try:
        path = new_token_interactively(profile=profile)
    except ModalAuthError as error:
        print(f"mini auth: {error}", file=sys.stderr)
        return 1
    print(f"stored the new token in {path} (owner-only); check it with `./go auth --check`")
    return 0


def _close_stdin() -> None:
    # A check must never wait for a prompt: anything that reads stdin gets end-of-file at once.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - replaces the process's stdin for its lifetime
