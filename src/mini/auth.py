"""The Modal token: store it with Modal's own tooling, and check it against the control plane.

    python -m mini.auth                 # store $MODAL_TOKEN_ID/$MODAL_TOKEN_SECRET, else Modal's browser flow
    python -m mini.auth --check         # accepted / rejected / no token / unreachable (DNS, proxy, TLS...)

In code:

    check = check_token(timeout=10)
    if check.status is not TokenStatus.ACCEPTED:
        print(check)

`./go auth` runs this module. Exit status of `--check`: 0 accepted, 1 rejected, 3 no token, 4 unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import os
import socket
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mini import _loop
from mini.tls import TrustStoreError, ensure_grpc_trusts_system_ca

DEFAULT_TIMEOUT = 10.0


class TokenStatus(enum.Enum):
    ACCEPTED = "token found and accepted"
    REJECTED = "token found but rejected"
    MISSING = "no token"
    UNREACHABLE = "Modal unreachable"


_EXIT_STATUS = {
    TokenStatus.ACCEPTED: 0,
    TokenStatus.REJECTED: 1,
    TokenStatus.MISSING: 3,
    TokenStatus.UNREACHABLE: 4,
}


@dataclass(frozen=True)
class Hop:
    """One step on the way to the control plane: "DNS", "proxy", "connection" or "TLS"."""

    stage: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Reachability:
    """What `probe_control_plane` found, step by step; `failure` is the first step that failed."""

    server_url: str
    proxy_url: str | None
    hops: tuple[Hop, ...]

    @property
    def failure(self) -> Hop | None:
        return next((hop for hop in self.hops if not hop.ok), None)


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


def probe_control_plane(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> Reachability:
    """Walk the path Modal's client takes to `url` (DNS, proxy, TCP, TLS), stopping at the first failure.

    Uses the same proxy settings and CA bundle as the client. Never takes much longer than `timeout`:
    a step still running then (a DNS lookup that hangs) is reported as timed out.

        probe_control_plane("https://api.modal.com").failure   # Hop(stage='DNS', ok=False, ...)
    """
    parsed = urllib.parse.urlparse(url)
    use_tls = parsed.scheme == "https"
    host = parsed.hostname or ""
    port = parsed.port or (443 if use_tls else 80)
    proxy = _proxy_for(host, use_tls)
    hops: list[Hop] = []
    worker = threading.Thread(target=_walk, args=(hops, host, port, use_tls, proxy, timeout), daemon=True)
    worker.start()
    worker.join(timeout * 2)
    if worker.is_alive():
        stage = _next_stage(hops, proxy, use_tls)
        hops.append(
            Hop(stage, False, f"no answer within {timeout * 2:g}s", "check the network and proxy settings")
        )
    return Reachability(url, proxy, tuple(hops))


def _walk(hops: list[Hop], host: str, port: int, use_tls: bool, proxy: str | None, timeout: float) -> None:
    if proxy is None:
        if not _resolve(hops, host, what=host):
            return
        sock = _connect(hops, host, port, timeout)
    else:
        proxy_host = urllib.parse.urlparse(proxy).hostname or ""
        if not _resolve(hops, proxy_host, what=f"proxy host {proxy_host}"):
            return
        sock = _tunnel(hops, proxy, host, port, timeout)
    if sock is None:
        return
    with sock:
        if use_tls:
            _handshake(hops, sock, host, timeout)


def _resolve(hops: list[Hop], host: str, *, what: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError) as error:
        hops.append(
            Hop(
                "DNS",
                False,
                f"cannot resolve {what}: {error}",
                "check the host name and your DNS; behind a proxy, set HTTPS_PROXY so the proxy resolves it",
            )
        )
        return False
    hops.append(Hop("DNS", True, f"{what} resolves to {', '.join(sorted(addresses))}"))
    return True


def _connect(hops: list[Hop], host: str, port: int, timeout: float) -> socket.socket | None:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        hops.append(
            Hop(
                "connection",
                False,
                f"cannot connect to {host}:{port}: {error.strerror or error}",
                "check MODAL_SERVER_URL and firewalls; if you need a proxy, set HTTPS_PROXY",
            )
        )
        return None
    hops.append(Hop("connection", True, f"connected to {host}:{port} directly (no proxy applies)"))
    return sock


def _tunnel(hops: list[Hop], proxy: str, host: str, port: int, timeout: float) -> socket.socket | None:
    from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
    from python_socks.sync import Proxy

    shown = without_password(proxy)
    try:
        sock = Proxy.from_url(proxy).connect(host, port, timeout=timeout)
    except ProxyConnectionError as error:
        detail, fix = f"cannot reach proxy {shown}: {error}", "check HTTPS_PROXY / ALL_PROXY"
    except ProxyTimeoutError:
        detail, fix = f"proxy {shown} did not answer within {timeout:g}s", "check HTTPS_PROXY / ALL_PROXY"
    except ProxyError as error:
        detail = f"proxy {shown} refused a tunnel to {host}:{port}: {error}"
        fix = f"ask your network admin to allow {host}:{port}, or add {host} to NO_PROXY"
    else:
        hops.append(Hop("proxy", True, f"tunnel to {host}:{port} through {shown}"))
        return sock
    hops.append(Hop("proxy", False, detail, fix))
    return None


def _handshake(hops: list[Hop], sock: socket.socket, host: str, timeout: float) -> None:
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["h2"])
    sock.settimeout(timeout)
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            issuer = dict(item[0] for item in tls.getpeercert()["issuer"])  # type: ignore[index]
    except ssl.SSLCertVerificationError as error:
        hops.append(
            Hop(
                "TLS",
                False,
                f"certificate of {host} not trusted: {error.verify_message}",
                "if a proxy inspects TLS, point SSL_CERT_FILE at a bundle holding its CA "
                "(mini adds it to certifi's for Modal)",
            )
        )
        return
    except TimeoutError:
        hops.append(
            Hop(
                "TLS",
                False,
                f"{host} accepted the connection but the TLS handshake timed out after {timeout:g}s",
                "check that MODAL_SERVER_URL names a TLS endpoint, and any proxy or firewall in between",
            )
        )
        return
    except (ssl.SSLError, OSError) as error:
        hops.append(
            Hop(
                "TLS",
                False,
                f"TLS handshake with {host} failed: {error}",
                "check MODAL_SERVER_URL, and any proxy or firewall in between",
            )
        )
        return
    authority = issuer.get("organizationName") or issuer.get("commonName") or "unknown issuer"
    hops.append(Hop("TLS", True, f"chain of {host} verified (issued by {authority}; CAs: {certifi.where()})"))


def _next_stage(hops: list[Hop], proxy: str | None, use_tls: bool) -> str:
    stages = ["DNS", "proxy" if proxy else "connection"] + (["TLS"] if use_tls else [])
    return stages[min(len(hops), len(stages) - 1)]


def _proxy_for(host: str, use_tls: bool) -> str | None:
    from modal._utils.proxy_support import get_proxy_url

    return get_proxy_url(host, use_ssl=use_tls)


def without_password(url: str) -> str:
    """`url` with any user name and password replaced by `***`, fit to print.

    without_password("http://me:pw@proxy:3128")   # 'http://***@proxy:3128'
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.password is None and parsed.username is None:
        return url
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc += f":{parsed.port}"
    return parsed._replace(netloc=f"***@{netloc}").geturl()


