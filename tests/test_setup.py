"""The set-up a newcomer meets: `./go` and `bin/mini` find uv (installing it once), make it trust the system's
certificate store, and work where no certificate variable is set (behind a TLS-inspecting proxy)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def without_certificate_variables(env: dict[str, str]) -> dict[str, str]:
    """`env` less every variable that names CAs for a TLS client (SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
    SSL_CERT_DIR, CURL_CA_BUNDLE, PIP_CERT, ...) or tells uv which store to use: only the system's is left."""
    naming_cas = re.compile(r"CERT|CA_BUNDLE|CA_CERTS|SSL_ROOTS|^UV_NATIVE_TLS$|^UV_SYSTEM_CERTS$")
    kept = {key: value for key, value in env.items() if not naming_cas.search(key)}
    kept["PIP_CONFIG_FILE"] = os.devnull  # a pip.conf may name a bundle too
    return kept


def copy_of_the_scripts(tmp_path: Path, pyproject: str | None = None) -> Path:
    """A fresh checkout's files (no .venv): ./go, bin/, and the project (or a small one of `pyproject`)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(ROOT / "go", project / "go")
    shutil.copytree(ROOT / "bin", project / "bin")
    if pyproject is None:
        for name in ("pyproject.toml", "uv.lock", "README.md"):
            shutil.copy2(ROOT / name, project / name)
        shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        (project / "pyproject.toml").write_text(pyproject)
    return project


FAKE_UV = """#!/usr/bin/env bash
# Records how it was called, then does nothing.
args="$*"
{ echo "ARGS ${args//$'\n'/ }"; env | grep -E '^UV_(SYSTEM_CERTS|NATIVE_TLS)=' | sort; echo END; } \
  >> "$UV_RECORD"
