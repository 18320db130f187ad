"""Isolated mode catches "works locally, fails remotely" here: only pins and shipped sources exist."""

from __future__ import annotations

import pytest

from mini import LocalApparatus


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
