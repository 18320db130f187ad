"""What only the Modal backend has: the image it asks for, the options it sends, its RPC costs, its errors.

Everything runs through the public API against the local control-plane emulator (`tests/emulator`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mini import ModalApparatus, ModalAuthError, OptionError, WorkerCrashed
from mini.image import derive_image_spec
from tests.behaviour import calls

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(modal_emulator):
    with ModalApparatus("modal-tests") as apparatus:
        yield apparatus


def test_the_image_holds_exactly_the_frozen_pins_and_python_version(app, modal_emulator):
    assert app.run(calls.square, 3) == 9
    function = next(f for f in modal_emulator.recorder.functions.values() if f.name.startswith("square-"))
    image = modal_emulator.recorder.image_of(function.name)
    spec = derive_image_spec()
    assert image.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert sorted(image.pins) == sorted(spec.requirements)
    assert any(pin.startswith("jax-cuda12-plugin") for pin in image.pins)  # the cuda group is shipped
    assert not any(pin.startswith(("pytest", "matplotlib")) for pin in image.pins)  # dev and local are not


def test_the_mount_holds_every_src_package_and_nothing_from_tests(app, modal_emulator):
    app.run(calls.square, 2)
    name = next(f.name for f in modal_emulator.recorder.functions.values() if f.name.startswith("square-"))
    files = modal_emulator.recorder.mounted_files(name)
    roots = {path.split("/")[2] for path in files if path.startswith("/root/")}
    assert {"mini", "experiment"} <= roots
    assert "/root/mini/modal_backend/entry.py" in files
    assert not any("/tests/" in path or path.startswith("/root/tests") for path in files)


def test_options_reach_function_create_under_a_readable_name(app, modal_emulator):
    assert app.w(gpu="A100", timeout=600, max_containers=3, retries=1).run(calls.add, 1, 2) == 3
    created = [f for f in modal_emulator.recorder.functions.values() if f.name.startswith("add-")]
    function = created[-1]
    assert function.gpus == [("A100", 1)]
    assert function.timeout_secs == 600 and function.max_containers == 3 and function.retries == 1
    assert len(function.name) == len("add-") + 6


def test_defaults_suit_research_work(app, modal_emulator):
    app.run(calls.square, 1)
    function = [f for f in modal_emulator.recorder.functions.values() if f.name.startswith("square-")][-1]
    assert function.timeout_secs == 3600 and function.retries == 0 and function.max_containers == 10


def test_a_map_of_100_inputs_is_one_map_call_not_100_round_trips(app, modal_emulator):
    app.run(calls.square, 0)  # start the app and a container outside the count
    with modal_emulator.recorder.counting() as rpcs:
        assert list(app.map(calls.square, range(100))) == [i * i for i in range(100)]
    # Inputs go up in batches; outputs come back by long polls whose count depends on timing.
    assert rpcs["FunctionMap"] == 1
    assert rpcs["FunctionPutInputs"] <= 50  # batched: a loaded machine splits batches, never one per input
    assert rpcs["FunctionGetOutputs"] <= 100


def test_a_warm_run_is_one_function_map_and_one_output_poll_every_time(app, modal_emulator):
    app.run(calls.square, 0)  # start the app and a container outside the count
    with modal_emulator.recorder.counting() as rpcs:
        assert [app.run(calls.square, x) for x in range(30)] == [x * x for x in range(30)]
    # The input and the end of the inputs reach modal's loop together: never the map path's RPCs.
    assert (rpcs["FunctionMap"], rpcs["FunctionGetOutputs"], rpcs["FunctionPutInputs"]) == (30, 30, 0)


def _client_tasks() -> list[str]:
    """The names of the coroutines mini runs on modal's client loop now."""
    import asyncio

    from mini.modal_backend._invocation import client_loop

    async def names() -> list[str]:
        tasks = asyncio.all_tasks()
        return [
            getattr(task.get_coro(), "__qualname__", "")
            for task in tasks
            if task is not asyncio.current_task()
        ]

    running = asyncio.run_coroutine_threadsafe(names(), client_loop()).result(timeout=30)
    return [name for name in running if name.startswith(("MapInvocation.", "_EventReader."))]


def test_a_finished_map_leaves_nothing_of_it_running_in_the_client(app):
    assert list(app.map(calls.square, range(200))) == [x * x for x in range(200)]
    assert app.run(calls.square, 3) == 9
    deadline = time.monotonic() + 30
    while _client_tasks():  # its last acknowledgement may still be on its way
        assert time.monotonic() < deadline, f"still running after the map: {_client_tasks()}"
        time.sleep(0.05)


