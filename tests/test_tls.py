"""mini.tls: the real modal client trusts a CA that only the system bundle (SSL_CERT_FILE) holds.

Each real-client check runs in its own process, because the fix changes `certifi.where` process-wide.
"""

from __future__ import annotations

import hashlib
import http.server
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
import trustme

import mini.tls
from mini.tls import TrustStoreError, combined_bundle, ensure_grpc_trusts_system_ca
from tests.support.connect_proxy import run_connect_proxy
from tests.support.tls_emulator import TlsEmulator, run_python, serve_tls_emulator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEmulator]:
    with serve_tls_emulator(tmp_path_factory.mktemp("throwaway-ca")) as served:
        yield served


# Connects with the real client (one attempt, not a minute of retries) and prints what happened,
# including the chain of causes that modal wraps the TLS error in.
CLIENT_HELLO = """
import sys
import modal._utils.async_utils
modal._utils.async_utils.RETRY_N_ATTEMPTS_OVERRIDE = 1
if sys.argv[1] == "fixed":
    from mini.tls import ensure_grpc_trusts_system_ca
    print("bundle", ensure_grpc_trusts_system_ca())
import modal
try:
    modal.Client.from_env().hello()
except Exception as error:
    while error is not None:
        print("failed", repr(error))
        error = error.__cause__ or error.__context__
    sys.exit(1)
print("connected")
"""


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _certifi_file() -> str:
    # certifi's own bundle, even if an earlier test in this process (a ModalApparatus) applied the fix.
    return getattr(certifi.where, "__wrapped__", certifi.where)()


