"""Generator functions: values stream to `remote_gen` as the container yields them."""

from __future__ import annotations

import asyncio
import time

import modal
import pytest

image = modal.Image.debian_slim()


def _wait_for(path, what: str) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _counter(app: modal.App, name: str, *, is_async: bool) -> modal.Function:
    """Yields 0, 1, ... up to `count`; before yielding 1 it waits for file `release`; when it stops (done,
    or closed early) it writes file `stopped`."""

    def count_up(count: int, release: str, stopped: str):
        import pathlib
        import time

        try:
            for value in range(count):
                while value == 1 and not pathlib.Path(release).exists():
                    time.sleep(0.02)
                yield value
        finally:
            pathlib.Path(stopped).touch()

    async def count_up_async(count: int, release: str, stopped: str):
        import asyncio
        import pathlib

        try:
            for value in range(count):
                while value == 1 and not pathlib.Path(release).exists():
                    await asyncio.sleep(0.02)
                yield value
        finally:
            pathlib.Path(stopped).touch()

    return app.function(image=image, serialized=True, name=name)(count_up_async if is_async else count_up)


def test_values_arrive_as_the_generator_yields_them(modal_emulator, tmp_path):
    app = modal.App("emulator-generators")
    count_up = _counter(app, "count_up", is_async=False)
    release, stopped = tmp_path / "release", tmp_path / "stopped"
    with app.run():
        received = []
        for value in count_up.remote_gen(4, str(release), str(stopped)):
            received.append(value)
            if value == 0:
                assert not release.exists()  # the generator is still waiting to yield the next value
                release.touch()
        assert received == [0, 1, 2, 3]
    assert stopped.exists()


def test_an_async_generator_streams_to_remote_gen_aio(modal_emulator, tmp_path):
    app = modal.App("emulator-generators-async")
    count_up = _counter(app, "count_up_async", is_async=True)
    release, stopped = tmp_path / "release", tmp_path / "stopped"

    async def consume() -> list[int]:
        received = []
        async for value in count_up.remote_gen.aio(5, str(release), str(stopped)):
            received.append(value)
            if value == 0:
                assert not release.exists()
                release.touch()
        return received

    with app.run():
        assert asyncio.run(consume()) == [0, 1, 2, 3, 4]


def test_leaving_the_loop_early_stops_the_generator_in_the_container(modal_emulator, tmp_path):
    app = modal.App("emulator-generators-early")
    count_up = _counter(app, "count_up_early", is_async=False)
    release, stopped = tmp_path / "release", tmp_path / "stopped"
    with app.run():
        for value in count_up.remote_gen(10**9, str(release), str(stopped)):
            if value == 0:
                break  # the generator waits for `release`, which never comes
        _wait_for(stopped, "the abandoned generator was stopped")
        assert not release.exists()


def test_a_generator_that_raises_ends_the_stream_with_its_exception(modal_emulator):
    app = modal.App("emulator-generators-raise")

    def yield_then_fail():
        yield "first"
        raise ValueError("the generator failed")

    failing = app.function(image=image, serialized=True, name="yield_then_fail")(yield_then_fail)
    received = []
    with app.run(), pytest.raises(ValueError, match="the generator failed"):
        for value in failing.remote_gen():
            received.append(value)
    assert received in ([], ["first"])  # the error may overtake the value: both travel on their own
