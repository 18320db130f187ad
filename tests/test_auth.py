"""`mini auth` (`./go auth` runs it) and `mini auth --check` against the emulator over TLS (throwaway CA)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import toml

from tests.emulator.server import TOKEN_ID, TOKEN_SECRET
from tests.support.connect_proxy import run_connect_proxy
from tests.support.tls_emulator import TlsEmulator, run_mini, serve_tls_emulator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEmulator]:
    with serve_tls_emulator(tmp_path_factory.mktemp("throwaway-ca")) as served:
        yield served


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_mini(["auth", "--check", "--timeout", "5"], env)


def test_check_accepts_the_emulators_token(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    result = check(tls_emulator.environment(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("token found and accepted:")
    assert TOKEN_SECRET not in result.stdout + result.stderr


def test_check_reports_a_rejected_token(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    result = check(tls_emulator.environment(tmp_path, MODAL_TOKEN_SECRET="as-wrong-secret"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("token found but rejected:")
    assert "fix:" in result.stdout
    assert "as-wrong-secret" not in result.stdout + result.stderr


def test_check_reports_no_token(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    empty = tmp_path / "modal.toml"
    empty.write_text("")
    env = tls_emulator.environment(
        tmp_path, MODAL_TOKEN_ID=None, MODAL_TOKEN_SECRET=None, MODAL_CONFIG_PATH=str(empty)
    )
    result = check(env)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("no token:")
    assert "./go auth" in result.stdout


@pytest.mark.parametrize(
    ("server", "stage"),
    [("https://localhost:{closed}", "connection"), ("https://nonexistent.invalid", "DNS")],
)
def test_check_reports_an_unreachable_control_plane(
    tls_emulator: TlsEmulator, tmp_path: Path, closed_port: int, server: str, stage: str
) -> None:
    env = tls_emulator.environment(tmp_path, MODAL_SERVER_URL=server.format(closed=closed_port))
    result = check(env)
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stdout.startswith(f"Modal unreachable ({stage}):")
    assert "fix:" in result.stdout


def test_check_gives_up_on_a_server_that_never_answers(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nothing ever answers them
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = check(tls_emulator.environment(tmp_path, MODAL_SERVER_URL=url))
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stdout.startswith(f"Modal unreachable (control plane): {url}: no answer to ClientHello")


def test_check_names_an_untrusted_certificate(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    result = check(tls_emulator.environment(tmp_path, SSL_CERT_FILE=None))
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stdout.startswith("Modal unreachable (TLS): certificate of localhost not trusted")
    assert "SSL_CERT_FILE" in result.stdout


def test_check_names_a_dead_proxy(tls_emulator: TlsEmulator, tmp_path: Path, closed_port: int) -> None:
    result = check(tls_emulator.environment(tmp_path, HTTPS_PROXY=f"http://127.0.0.1:{closed_port}"))
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stdout.startswith(
        f"Modal unreachable (proxy): cannot reach proxy http://127.0.0.1:{closed_port}"
    )


def test_check_skips_the_proxy_for_no_proxy_hosts(
    tls_emulator: TlsEmulator, tmp_path: Path, closed_port: int
) -> None:
    env = tls_emulator.environment(
        tmp_path, HTTPS_PROXY=f"http://127.0.0.1:{closed_port}", NO_PROXY="localhost"
    )
    result = check(env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_goes_through_the_proxy(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    with run_connect_proxy() as proxy:
        result = check(tls_emulator.environment(tmp_path, HTTPS_PROXY=proxy.url))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"localhost:{tls_emulator.emulator.port}" in proxy.tunnels


def test_an_unsafe_trust_store_cache_is_mini_s_error_not_an_answer_of_the_check(
    tls_emulator: TlsEmulator, tmp_path: Path
) -> None:
    # Exit 1 would read as "token rejected" to a script: a trust store mini cannot use has mini's own code.
    cache = tmp_path / "cache"
    (cache / "mini").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (cache / "mini" / "tls").symlink_to(tmp_path / "elsewhere")
    result = check(tls_emulator.environment(cache))
    assert result.returncode == 6, result.stdout + result.stderr
    assert result.stderr.startswith("mini auth: ") and "not a directory owned by you" in result.stderr


def test_check_closes_stdin(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    # stdin is a pipe that never ends: reading it after the check returns only because the check closed it.
    script = "import sys; from mini.cli import main; main(['auth', '--check']); print(repr(sys.stdin.read()))"
    reader, writer = os.pipe()
    try:
        result = subprocess.run(
            [sys.executable, "-c", script],
            stdin=reader,
            env=tls_emulator.environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(reader)
        os.close(writer)
    assert result.stdout.splitlines()[-1] == "''", result.stdout + result.stderr


def _go_auth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "go"), "auth", *args], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT
    )


def test_go_auth_stores_the_token_owner_only_without_printing_the_secret(
    tls_emulator: TlsEmulator, tmp_path: Path
) -> None:
    config = tmp_path / "home" / ".modal.toml"
    config.parent.mkdir()
    env = tls_emulator.environment(tmp_path, MODAL_CONFIG_PATH=str(config))
    first = _go_auth(env, "--profile", "emulator")
    assert first.returncode == 0, first.stdout + first.stderr
    assert TOKEN_SECRET not in first.stdout + first.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    stored = toml.loads(config.read_text())
    assert stored["emulator"]["token_id"] == TOKEN_ID
    assert stored["emulator"]["token_secret"] == TOKEN_SECRET
    assert stored["emulator"]["active"] is True
    written = config.read_text()
    again = _go_auth(env, "--profile", "emulator")
    assert again.returncode == 0, again.stdout + again.stderr
    assert config.read_text() == written
    # The stored token is the one a later check finds, with nothing in the environment.
    later = check({name: value for name, value in env.items() if not name.startswith("MODAL_TOKEN_")})
    assert later.stdout.startswith("token found and accepted:"), later.stdout + later.stderr


def test_go_auth_tightens_an_existing_config_and_keeps_other_profiles(
    tls_emulator: TlsEmulator, tmp_path: Path
) -> None:
    config = tmp_path / "modal.toml"
    config.write_text('[work]\ntoken_id = "ak-work"\ntoken_secret = "as-work"\nactive = true\n')
    config.chmod(0o644)
    env = tls_emulator.environment(tmp_path, MODAL_CONFIG_PATH=str(config))
    result = run_mini(["auth", "--profile", "emulator"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    stored = toml.loads(config.read_text())
    assert stored["work"]["token_id"] == "ak-work"
    assert "active" not in stored["work"]
    assert stored["emulator"]["active"] is True


def test_go_auth_refuses_half_a_token(tls_emulator: TlsEmulator, tmp_path: Path) -> None:
    config = tmp_path / "modal.toml"
    env = tls_emulator.environment(tmp_path, MODAL_TOKEN_SECRET=None, MODAL_CONFIG_PATH=str(config))
    result = run_mini(["auth"], env)
    assert result.returncode == 2
    assert "set both MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" in result.stderr
    assert not config.exists()


def test_without_a_token_in_the_environment_auth_starts_modals_token_flow(
    tls_emulator: TlsEmulator, tmp_path: Path
) -> None:
    # The emulator has no browser flow: it refuses the anonymous TokenFlowCreate call, which shows the
    # flow started (over TLS, against the configured server) and that its failure is reported plainly.
    config = tmp_path / "modal.toml"
    env = tls_emulator.environment(
        tmp_path, MODAL_TOKEN_ID=None, MODAL_TOKEN_SECRET=None, MODAL_CONFIG_PATH=str(config)
    )
    with tls_emulator.emulator.recorder.counting() as rpcs:
        result = run_mini(["auth"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert rpcs["TokenFlowCreate"] >= 1
    assert "mini auth: Modal's token flow failed:" in result.stderr
    assert "Traceback" not in result.stderr
