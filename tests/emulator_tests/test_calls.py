"""Plain modal code against the emulator: calls run in worker processes of the requested image."""

from __future__ import annotations

import os
import sys
import time
import traceback

import emulated_pkg.functions
import modal
import pytest
from modal.exception import DeserializationError

app = modal.App("emulator-calls")
image = modal.Image.debian_slim().pip_install("six==1.16.0").add_local_python_source("emulated_pkg")


@app.function(image=image, serialized=True)
def square(x: int) -> int:
    return x * x


@app.function(image=image, serialized=True)
def add(x: int, y: int = 0) -> int:
    return x + y


def _module_helper() -> str:
    return "never shipped"


@app.function(image=image, serialized=True)
def reject_odd(x: int) -> int:
    def check_parity(value: int) -> None:
        if value % 2:
            raise ValueError(f"odd input {value}")

    check_parity(x)
    return x


@app.function(image=image, serialized=True)
def call_module_helper() -> str:
    # modal pickles the function by value but `_module_helper` by reference to this test module.
    return _module_helper()


@app.function(image=image, serialized=True)
def describe_container() -> dict:
    import emulated_pkg
    import six

    return {
        "pid": os.getpid(),
        "sys_path": sys.path,
        "stdin": sys.stdin.read(),
        "environment": sorted(os.environ),
        "six": six.__version__,
        "greeting": emulated_pkg.greet("container"),
    }


@app.function(image=image, serialized=True)
def import_unshipped() -> None:
    import mini  # noqa: F401 - installed here, never shipped


@app.function(image=image, serialized=True)
def echo_size(payload: bytes) -> bytes:
    return payload[::-1]


@app.function(image=image, serialized=True)
def wait_for_file(path: str) -> str:
    import pathlib
    import time

    while not pathlib.Path(path).exists():
        time.sleep(0.05)
    return "released"


@app.function(image=image, serialized=True)
def listed_call(path: str) -> str:
    import pathlib
    import time

    while not pathlib.Path(path).exists():
        time.sleep(0.05)
    return "released"


@pytest.fixture(scope="module")
def running(modal_emulator):
    with app.run():
        yield modal_emulator


def test_remote_runs_in_a_separate_process_of_the_image(running):
    seen = describe_container.remote()
    assert seen["pid"] != os.getpid()
    assert seen["six"] == "1.16.0"
    assert seen["greeting"] == "hello container"
    assert not any("/work/main" in entry or entry.endswith("src") for entry in seen["sys_path"][1:]), seen
    assert seen["stdin"] == ""
    # Only the host's basics (PATH, HOME, ...) reach a container, nothing of the test process.
    assert (
        "MODAL_TOKEN_SECRET" not in seen["environment"] and "PYTEST_CURRENT_TEST" not in seen["environment"]
    )


def test_remote_returns_the_result(running):
    assert square.remote(7) == 49
    assert add.remote(2, y=3) == 5


def test_exception_comes_back_with_its_type_and_remote_traceback(running):
    with pytest.raises(ValueError, match="odd input 3") as caught:
        reject_odd.remote(3)
    remote_frames = "".join(traceback.format_tb(caught.value.__traceback__))
    assert "check_parity" in remote_frames


def test_an_unshipped_import_fails_as_on_modal(running):
    with pytest.raises(ModuleNotFoundError, match="mini"):
        import_unshipped.remote()


def test_a_helper_from_an_unshipped_module_fails_to_load(running):
    with pytest.raises(DeserializationError, match="'tests' module is not available"):
        call_module_helper.remote()


def test_non_serialized_function_runs_from_the_mounted_package(running):
    with emulated_pkg.functions.app.run():
        assert emulated_pkg.functions.shout.remote("you") == "HELLO YOU"
    mounted = running.recorder.mounted_files("shout")
    assert "/root/emulated_pkg/functions.py" in mounted
    assert not any("emulator_tests" in path for path in mounted)


def test_map_is_ordered_by_default(running):
    assert list(square.map(range(10))) == [x * x for x in range(10)]


def test_map_unordered_yields_every_result(running):
    assert sorted(square.map(range(10), order_outputs=False)) == [x * x for x in range(10)]


def test_map_return_exceptions_keeps_errors_in_place(running):
    results = list(reject_odd.map(range(4), return_exceptions=True))
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], ValueError) and "odd input 1" in str(results[1])
    assert isinstance(results[3], ValueError)


def test_map_raises_the_first_error_without_return_exceptions(running):
    with pytest.raises(ValueError, match="odd input"):
        list(reject_odd.map(range(4)))


def test_starmap_and_broadcast_kwargs(running):
    assert list(add.starmap([(1, 2), (3, 4)])) == [3, 7]
    assert list(add.map([1, 2], kwargs={"y": 10})) == [11, 12]


