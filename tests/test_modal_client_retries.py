"""Retries where Modal leaves them to the client (FunctionMap says `sync_client_retries_enabled`).

Modal has clients retry the failed inputs of calls they wait for, with FunctionRetryInputs; the session
emulator retries on the server instead. This module's emulator does what Modal does, so that mini's own
map and single-call paths are shown to retry exactly the failed inputs, and modal's own client is shown to
agree with the emulator about it.
"""

from __future__ import annotations

from collections.abc import Iterator

import modal
import pytest

from mini import ModalApparatus
from tests.behaviour import calls
from tests.emulator.server import Emulator, run_emulator


@pytest.fixture(scope="module")
def retrying_emulator() -> Iterator[Emulator]:
    with run_emulator(client_retries=True) as emulator, emulator.client_environment():
        yield emulator


@pytest.fixture
def app(retrying_emulator: Emulator) -> Iterator[ModalApparatus]:
    with ModalApparatus("client-retries", max_containers=2) as apparatus:
        yield apparatus


def _attempts(folder, x: int) -> int:
    return int((folder / f"attempts-{x}").read_text())


def test_modal_s_own_map_retries_through_the_emulator(retrying_emulator, tmp_path):
    def fail_twice(x: int, folder: str) -> int:  # defined here: modal pickles it by value
        import pathlib

        counter = pathlib.Path(folder, f"attempts-{x}")
        attempts = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(attempts))
        if attempts < 3:
            raise RuntimeError(f"attempt {attempts} fails")
        return x

    app = modal.App("raw-client-retries")
    retries = modal.Retries(max_retries=2, initial_delay=0.0, backoff_coefficient=1.0)
    flaky = app.function(serialized=True, retries=retries, name="raw-flaky")(fail_twice)
    with retrying_emulator.recorder.counting() as rpcs, app.run():
        assert list(flaky.map([1, 2], [str(tmp_path)] * 2)) == [1, 2]
    assert rpcs["FunctionRetryInputs"] >= 1
    assert _attempts(tmp_path, 1) == _attempts(tmp_path, 2) == 3


def test_modal_s_own_remote_retries_through_the_emulator(retrying_emulator, tmp_path):
    def fail_once(folder: str) -> str:
        import pathlib

        counter = pathlib.Path(folder, "attempted")
        if not counter.exists():
            counter.touch()
            raise RuntimeError("the first attempt fails")
        return "second attempt"

    app = modal.App("raw-client-retries-remote")
    retries = modal.Retries(max_retries=1, initial_delay=0.0, backoff_coefficient=1.0)
    flaky = app.function(serialized=True, retries=retries, name="raw-fail-once")(fail_once)
    with retrying_emulator.recorder.counting() as rpcs, app.run():
        assert flaky.remote(str(tmp_path)) == "second attempt"
    assert rpcs["FunctionRetryInputs"] == 1


def test_a_map_retries_exactly_the_failed_inputs(app, retrying_emulator, tmp_path):
    folder = str(tmp_path)
    with retrying_emulator.recorder.counting() as rpcs:
        out = list(app.w(retries=2).map(calls.flaky, [1, 2, 3], [folder] * 3, [0, 2, 1], order_outputs=False))
    assert sorted(out) == [1, 2, 3]
    assert [_attempts(tmp_path, x) for x in (1, 2, 3)] == [1, 3, 2]
    assert rpcs["FunctionRetryInputs"] >= 1


def test_a_map_gives_up_after_the_limit(app, tmp_path):
    out = list(app.w(retries=1).map(calls.flaky, [1, 2], [str(tmp_path)] * 2, [5, 0], return_exceptions=True))
    assert isinstance(out[0], RuntimeError) and "attempt 2 of input 1" in str(out[0])
    assert out[1] == 2
    assert _attempts(tmp_path, 1) == 2


def test_a_single_call_is_retried_too(app, retrying_emulator, tmp_path):
    with retrying_emulator.recorder.counting() as rpcs:
        assert app.w(retries=2).run(calls.flaky, 7, str(tmp_path), 2) == 7
    assert _attempts(tmp_path, 7) == 3
    assert rpcs["FunctionRetryInputs"] == 2


def test_without_retries_a_failure_is_final(app, retrying_emulator, tmp_path):
    with retrying_emulator.recorder.counting() as rpcs, pytest.raises(RuntimeError, match="attempt 1"):
        app.run(calls.flaky, 1, str(tmp_path), 1)
    assert rpcs["FunctionRetryInputs"] == 0
