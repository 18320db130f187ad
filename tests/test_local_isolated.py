"""Isolated mode catches "works locally, fails remotely" here: only pins and shipped sources exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mini import LocalApparatus
from mini.local._isolation import KEPT_VARIABLES


def _importer():
    # A nested function travels by value, like code from a notebook; this test module is not shipped.
    def imports(name: str) -> str:
        import importlib

        return importlib.import_module(name).__name__

    return imports


imports = _importer()


@pytest.fixture(scope="module")
def isolated():
    with LocalApparatus("isolated", workers=1, mode="isolated") as app:
        yield app


def test_shipped_packages_and_pinned_dependencies_import(isolated):
    assert list(isolated.map(imports, ["experiment.sweep", "cloudpickle", "mini"])) == [
        "experiment.sweep",
        "cloudpickle",
        "mini",
    ]


@pytest.mark.parametrize("name", ["tests.behaviour.calls", "pytest", "matplotlib"])
def test_unshipped_modules_and_dev_or_local_dependencies_fail_here(isolated, name):
    with pytest.raises(ModuleNotFoundError):
        isolated.run(imports, name)


def test_a_function_pickled_by_reference_from_an_unshipped_module_fails(isolated):
    import tests.test_local_isolated as this_module

    with pytest.raises(ModuleNotFoundError, match="tests"):
        isolated.run(this_module.imports_by_reference)


def imports_by_reference() -> str:
    return "should not run"


def test_the_worker_survives_an_unloadable_function_across_batches(isolated):
    import tests.test_local_isolated as this_module

    out = list(isolated.map(this_module.imports_by_reference_with, range(3), return_exceptions=True))
    assert all(isinstance(x, ModuleNotFoundError) for x in out)
    assert isolated.run(imports, "mini") == "mini"


def imports_by_reference_with(x: int) -> int:
    return x


def _probes():
    # Nested functions travel by value, like code from a notebook; this test module is not shipped.
    def read_variable(name: str) -> str:
        import os

        return os.environ[name]

    def look_around() -> dict:
        import os
        import sys

        return {
            "cwd": os.getcwd(),
            "listing": os.listdir("."),
            "variables": dict(os.environ),
            "executable": sys.executable,
        }

    def read_text(path: str) -> str:
        with open(path) as file:
            return file.read()

    def lookup(table: dict, key: str) -> str:
        return table[key]

    return read_variable, look_around, read_text, lookup


read_variable, look_around, read_text, lookup = _probes()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def from_my_shell(monkeypatch):
    """An isolated apparatus started from a shell with a variable of its own, in the checkout."""
    monkeypatch.setenv("ONLY_IN_MY_SHELL", "laptop")
    monkeypatch.chdir(ROOT)
    with LocalApparatus("from-my-shell", mode="isolated") as app:
        yield app


def test_a_variable_only_in_my_shell_is_a_key_error_with_a_note(from_my_shell):
    with pytest.raises(KeyError, match="ONLY_IN_MY_SHELL") as caught:
        from_my_shell.run(read_variable, "ONLY_IN_MY_SHELL")
    (note,) = caught.value.__notes__
    assert "not set in this isolated worker" in note and "env=" in note
    assert (
        from_my_shell.w(env={"ONLY_IN_MY_SHELL": "passed"}).run(read_variable, "ONLY_IN_MY_SHELL") == "passed"
    )


def test_the_worker_sees_only_what_a_container_would(from_my_shell):
    seen = from_my_shell.run(look_around)
    variables = seen["variables"]
    assert "ONLY_IN_MY_SHELL" not in variables and "VIRTUAL_ENV" not in variables
    # PYTHONUNBUFFERED: the pool passes what a worker prints on as it comes (mini.local.processes).
    assert set(variables) <= {*KEPT_VARIABLES, "PATH", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONUNBUFFERED"}
    assert variables["HOME"] == os.environ["HOME"]
    assert variables["PATH"].split(os.pathsep)[0] == str(Path(seen["executable"]).parent)
    assert seen["listing"] == [] and Path(seen["cwd"]) != ROOT


def test_a_file_of_my_checkout_is_not_found_with_a_note(from_my_shell):
    assert (ROOT / "pyproject.toml").is_file()  # readable by this relative path here
    with pytest.raises(FileNotFoundError) as caught:
        from_my_shell.run(read_text, "pyproject.toml")
    (note,) = caught.value.__notes__
    assert "fresh empty working directory" in note and "src/" in note and "volume" in note


def test_other_key_errors_get_no_note(from_my_shell):
    with pytest.raises(KeyError) as caught:
        from_my_shell.run(lookup, {}, "missing")
    assert not getattr(caught.value, "__notes__", None)


def test_the_working_directory_goes_with_its_worker(monkeypatch):
    monkeypatch.chdir(ROOT)
    with LocalApparatus("workdir", mode="isolated") as app:
        workdir = Path(app.run(look_around)["cwd"])
        assert workdir.is_dir()
    assert not workdir.exists()
