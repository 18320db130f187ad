"""The pytest fixture: one emulator per test session, with modal clients pointed at it.

Loaded from tests/conftest.py with `pytest_plugins = ["tests.emulator.fixtures"]`.

    def test_square(modal_emulator):
        with app.run():
            assert square.remote(3) == 9
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulator.server import Emulator, run_emulator


@pytest.fixture(scope="session")
def modal_emulator() -> Iterator[Emulator]:
    """A running emulator; MODAL_SERVER_URL, MODAL_TOKEN_ID, MODAL_TOKEN_SECRET and MODAL_CONFIG_PATH point
    at it for this process and its subprocesses until the session ends."""
    with run_emulator() as emulator, emulator.client_environment():
        yield emulator