def test_a_map_keeps_nothing_per_input_once_the_input_settled(app, monkeypatch):
    from mini.modal_backend import _invocation

    made: list[_invocation.MapInvocation] = []
    original = _invocation.MapInvocation.__init__

    def recording(self: _invocation.MapInvocation, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(_invocation.MapInvocation, "__init__", recording)
    # Watched (progress=True), the map reads its inputs' events: it knows each input by Modal's id.
    assert list(app.w(progress=True).map(calls.square, range(300))) == [x * x for x in range(300)]
    assert made[0].by_input_id == {} and made[0]._input_ids == {}, "a long map's memory would grow"


def test_lambdas_closures_and_example_package_functions_run(app):
    from experiment.config import TrainConfig
    from experiment.train import train

    scale = 3
    assert app.run(lambda x: x * scale, 2) == 6
    result = app.run(train, TrainConfig(learning_rate=0.05, hidden=8, steps=20))
    assert result["device"].startswith("cpu") and len(result["losses"]) == 20


def test_importing_an_unshipped_module_fails_clearly(app):
    def needs_tests_package():
        import tests.behaviour.calls  # noqa: F401  (tests/ is not shipped)

    with pytest.raises(ModuleNotFoundError, match="tests"):
        app.run(needs_tests_package)


def test_ten_mebibyte_argument_and_result_round_trip(app):
    blob = os.urandom(10 * 2**20)
    assert app.run(lambda b: b[::-1], blob) == blob[::-1]


def test_a_container_that_never_starts_fails_the_call_after_startup_timeout(app, modal_emulator):
    # Its container waits for a GPU that never comes free.
    with modal_emulator.scarce("B200"), pytest.raises(TimeoutError, match="startup_timeout=2s"):
        app.w(gpu="B200", startup_timeout=2).run(calls.square, 3)


def test_a_long_call_whose_container_started_is_not_a_startup_timeout(app):
    # Watched, a running input is announced by its container: a call longer than startup_timeout is then
    # no sign of a container that cannot start.
    watched = app.w(startup_timeout=1, progress=True)
    assert watched.run(calls.sleep_for, 0) == 0  # its container is up
    assert watched.run(calls.sleep_for, 2.5) == 2.5


def test_invalid_values_fail_before_anything_is_sent(modal_emulator):
    before = sum(modal_emulator.recorder.rpc_counts.values())
    with pytest.raises(OptionError, match="unknown GPU 'A1000'"):
        ModalApparatus("x").w(gpu="A1000")
    with pytest.raises(OptionError):
        ModalApparatus("x", timeout=-5)
    with pytest.raises(OptionError, match="limit of 1000 inputs per batch"):
        ModalApparatus("x").w(max_batch_size=1001)
    with pytest.raises(OptionError, match="10 minutes"):
        ModalApparatus("x").w(max_batch_size=8, batch_wait_ms=600_001)
    assert sum(modal_emulator.recorder.rpc_counts.values()) == before


def test_a_rejected_token_says_how_to_fix_it(modal_emulator):
    with (
        modal_emulator.client_environment(token_secret="wrong"),
        ModalApparatus("bad-token") as app,
        pytest.raises(ModalAuthError, match="Set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET to a token from"),
    ):
        app.run(calls.square, 1)


def test_constructing_and_read_only_verbs_need_no_server(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from mini import ModalApparatus
        app = ModalApparatus("offline").w(gpu="H100:2", timeout=60)
        print(repr(app), "modal" in sys.modules)
        """
    )
    env = {
        **os.environ,
        "MODAL_SERVER_URL": "http://127.0.0.1:9",
        "MODAL_CONFIG_PATH": str(tmp_path / "none.toml"),
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "gpu='H100:2'" in out.stdout and out.stdout.strip().endswith("False")
    image = subprocess.run(
        [str(ROOT / "bin" / "mini"), "image", "--json"], env=env, capture_output=True, text=True
    )
    assert image.returncode == 0 and '"image_hash"' in image.stdout


def test_the_cli_runs_the_same_experiment_on_modal(modal_emulator, tmp_path):
    experiment = tmp_path / "exp.py"
    experiment.write_text("def main(app):\n    return list(app.map(lambda x: x + 1, range(3)))\n")
    env = {**os.environ, **modal_emulator.client_variables()}
    out = subprocess.run(
        [str(ROOT / "bin" / "mini"), "run", str(experiment), "--app", "modal", "--gpu", "A100", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().replace("\n", "").replace(" ", "") == "[1,2,3]"


def test_interpreter_exit_stops_the_app(modal_emulator):
    script = "from mini import ModalApparatus\nprint(ModalApparatus('left-open').run(pow, 2, 5))\n"
    env = {**os.environ, **modal_emulator.client_variables()}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "32"
    app = [a for a in modal_emulator.recorder.apps.values() if a.description == "mini-left-open"][-1]
    assert app.states[-1] == "stopped"


def test_a_watched_call_waiting_for_a_container_is_queued_until_it_starts(modal_emulator, tmp_path):
    import threading

    from mini.progress import listening

    seen = []
    with (
        ModalApparatus("modal-queued", max_containers=1, progress=True) as app,
        listening(lambda _map, counts: seen.append((counts.running, counts.queued))),
    ):
        outcome: list[list[int]] = []
        mapping = threading.Thread(
            target=lambda: outcome.append(list(app.map(calls.mark_and_block, [0, 1], [str(tmp_path)] * 2)))
        )
        mapping.start()
        calls.wait_for(str(tmp_path / "started-0"))
        # The first input's container announces it within a flush interval; the second waits for it.
        deadline = time.monotonic() + 30
        while (1, 1) not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        (tmp_path / "release").touch()
        mapping.join(timeout=120)
    assert outcome == [[0, 1]]
    assert (1, 1) in seen, seen
    assert (2, 0) not in seen[: seen.index((1, 1))], "the waiting input counted as running"


def test_under_concurrency_a_dead_container_fails_the_inputs_it_ran_as_worker_crashed(modal_emulator):
    # Modal reports every input that was running in the container when it died; the others go on.
    with ModalApparatus("modal-crash-concurrent", max_containers=1) as app:
        out = list(app.w(concurrent_inputs=3).map(calls.crash_on, range(8), [1] * 8, return_exceptions=True))
    assert isinstance(out[1], WorkerCrashed) and "call #1 " in str(out[1])
    others = [out[x] for x in (0, 2, 3, 4, 5, 6, 7)]
    assert all(
        o == x or isinstance(o, WorkerCrashed) for x, o in zip((0, 2, 3, 4, 5, 6, 7), others, strict=True)
    )
    assert sum(isinstance(o, WorkerCrashed) for o in others) <= 2, out  # at most its two companions
