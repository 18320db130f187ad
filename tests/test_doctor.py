"""`mini doctor`: one line per check, a fix under each failure, and an answer even when nothing answers."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from uv import find_uv_bin

from mini.cli.doctor import _satisfies
from tests.support.tls_emulator import TlsEmulator, run_mini, serve_tls_emulator


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEmulator]:
    with serve_tls_emulator(tmp_path_factory.mktemp("throwaway-ca")) as served:
        yield served


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A locked project with no dependencies (locking it needs no network)."""
    root = tmp_path / "project"
    (root / "src" / "demo").mkdir(parents=True)
    (root / "src" / "demo" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0.1.0"\nrequires-python = ">=3.10"\ndependencies = []\n'
    )
    uv = shutil.which("uv")
    assert uv is not None, "these tests need uv on PATH"
    subprocess.run([uv, "lock", "--offline", "--quiet"], cwd=root, check=True)
    return root


def doctor(env: dict[str, str], cwd: Path) -> tuple[int, dict[str, str], str]:
    """Run `mini doctor`; return its exit status, {check name: its row} and the whole output."""
    result = run_mini(["doctor", "--timeout", "2"], env, cwd=cwd)
    lines: dict[str, str] = {}
    for line in result.stdout.splitlines():
        cells = _cells(line)
        if len(cells) == 3 and cells[0] in ("ok", "FAIL", "skip"):
            lines[cells[1]] = line
    return result.returncode, lines, result.stdout + result.stderr


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")]


def _verdict(line: str) -> str:
    return _cells(line)[0]


def test_everything_fine(tls_emulator: TlsEmulator, project: Path, tmp_path: Path) -> None:
    status, lines, output = doctor(tls_emulator.environment(tmp_path), project)
    assert status == 0, output
    expected = [
        "Python",
        "uv",
        "lock & image",
        "trust store",
        "proxy settings",
        "DNS",
        "connection",
        "TLS",
        "token",
    ]
    assert list(lines) == expected, output
    assert all(_verdict(line) == "ok" for line in lines.values()), output
    assert "token found and accepted" in lines["token"]
    assert "localhost resolves to" in lines["DNS"]


def test_uv_is_found_without_it_on_path(tls_emulator: TlsEmulator, project: Path, tmp_path: Path) -> None:
    # A notebook kernel or cron job often runs without the environment's bin/ on PATH: the uv that mini's
    # own dependency installed is the one mini runs, so it is the one the report names.
    path = "/usr/bin:/bin"
    assert shutil.which("uv", path=path) is None, "this test needs a PATH without uv"
    status, lines, output = doctor(tls_emulator.environment(tmp_path, PATH=path), project)
    assert _verdict(lines["uv"]) == "ok", output
    assert find_uv_bin() in lines["uv"], output
    assert _verdict(lines["lock & image"]) == "ok", output


def test_unreachable_control_plane_is_reported_with_fixes(
    tls_emulator: TlsEmulator, project: Path, tmp_path: Path
) -> None:
    env = tls_emulator.environment(tmp_path, MODAL_SERVER_URL="https://nonexistent.invalid")
    status, lines, output = doctor(env, project)
    assert status == 1
    assert _verdict(lines["DNS"]) == "FAIL"
    assert _verdict(lines["connection"]) == "skip"
    assert _verdict(lines["TLS"]) == "skip"
    assert _verdict(lines["token"]) == "skip"
    rows = output.splitlines()
    under_dns = _cells(rows[rows.index(lines["DNS"]) + 1])
    assert under_dns[:2] == ["", ""] and under_dns[2].startswith("fix: check the host name and your DNS")


def test_a_server_that_never_answers_is_reported_not_waited_on(
    tls_emulator: TlsEmulator, project: Path, tmp_path: Path
) -> None:
    # Accepts TCP connections (the kernel completes them) but never speaks TLS.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        env = tls_emulator.environment(
            tmp_path, MODAL_SERVER_URL=f"https://localhost:{silent.getsockname()[1]}"
        )
        status, lines, output = doctor(env, project)
    assert status == 1
    assert _verdict(lines["connection"]) == "ok"
    assert _verdict(lines["TLS"]) == "FAIL"
    assert "timed out" in lines["TLS"], output


def test_missing_lock_token_and_trust_bundle(
    tls_emulator: TlsEmulator, project: Path, tmp_path: Path
) -> None:
    (project / "uv.lock").unlink()
    empty = tmp_path / "modal.toml"
    empty.write_text("")
    env = tls_emulator.environment(
        tmp_path,
        MODAL_TOKEN_ID=None,
        MODAL_TOKEN_SECRET=None,
        MODAL_CONFIG_PATH=str(empty),
        REQUESTS_CA_BUNDLE=str(tmp_path / "gone.pem"),
    )
    status, lines, output = doctor(env, project)
    assert status == 1
    assert _verdict(lines["lock & image"]) == "FAIL"
    assert "no uv.lock" in lines["lock & image"] and "uv lock" in lines["lock & image"]
    assert _verdict(lines["token"]) == "FAIL"
    assert "no token" in lines["token"]
    assert "fix: run `./go auth`" in output
    assert _verdict(lines["trust store"]) == "FAIL"
    assert "gone.pem: no such file" in lines["trust store"]


def test_proxy_settings_are_shown_without_passwords(
    tls_emulator: TlsEmulator, project: Path, tmp_path: Path
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://me:hunter2@127.0.0.1:{closed.getsockname()[1]}"
        status, lines, output = doctor(tls_emulator.environment(tmp_path, HTTPS_PROXY=proxy), project)
    assert status == 1
    assert "hunter2" not in output
    assert "HTTPS_PROXY=http://***@127.0.0.1" in lines["proxy settings"]
    assert _verdict(lines["proxy"]) == "FAIL"
    assert "cannot reach proxy http://***@127.0.0.1" in lines["proxy"]


def test_python_version_bounds() -> None:
    assert _satisfies((3, 11, 7), ">=3.10,<3.16")
    assert not _satisfies((3, 9, 18), ">=3.10")
    assert not _satisfies((3, 16, 0), "<3.16,>=3.10")
    assert _satisfies((3, 11, 2), "==3.11")