def test_spawn_then_get_by_id(running):
    call = square.spawn(12)
    assert modal.FunctionCall.from_id(call.object_id).get(timeout=30) == 144


def test_cancel_stops_a_spawned_call(running, tmp_path):
    call = wait_for_file.spawn(str(tmp_path / "never"))
    call.cancel()
    with pytest.raises(modal.exception.RemoteError, match="cancelled"):
        call.get(timeout=30)


def test_get_times_out_while_the_call_runs(running, tmp_path):
    release = tmp_path / "release"
    call = wait_for_file.spawn(str(release))
    with pytest.raises(TimeoutError):
        call.get(timeout=0.2)
    release.touch()
    assert call.get(timeout=30) == "released"


@pytest.mark.anyio
async def test_remote_aio(running):
    assert await square.remote.aio(5) == 25
    assert [value async for value in square.map.aio([1, 2])] == [1, 4]


def test_large_input_and_output_go_through_blobs(running):
    payload = os.urandom(5 * 1024 * 1024)
    with running.recorder.counting() as rpcs:
        assert echo_size.remote(payload) == payload[::-1]
    assert rpcs["BlobCreate"] == 1
    assert rpcs["BlobGet"] == 1


def test_recorder_shows_image_pins_and_python(running):
    record = running.recorder.image_of("square")
    # debian_slim() without a version matches the local series, so pickles agree across the boundary.
    assert record.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert record.pins == ["six==1.16.0"]
    assert "/root/emulated_pkg/__init__.py" in running.recorder.mounted_files("square")


def test_remote_costs_one_map_and_one_output_poll(running):
    with running.recorder.counting() as rpcs:
        square.remote(2)
    assert rpcs["FunctionMap"] == 1
    assert rpcs["FunctionGetOutputs"] == 1


def _fetch_inputs(function_id: str, **query: object) -> list:
    """FunctionCallFetch through the modal client's own stub, as `modal function calls` sends it."""
    import asyncio

    from modal._utils.async_utils import synchronizer
    from modal.client import _Client
    from modal_proto import api_pb2

    async def fetch() -> list:
        client = await _Client.from_env()
        request = api_pb2.FunctionCallFetchRequest(function_id=function_id, **query)
        return list((await client._stub.FunctionCallFetch(request)).function_call_inputs)

    return asyncio.run_coroutine_threadsafe(fetch(), synchronizer._get_loop(start=True)).result(timeout=60)


def test_a_functions_inputs_are_listed_with_their_call_and_status(running, tmp_path):
    from google.protobuf.timestamp_pb2 import Timestamp
    from modal_proto import api_pb2

    (tmp_path / "open").touch()
    finished = listed_call.spawn(str(tmp_path / "open"))
    assert finished.get(timeout=60) == "released"
    held = [listed_call.spawn(str(tmp_path / "release")) for _ in range(3)]
    Range, Tail = api_pb2.FunctionCallFetchRequest.Range, api_pb2.FunctionCallFetchRequest.Tail
    since, until = Timestamp(), Timestamp()
    since.FromSeconds(0)
    until.FromSeconds(int(time.time()) + 60)
    try:
        everything = _fetch_inputs(listed_call.object_id, range=Range(since=since, until=until, limit=100))
        assert [info.function_call_id for info in everything] == [
            call.object_id for call in [finished, *held]
        ], "a range lists the oldest first, one entry per call"
        first = everything[0]
        assert first.status == api_pb2.FUNCTION_CALL_INPUT_STATUS_SUCCESS
        assert first.HasField("started_at") and first.execution_time_seconds >= 0 and first.container_id
        assert {info.status for info in everything[1:]} <= {
            api_pb2.FUNCTION_CALL_INPUT_STATUS_PENDING,
            api_pb2.FUNCTION_CALL_INPUT_STATUS_RUNNING,
        }
        limited = _fetch_inputs(listed_call.object_id, range=Range(since=since, until=until, limit=2))
        assert [info.function_call_id for info in limited] == [finished.object_id, held[0].object_id]
        newest = _fetch_inputs(listed_call.object_id, tail=Tail(count=2))
        assert [info.function_call_id for info in newest] == [held[2].object_id, held[1].object_id]
        with pytest.raises(modal.exception.InvalidError):
            _fetch_inputs(listed_call.object_id, range=Range(since=since, until=until, limit=0))
    finally:
        (tmp_path / "release").touch()
    for call in held:
        assert call.get(timeout=60) == "released"
    settled = _fetch_inputs(listed_call.object_id, tail=Tail(count=10))
    assert {info.status for info in settled} == {api_pb2.FUNCTION_CALL_INPUT_STATUS_SUCCESS}
