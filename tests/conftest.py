"""Shared fixtures. The behaviour suite's `app` fixture is parametrised over every backend."""

from __future__ import annotations

from collections.abc import Iterator

import cloudpickle
import pytest

import tests.behaviour.calls
from mini import Apparatus
from tests.support.backends import make_apparatus

pytest_plugins = ["tests.emulator.fixtures"]

# User code in a script or notebook is pickled by value; make the suite's helpers behave the same so
# that they run where only the shipped sources are importable (isolated workers, Modal containers).
cloudpickle.register_pickle_by_value(tests.behaviour.calls)

BACKENDS = ["thread", "process", "isolated", "modal", "subprocess"]
# Where a call that kills its process fails alone (in thread mode it takes the caller with it).
SURVIVES_CRASHES = ["process", "isolated", "modal", "subprocess"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def app(backend: str, request: pytest.FixtureRequest) -> Iterator[Apparatus]:
    if backend == "modal":
        request.getfixturevalue("modal_emulator")
    apparatus = make_apparatus(backend)
    try:
        yield apparatus
    finally:
        apparatus.close()
