"""The Modal token: store it with Modal's own tooling, and check it against the control plane.

    check = check_token(timeout=10)
    if check.status is not TokenStatus.ACCEPTED:
        print(check)

`mini auth` (and `./go auth`, which runs it) is the command line over this module (`mini.cli.auth`).
"""

from __future__ import annotations

import asyncio
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

from mini import _loop
from mini.errors import ModalAuthError
from mini.modal_backend.reachability import DEFAULT_TIMEOUT, Hop, Reachability, probe_control_plane
from mini.tls import ensure_grpc_trusts_system_ca


class TokenStatus(enum.Enum):
    ACCEPTED = "token found and accepted"
    REJECTED = "token found but rejected"
    MISSING = "no token"
    UNREACHABLE = "Modal unreachable"


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of `check_token`: a status, what was seen, and what to do about it."""

    status: TokenStatus
    detail: str
    fix: str = ""
    reachability: Reachability | None = field(default=None, compare=False)

    def __str__(self) -> str:
        failure = self.reachability.failure if self.reachability is not None else None
        headline = self.status.value
        if failure is not None:
            headline += f" ({failure.stage})"
        lines = [f"{headline}: {self.detail}"]
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


def configured_token() -> tuple[str, str] | None:
    """The (token id, secret) Modal would use: MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, else the active profile."""
    from modal.config import config

    token_id, token_secret = config.get("token_id"), config.get("token_secret")
    if token_id and token_secret:
        return str(token_id), str(token_secret)
    return None


def server_url() -> str:
    """The control plane Modal would connect to (MODAL_SERVER_URL, the profile, or Modal's default)."""
    from modal.config import config

    return str(config.get("server_url")).split(",")[0].strip()


def check_token(*, timeout: float = DEFAULT_TIMEOUT) -> TokenCheck:
    """Find the token Modal would use and ask the control plane about it, within about `timeout` seconds.

    print(check_token())   # token found and accepted: ak-123... at https://api.modal.com
    """
    ensure_grpc_trusts_system_ca()
    token = configured_token()
    if token is None:
        return no_token()
    url = server_url()
    reachability = probe_control_plane(url, timeout=timeout)
    failure = reachability.failure
    if failure is not None:
        return TokenCheck(TokenStatus.UNREACHABLE, failure.detail, failure.fix, reachability)
    return verify_token(url, token, timeout=timeout, reachability=reachability)


def no_token() -> TokenCheck:
    """The check's answer when `configured_token()` finds nothing; says where to put a token.

    print(no_token())   # no token: neither MODAL_TOKEN_ID/... nor a token in ... ~/.modal.toml
    """
    return TokenCheck(
        TokenStatus.MISSING,
        f"neither MODAL_TOKEN_ID/MODAL_TOKEN_SECRET nor a token in the active profile of {config_path()}",
        fix="run `./go auth` (with MODAL_TOKEN_ID and MODAL_TOKEN_SECRET set, or for the browser flow)",
    )


def verify_token(
    url: str, token: tuple[str, str], *, timeout: float, reachability: Reachability | None = None
) -> TokenCheck:
    """Ask the control plane at `url` whether it accepts `token` (one ClientHello call)."""
    import modal
    from modal.exception import AuthError

    try:
        # On mini's private loop, so that this works from a notebook's running loop too.
        _loop.wait(asyncio.wait_for(modal.Client.verify.aio(url, token), timeout))
    except AuthError as error:
        return TokenCheck(
            TokenStatus.REJECTED,
            f"{url} refused token {token[0]}: {error}",
            fix="create a new token at https://modal.com/settings/tokens, export MODAL_TOKEN_ID and "
            "MODAL_TOKEN_SECRET, then run `./go auth`",
            reachability=reachability,
        )
    except (asyncio.TimeoutError, TimeoutError):
        return _unanswered(url, f"no answer to ClientHello within {timeout:g}s", reachability)
    except Exception as error:  # modal raises many kinds; each one means the call never got an answer
        return _unanswered(url, f"ClientHello failed: {type(error).__name__}: {error}", reachability)
    return TokenCheck(TokenStatus.ACCEPTED, f"{token[0]} at {url}", reachability=reachability)


def _unanswered(url: str, detail: str, reachability: Reachability | None) -> TokenCheck:
    fix = "retry later; `mini doctor` shows each step"
    hop = Hop("control plane", False, f"{url}: {detail}", fix)
    hops = (*reachability.hops, hop) if reachability is not None else (hop,)
    proxy = reachability.proxy_url if reachability is not None else None
    return TokenCheck(TokenStatus.UNREACHABLE, hop.detail, hop.fix, Reachability(url, proxy, hops))


def store_token(token_id: str, token_secret: str, *, profile: str | None = None) -> Path:
    """Store a token in Modal's config file (MODAL_CONFIG_PATH or ~/.modal.toml), owner-only, and activate
    its profile (default: the profile in use). Same as `modal token set --no-verify`; safe to repeat.

    store_token(os.environ["MODAL_TOKEN_ID"], os.environ["MODAL_TOKEN_SECRET"], profile="work")
    """
    from mini.modal_backend._private import _set_token, active_profile, synchronizer

    path = config_path()
    _make_owner_only(path)
    chosen = profile or active_profile()
    synchronizer.create_blocking(_set_token)(
        token_id, token_secret, profile=chosen, activate=True, verify=False
    )
    _make_owner_only(path)
    return path


def new_token_interactively(*, profile: str | None = None) -> Path:
    """Run Modal's browser flow (`modal token new`) and store the token it yields, owner-only. Raises
    `ModalAuthError` when the flow fails (Modal refused it, or cannot be reached).

    new_token_interactively(profile="work")   # prints a URL to open, waits for the browser
    """
    from modal import enable_output
    from modal.exception import Error

    from mini.modal_backend._private import _new_token, synchronizer

    path = config_path()
    _make_owner_only(path)
    try:
        with enable_output():
            synchronizer.create_blocking(_new_token)(profile=profile, activate=True, verify=True)
    except Error as error:
        raise ModalAuthError(f"Modal's token flow failed: {error}") from error
    finally:
        _make_owner_only(path)
    return path


def config_path() -> Path:
    """Modal's config file: MODAL_CONFIG_PATH, else ~/.modal.toml."""
    import modal.config

    return Path(modal.config.user_config_path)


def _make_owner_only(path: Path) -> None:
    # Modal opens the file with the default umask; creating it first (0600) keeps the secret private.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)


def token_error() -> ModalAuthError:
    """Modal refused the token: the one fix that applies where Modal found it (Modal's own text suggests
    `modal token new`, which stores a token that MODAL_TOKEN_ID would still override)."""
    token = configured_token()
    if token is None:
        return ModalAuthError("no Modal token is set up. Run `./go auth` to store one.")
    if os.environ.get("MODAL_TOKEN_ID"):
        return ModalAuthError(
            f"Modal rejected the token in MODAL_TOKEN_ID ({token[0]}). Set MODAL_TOKEN_ID and "
            "MODAL_TOKEN_SECRET to a token from https://modal.com/settings/tokens."
        )
    return ModalAuthError(
        f"Modal rejected the token {token[0]} stored in {config_path()}. Run `./go auth` to store a new one."
    )
