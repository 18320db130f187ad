"""Can this machine reach Modal's control plane? A step-by-step probe: DNS, proxy, TCP, TLS.

    reachability = probe_control_plane("https://api.modal.com", timeout=5)
    reachability.failure        # the first step that failed, with a fix; None if all went through

Used by `mini doctor` and by the token check to say *why* Modal is unreachable.
"""

from __future__ import annotations

import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass

DEFAULT_TIMEOUT = 10.0


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
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
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
            issuer = _names((tls.getpeercert() or {}).get("issuer"))
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


def _names(rdns: object) -> dict[str, str]:
    """`{"organizationName": "Example CA", ...}` from a certificate's `issuer` as `getpeercert()` gives it."""
    if not isinstance(rdns, tuple):
        return {}
    return {str(rdn[0][0]): str(rdn[0][1]) for rdn in rdns if rdn}


def _next_stage(hops: list[Hop], proxy: str | None, use_tls: bool) -> str:
    stages = ["DNS", "proxy" if proxy else "connection"] + (["TLS"] if use_tls else [])
    return stages[min(len(hops), len(stages) - 1)]


def _proxy_for(host: str, use_tls: bool) -> str | None:
    from mini.modal_backend._private import get_proxy_url

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
