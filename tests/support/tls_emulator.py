"""The emulator served over TLS with a certificate from a throwaway CA that only `ca_bundle` holds.

from tests.support.tls_emulator import tls_emulator  # noqa: F401  (the fixture)

def test_x(tls_emulator, tmp_path):
    env = tls_emulator.environment(tmp_path)     # for a subprocess running the real modal client
    run_mini(["auth", "--check"], env)           # `mini auth --check` in a fresh interpreter
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.emulator.server import Emulator, run_emulator

# Settings of the machine running the tests that would change which CAs or proxies a client uses.
_INHERITED_TRUST_AND_PROXY = {
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "MODAL_PROFILE",
}


@dataclass(frozen=True)
class TlsEmulator:
    emulator: Emulator
    ca_bundle: Path

    def environment(self, cache_home: Path, **overrides: str | None) -> dict[str, str]:
        """Environment for a subprocess: the emulator's variables, SSL_CERT_FILE = the throwaway CA only,
        no inherited proxy or CA settings, XDG_CACHE_HOME = `cache_home`; an override of None unsets."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name.upper() not in _INHERITED_TRUST_AND_PROXY
        }
        env.update(self.emulator.client_variables())
        env.update(SSL_CERT_FILE=str(self.ca_bundle), XDG_CACHE_HOME=str(cache_home))
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env


@contextlib.contextmanager
def serve_tls_emulator(directory: Path) -> Iterator[TlsEmulator]:
    """Make a throwaway CA (its certificate goes to `directory`/ca.pem) and serve the emulator with it."""
    authority = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("localhost").configure_cert(server_context)
    bundle = directory / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    with run_emulator(ssl_context=server_context) as emulator:
        yield TlsEmulator(emulator, bundle)


def run_python(
    args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run this interpreter with `args` in `env`; the timeout only stops a hung test, it asserts nothing."""
    return subprocess.run(
        [sys.executable, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=180
    )


_MINI = "import sys; from mini.cli import main; sys.exit(main(sys.argv[1:]))"


def run_mini(
    args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `mini ARGS` with this interpreter in `env` (as `run_python` does)."""
    return run_python(["-c", _MINI, *args], env, cwd=cwd)