"""


def fake_uv_first_on_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    (folder / "uv").write_text(FAKE_UV)
    (folder / "uv").chmod(0o755)
    record = tmp_path / "uv-calls"
    env = without_certificate_variables(dict(os.environ))
    env.update(PATH=f"{folder}{os.pathsep}{env['PATH']}", UV_RECORD=str(record))
    return env, record


def recorded_calls(record: Path) -> list[tuple[str, list[str]]]:
    calls = []
    for block in record.read_text().split("END\n"):
        if block.strip():
            first, *variables = block.strip().splitlines()
            calls.append((first.removeprefix("ARGS "), variables))
    return calls


def test_uv_always_runs_with_the_system_certificate_store(tmp_path):
    project = copy_of_the_scripts(tmp_path)
    env, record = fake_uv_first_on_path(tmp_path)
    for command in (["./go", "install"], ["./go", "test", "-q"], ["bin/mini", "ls"], ["bin/modal", "--help"]):
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    calls = recorded_calls(record)
    assert [args.split()[:2] for args, _ in calls] == [
        ["lock", "--check"],
        ["sync", "--frozen"],  # ./go install
        ["lock", "--check"],
        ["sync", "--frozen"],
        ["run", "--frozen"],  # ./go test
        ["lock", "--check"],
        ["sync", "--frozen"],
        ["run", "--quiet"],  # bin/mini ls (no .venv yet)
        ["lock", "--check"],
        ["run", "--quiet"],  # bin/modal
    ]
    for args, variables in calls:
        assert variables == ["UV_NATIVE_TLS=1", "UV_SYSTEM_CERTS=1"], f"uv {args}"


def test_a_users_own_choice_of_certificate_store_is_kept(tmp_path):
    project = copy_of_the_scripts(tmp_path)
    env, record = fake_uv_first_on_path(tmp_path)
    done = subprocess.run(
        ["./go", "install"], cwd=project, env={**env, "UV_SYSTEM_CERTS": "0"}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert {tuple(variables) for _, variables in recorded_calls(record)} == {("UV_SYSTEM_CERTS=0",)}


@pytest.mark.parametrize(
    ("version", "vendored", "flags"),
    [
        ("23.3", True, "--use-feature=truststore"),  # vendored, but only used when asked
        ("23.2.1", False, ""),  # the feature needs truststore installed: asking would fail
        ("24.2", True, ""),  # the system store is the default
    ],
)
def test_pip_is_asked_to_trust_the_system_store_where_it_can(tmp_path, version, vendored, flags):
    pip = tmp_path / "pip"
    (pip / "_vendor").mkdir(parents=True)
    (pip / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (pip / "_vendor" / "__init__.py").write_text("")
    if vendored:
        (pip / "_vendor" / "truststore").mkdir()
        (pip / "_vendor" / "truststore" / "__init__.py").write_text("")
    done = subprocess.run(
        ["bash", "-c", f"source {ROOT / 'bin' / '_uv.bash'}; _mini_pip_trust_flags {sys.executable}"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == flags, done.stderr


def test_uv_is_installed_once_then_found_where_pip_put_it(tmp_path):
    """A machine without uv: the first command installs it with pip (here from a wheel of the uv this suite
    runs, so no network is needed), and later ones find it there or in the project's environment."""
    project = copy_of_the_scripts(tmp_path)
    wheels = tmp_path / "wheels"
    wheel_of_the_installed_uv(wheels)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": path_without_uv(),
        "UV_CACHE_DIR": uv_cache_dir(),  # the packages themselves come from the warm cache
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
    }
    env.pop("MINI_PROJECT", None)

    def bin_mini_ls(**changes: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bin/mini", "ls"],
            cwd=project,
            env={**env, **changes},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "no runs recorded" in done.stdout
        return done

    first = bin_mini_ls()
    assert "bin/mini: uv not found; installing it once with" in first.stderr
    assert (home / ".local" / "bin" / "uv").is_file(), "pip installed it in the user base"

    shutil.rmtree(project / ".venv")
    again = bin_mini_ls()
    assert "installing" not in again.stderr, "found the uv pip installed before"

    other_home = tmp_path / "other-home"
    other_home.mkdir()
    venv = bin_mini_ls(HOME=str(other_home))
    assert "installing" not in venv.stderr, "found the project environment's own uv"
    go = subprocess.run(
        ["./go", "install"],
        cwd=project,
        env={**env, "HOME": str(other_home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert go.returncode == 0 and "installing" not in go.stderr, go.stderr


def test_the_set_up_downloads_with_no_certificate_variables_set(tmp_path):
    """`./go install` fetching a package from the registry with a cold cache and no certificate variable.
    Where a TLS-inspecting proxy stands in between (as on our CI machines), only the system's store trusts
    it: this fails unless uv is told to use that store."""
    project = copy_of_the_scripts(
        tmp_path,
        textwrap.dedent(
            """
            [project]
            name = "tiny"
            version = "0"
            requires-python = ">=3.10"
            dependencies = ["iniconfig"]

            [tool.uv]
            package = false
            """
        ),
    )
    subprocess.run(["uv", "lock", "--quiet"], cwd=project, check=True, timeout=300)
    env = without_certificate_variables(dict(os.environ))
    env["UV_CACHE_DIR"] = str(tmp_path / "cold-cache")
    done = subprocess.run(
        ["./go", "install"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "+ iniconfig==" in done.stderr
    assert list((project / ".venv").glob("lib/python*/site-packages/iniconfig/__init__.py"))


# ----- helpers ---------------------------------------------------------------------------------------


def path_without_uv() -> str:
    """PATH less every folder holding a uv (the venv's included), with a Python that has pip first."""
    python = Path(getattr(sys, "_base_executable", sys.executable)).parent
    kept = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "uv").exists()]
    assert not (python / "uv").exists(), f"{python} holds a uv: no PATH without one can be made here"
    return os.pathsep.join([str(python), *kept])


def uv_cache_dir() -> str:
    return subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=True).stdout.strip()


def wheel_of_the_installed_uv(folder: Path) -> Path:
    """A wheel of the uv installed in this environment, rebuilt from its installed files (RECORD)."""
    dist = importlib.metadata.distribution("uv")
    version = dist.version
    tag = next(
        line.split(": ", 1)[1] for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")
    )
    folder.mkdir(parents=True)
    wheel = folder / f"uv-{version}-{tag}.whl"
    dist_info = f"uv-{version}.dist-info"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for file in dist.files or []:
            name = str(file)
            if name.startswith("../"):  # a script: bin/uv and bin/uvx
                name = f"uv-{version}.data/scripts/{Path(name).name}"
            elif (
                name.split("/")[-1] in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
                or "__pycache__" in name
            ):
                continue
            data = Path(dist.locate_file(file)).read_bytes()
            entry = zipfile.ZipInfo(name)
            entry.external_attr = (stat.S_IFREG | (0o755 if "/scripts/" in name else 0o644)) << 16
            archive.writestr(entry, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{name},sha256={digest},{len(data)}")
        records.append(f"{dist_info}/RECORD,,")
        archive.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return wheel