def test_the_real_client_fails_without_the_fix(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    result = run_python(["-c", CLIENT_HELLO, "plain"], tls_emulator.environment(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout


def test_the_real_client_connects_with_the_fix(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    certifi_before = _sha256(_certifi_file())
    result = run_python(["-c", CLIENT_HELLO, "fixed"], tls_emulator.environment(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "connected"
    bundle = Path(result.stdout.split("bundle ", 1)[1].splitlines()[0])
    assert bundle.parent == tmp_path / "mini" / "tls"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.parent.stat().st_mode) == 0o700
    assert bundle.read_text().startswith(Path(_certifi_file()).read_text().rstrip("\n"))
    assert tls_emulator.ca_bundle.read_text().strip() in bundle.read_text()
    assert _sha256(_certifi_file()) == certifi_before


def test_the_fix_works_through_a_connect_proxy(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    with run_connect_proxy() as proxy:
        env = tls_emulator.environment(tmp_path, HTTPS_PROXY=proxy.url)
        result = run_python(["-c", CLIENT_HELLO, "fixed"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"localhost:{tls_emulator.emulator.port}" in proxy.tunnels


def test_without_the_fix_the_proxied_client_still_rejects_the_ca(
    tls_emulator: TlsEmulator, tmp_path: Path
) -> None:
    with run_connect_proxy() as proxy:
        env = tls_emulator.environment(tmp_path, HTTPS_PROXY=proxy.url)
        result = run_python(["-c", CLIENT_HELLO, "plain"], env)
    assert result.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout
    assert proxy.tunnels, "the client did not go through the proxy"


# Modal moves blobs (big arguments, mounted files) with its own aiohttp client; the fix must reach it.
BLOB_GET = """
import asyncio, sys
if sys.argv[1] == "fixed":
    from mini.tls import ensure_grpc_trusts_system_ca
    ensure_grpc_trusts_system_ca()
from modal._utils.http_utils import _http_client_with_tls

async def fetch(url):
    async with _http_client_with_tls(timeout=30) as session, session.get(url) as response:
        return await response.text()

try:
    print(asyncio.run(fetch(sys.argv[2])))
except Exception as error:
    print("failed", repr(error))
    sys.exit(1)
"""


@pytest.fixture
def https_blob_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server answering "blob", its certificate from a fresh throwaway CA; yields (url, CA file)."""
    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "blob-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))

    class Blob(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"blob")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Blob)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}/blob", ca_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(("mode", "expected"), [("plain", "CERTIFICATE_VERIFY_FAILED"), ("fixed", "blob")])
def test_blob_transfers_trust_the_system_ca_only_with_the_fix(
    tls_emulator: TlsEmulator, https_blob_server: tuple[str, Path], tmp_path: Path, mode: str, expected: str
) -> None:
    url, ca_file = https_blob_server
    env = tls_emulator.environment(tmp_path, SSL_CERT_FILE=str(ca_file))
    result = run_python(["-c", BLOB_GET, mode, url], env)
    assert expected in result.stdout, result.stdout + result.stderr
    assert result.returncode == (0 if mode == "fixed" else 1)


# `modal ...` as installed, but connecting once instead of retrying for a minute.
BARE_MODAL_CLI = """
import sys
import modal._utils.async_utils
modal._utils.async_utils.RETRY_N_ATTEMPTS_OVERRIDE = 1
from modal.__main__ import main
sys.argv[0] = "modal"
main()
"""


def test_bin_modal_trusts_the_system_ca_where_modal_does_not(
    tls_emulator: TlsEmulator, tmp_path: Path
) -> None:
    emulator = tls_emulator.emulator
    config = tmp_path / "modal.toml"
    arguments = ["token", "set", "--token-id", "ak-emulator", "--token-secret", "as-emulator"]
    env = tls_emulator.environment(tmp_path, MODAL_PROFILE="emulator", MODAL_CONFIG_PATH=str(config))
    bare = run_python(["-c", BARE_MODAL_CLI, *arguments], env)
    assert bare.returncode != 0
    assert "Could not connect" in bare.stdout + bare.stderr
    wrapped = subprocess.run(
        [str(ROOT / "bin" / "modal"), *arguments], env=env, capture_output=True, text=True, timeout=180
    )
    assert wrapped.returncode == 0, wrapped.stdout + wrapped.stderr
    assert "Token verified successfully" in wrapped.stdout
    assert "ak-emulator" in config.read_text()
    assert emulator.url in config.read_text()


# In-process checks below: monkeypatch restores certifi.where, so nothing leaks into other tests.


@pytest.fixture
def isolated_trust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No inherited CA settings; the cache under tmp_path; certifi.where restored afterwards."""
    monkeypatch.setattr(certifi, "where", getattr(certifi.where, "__wrapped__", certifi.where))
    for name in (*mini.tls.CA_BUNDLE_VARIABLES, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "mini" / "tls"


def test_repeated_calls_write_one_owner_only_bundle(isolated_trust: Path, tmp_path: Path) -> None:
    authority = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(authority))
    original = certifi.where()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(authority))
        first = ensure_grpc_trusts_system_ca()
        second = ensure_grpc_trusts_system_ca()
    assert first == second
    assert first is not None
    assert certifi.where() == str(first)
    assert certifi.where.__wrapped__() == original  # type: ignore[attr-defined]
    assert [path.name for path in isolated_trust.iterdir()] == [first.name]
    assert stat.S_IMODE(first.stat().st_mode) == 0o600


def test_nothing_beyond_certifi_changes_nothing(
    isolated_trust: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = certifi.where
    only_certifi = ssl.DefaultVerifyPaths(certifi.where(), None, "SSL_CERT_FILE", certifi.where(), "", "")
    monkeypatch.setattr(mini.tls.ssl, "get_default_verify_paths", lambda: only_certifi)
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert ensure_grpc_trusts_system_ca() is None
    assert certifi.where is original
    assert not isolated_trust.exists()


def test_a_cache_directory_that_is_a_symlink_is_refused(isolated_trust: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    isolated_trust.parent.mkdir(parents=True)
    isolated_trust.symlink_to(elsewhere)
    with pytest.raises(TrustStoreError, match="not a directory owned by you"):
        mini.tls.cache_dir()


def test_a_loose_cache_directory_is_made_owner_only(isolated_trust: Path) -> None:
    isolated_trust.mkdir(parents=True, mode=0o777)
    isolated_trust.chmod(0o777)
    assert mini.tls.cache_dir() == isolated_trust
    assert stat.S_IMODE(isolated_trust.stat().st_mode) == 0o700


def test_combined_bundle_keeps_the_base_and_adds_only_new_certificates() -> None:
    first, second = (trustme.CA().cert_pem.bytes().decode() for _ in range(2))
    base = "# certifi\n" + first
    combined = combined_bundle(base, [("SSL_CERT_FILE", first + second), ("platform default", second)])
    assert combined is not None
    assert combined.startswith(base)
    assert combined.count("BEGIN CERTIFICATE") == 2
    assert "# Added by mini from SSL_CERT_FILE" in combined
    assert "platform default" not in combined
    assert combined_bundle(base, [("SSL_CERT_FILE", first)]) is None


def test_blob_transfers_through_a_connect_proxy(
    tls_emulator: TlsEmulator, https_blob_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, ca_file = https_blob_server
    with run_connect_proxy() as proxy:
        env = tls_emulator.environment(tmp_path, SSL_CERT_FILE=str(ca_file), HTTPS_PROXY=proxy.url)
        result = run_python(["-c", BLOB_GET, "fixed", url], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "blob"
    assert proxy.tunnels == [url.split("/")[2]]