def store_token(token_id: str, token_secret: str, *, profile: str | None = None) -> Path:
    """Store a token in Modal's config file (MODAL_CONFIG_PATH or ~/.modal.toml), owner-only, and activate
    its profile (default: the profile in use). Same as `modal token set --no-verify`; safe to repeat.

    store_token(os.environ["MODAL_TOKEN_ID"], os.environ["MODAL_TOKEN_SECRET"], profile="work")
    """
    import modal.config
    from modal._utils.async_utils import synchronizer
    from modal.token_flow import _set_token

    path = config_path()
    _make_owner_only(path)
    chosen = profile or modal.config._profile
    synchronizer.create_blocking(_set_token)(
        token_id, token_secret, profile=chosen, activate=True, verify=False
    )
    _make_owner_only(path)
    return path


def new_token_interactively(*, profile: str | None = None) -> Path:
    """Run Modal's browser flow (`modal token new`) and store the token it yields, owner-only.

    new_token_interactively(profile="work")   # prints a URL to open, waits for the browser
    """
    from modal._utils.async_utils import synchronizer
    from modal.output import enable_output
    from modal.token_flow import _new_token

    path = config_path()
    _make_owner_only(path)
    try:
        with enable_output():
            synchronizer.create_blocking(_new_token)(profile=profile, activate=True, verify=True)
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


def _close_stdin() -> None:
    # A check must never wait for a prompt: anything that reads stdin gets end-of-file at once.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - replaces the process's stdin for its lifetime


def main(argv: Sequence[str] | None = None) -> int:
    """`./go auth [--check] [--profile NAME] [--timeout S]`; returns the exit status.

    sys.exit(main(["--check"]))
    """
    parser = argparse.ArgumentParser(
        prog="./go auth",
        description="Store the Modal token (from MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, else Modal's browser "
        "flow), or check it with --check.",
    )
    parser.add_argument("--check", action="store_true", help="check the token Modal would use; store nothing")
    parser.add_argument("--profile", help="Modal profile to store the token in (default: the active one)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per step (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except TrustStoreError as error:
        print(f"./go auth: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.check:
        _close_stdin()
        check = check_token(timeout=args.timeout)
        print(check)
        return _EXIT_STATUS[check.status]
    ensure_grpc_trusts_system_ca()
    token_id, token_secret = os.environ.get("MODAL_TOKEN_ID"), os.environ.get("MODAL_TOKEN_SECRET")
    if token_id and token_secret:
        path = store_token(token_id, token_secret, profile=args.profile)
        print(f"stored token {token_id} in {path} (owner-only); check it with `./go auth --check`")
        return 0
    if token_id or token_secret:
        print("./go auth: set both MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or neither.", file=sys.stderr)
        return 2
    from modal.exception import Error

    try:
        path = new_token_interactively(profile=args.profile)
    except Error as error:
        print(f"./go auth: Modal's token flow failed: {error}", file=sys.stderr)
        return 1
    print(f"stored the new token in {path} (owner-only); check it with `./go auth --check`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
