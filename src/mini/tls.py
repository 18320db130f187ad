"""Make Modal's client trust the system's certificate authorities as well as certifi's.

Behind a TLS-inspecting proxy the proxy's CA is in the system trust store (or in `SSL_CERT_FILE`), but
grpclib and Modal's blob client build their TLS contexts from `certifi.where()` alone, so every call
fails with CERTIFICATE_VERIFY_FAILED while curl and pip work. Call this before the first connection:

    from mini.tls import ensure_grpc_trusts_system_ca
    ensure_grpc_trusts_system_ca()      # then modal.App(...).run() etc.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from mini.errors import MiniError
from mini.project import atomic_write

# Environment variables that name a CA bundle, in the order curl, OpenSSL and requests consult them.
CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)


class TrustStoreError(MiniError):
    """The per-user cache directory for the combined bundle is unsafe or cannot be written."""


def ca_sources() -> list[tuple[str, Path]]:
    """The system CA bundles to add to certifi's, as (where it came from, path); only files that exist.

    ca_sources()   # [('SSL_CERT_FILE', PosixPath('/etc/ssl/certs/ca-certificates.crt')), ...]
    """
    named = [(name, os.environ.get(name, "")) for name in CA_BUNDLE_VARIABLES]
    named.append(("platform default", ssl.get_default_verify_paths().openssl_cafile))
    sources: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for origin, value in named:
        if not value or not Path(value).is_file():
            continue
        path = Path(value).resolve()
        if path not in seen:
            seen.add(path)
            sources.append((origin, path))
    return sources


def combined_bundle(base_pem: str, extra_pems: Iterable[tuple[str, str]]) -> str | None:
    """`base_pem` followed by each certificate of `extra_pems` it lacks; None when it lacks none.

    The base text is kept byte for byte, so the result trusts everything the base trusts.

        combined_bundle(certifi_text, [("SSL_CERT_FILE", proxy_ca_text)])
    """
    known = {_fingerprint(body) for body in _PEM_CERTIFICATE.findall(base_pem)}
    sections: list[str] = []
    for origin, text in extra_pems:
        added: list[str] = []
        for body in _PEM_CERTIFICATE.findall(text):
            fingerprint = _fingerprint(body)
            if fingerprint not in known:
                known.add(fingerprint)
                added.append(f"-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n")
        if added:
            sections.append(f"\n# Added by mini from {origin}\n" + "".join(added))
    if not sections:
        return None
    return base_pem.rstrip("\n") + "\n" + "".join(sections)


def ensure_grpc_trusts_system_ca() -> Path | None:
    """Point Modal's TLS contexts (gRPC channel and blob transfers) at certifi's CAs plus the system's.

    Writes the combined bundle into a per-user cache directory (owner-only) and makes `certifi.where()`
    return it in this process; certifi's own file is never touched. Returns the bundle's path, or None
    when the system adds nothing to certifi (then nothing is changed). Safe to call repeatedly.

        ensure_grpc_trusts_system_ca()   # PosixPath('/home/me/.cache/mini/tls/ca-bundle-3f2a....pem')
    """
    import certifi

    original: Callable[[], str] = getattr(certifi.where, "__wrapped__", certifi.where)
    base_pem = Path(original()).read_text(encoding="ascii", errors="replace")
    extras = [(f"{origin} ({path})", _read(path)) for origin, path in ca_sources()]
    bundle = combined_bundle(base_pem, extras)
    if bundle is None:
        certifi.where = original
        return None
    path = _write_bundle(bundle)

    # grpclib and modal call certifi.where() each time they build a context, so this reaches both.
    def where() -> str:
        return str(path)

    where.__wrapped__ = original  # type: ignore[attr-defined]
    certifi.where = where
    return path


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/mini/tls` (default `~/.cache/mini/tls`), created owner-only and checked to be ours.

    cache_dir()   # PosixPath('/home/me/.cache/mini/tls')
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = base / "mini" / "tls"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    # Windows has no uids; there the user profile's own ACLs guard the directory.
    ours = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    if not stat.S_ISDIR(info.st_mode) or not ours:
        raise TrustStoreError(
            f"{directory} is not a directory owned by you, so a CA bundle written there could be swapped "
            "by someone else. Remove it or set XDG_CACHE_HOME to a directory of your own."
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        directory.chmod(0o700)
    return directory


def _write_bundle(bundle: str) -> Path:
    """Write `bundle` once under a name derived from its content, atomically and owner-only."""
    directory = cache_dir()
    digest = hashlib.sha256(bundle.encode()).hexdigest()[:16]
    path = directory / f"ca-bundle-{digest}.pem"
    if path.is_file() and _read(path) == bundle:
        return path
    atomic_write(path, bundle.encode("ascii"))  # owner-only, as every file it writes
    return path


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def _fingerprint(pem_body: str) -> str:
    return "".join(pem_body.split())
