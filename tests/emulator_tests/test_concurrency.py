"""Input concurrency (`@modal.concurrent`): Modal's runtime runs several inputs in one container (threads for
sync functions, one event loop for async ones); timeouts, cancellation and crashes stay per input."""

from __future__ import annotations

import os
import time

import modal
import pytest
from modal.exception import FunctionTimeoutError, RemoteError

image = modal.Image.debian_slim()


def _meeting(app: modal.App, name: str, *, is_async: bool, **concurrency) -> modal.Function:
    """Each input waits until `size` inputs have arrived in `folder`: only possible if they run at once.
    (No `assert` in the body: pytest rewrites those into calls of its own module, missing in a container.)"""

    def meet(folder: str, size: int, tag: int) -> int:
        import os
        import pathlib
        import time

        pathlib.Path(folder, str(tag)).touch()
        deadline = time.monotonic() + 30
        while len(os.listdir(folder)) < size:
            if time.monotonic() > deadline:
                raise TimeoutError("the others never came")
            time.sleep(0.02)
        return os.getpid()

    async def meet_async(folder: str, size: int, tag: int) -> int:
        import asyncio
        import os
        import pathlib
        import time

        pathlib.Path(folder, str(tag)).touch()
        deadline = time.monotonic() + 30
        while len(os.listdir(folder)) < size:
            if time.monotonic() > deadline:
                raise TimeoutError("the others never came")
            await asyncio.sleep(0.02)
        return os.getpid()

    body = modal.concurrent(**concurrency)(meet_async if is_async else meet)
    return app.function(image=image, serialized=True, name=name, max_containers=1)(body)


@pytest.mark.parametrize("is_async", [False, True], ids=["threads", "event-loop"])
def test_a_container_runs_max_inputs_at_once(modal_emulator, tmp_path, is_async):
    app = modal.App("emulator-concurrency")
    name = f"meet_{'async' if is_async else 'sync'}"
    meet = _meeting(app, name, is_async=is_async, max_inputs=3)
    with app.run():
        pids = list(meet.map([str(tmp_path)] * 3, [3] * 3, range(3)))
    assert len(set(pids)) == 1  # one container ran all three, at the same time
    assert modal_emulator.recorder.function(name).peak_inputs_per_container == 3


def test_a_container_bursts_from_target_inputs_to_max_inputs_when_it_cannot_scale(modal_emulator, tmp_path):
    app = modal.App("emulator-concurrency-target")
    meet = _meeting(app, "meet_target", is_async=True, max_inputs=3, target_inputs=1)
    with app.run():
        pids = list(meet.map([str(tmp_path)] * 3, [3] * 3, range(3)))
    assert len(set(pids)) == 1
    record = modal_emulator.recorder.function("meet_target")
    assert record.peak_inputs_per_container == 3 and record.max_containers == 1


def _sleeper(app: modal.App, name: str, **options) -> modal.Function:
    """Marks its start in `folder`, then waits for file `release` (forever if it never comes)."""

    async def wait_for_release(tag: str, folder: str, release: str) -> int:
        import asyncio
        import os
        import pathlib

        pathlib.Path(folder, tag).touch()
        while not pathlib.Path(release).exists():
            await asyncio.sleep(0.02)
        return os.getpid()

    body = modal.concurrent(max_inputs=2)(wait_for_release)
    return app.function(image=image, serialized=True, name=name, max_containers=1, **options)(body)


def test_a_timeout_ends_only_its_own_input_in_a_concurrent_container(modal_emulator, tmp_path):
    app = modal.App("emulator-concurrency-timeout")
    sleep = _sleeper(app, "sleep_timeout", timeout=2)
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    with app.run():
        stuck = sleep.spawn("stuck", str(started), str(tmp_path / "never"))
        _wait_for_files(started, 1)
        # Timeouts count from each input's start: the second one starts a second later, so it is still
        # within its own when the first one's runs out.
        time.sleep(1)
        waiting = sleep.spawn("waiting", str(started), str(release))
        with pytest.raises(FunctionTimeoutError):
            stuck.get(timeout=30)
        release.touch()
        pid = waiting.get(timeout=30)
        assert sleep.remote("after", str(started), str(release)) == pid  # the container lived on
    assert modal_emulator.recorder.function("sleep_timeout").peak_inputs_per_container == 2


def test_cancelling_one_input_leaves_the_other_running(modal_emulator, tmp_path):
    app = modal.App("emulator-concurrency-cancel")
    sleep = _sleeper(app, "sleep_cancel")
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    with app.run():
        doomed = sleep.spawn("doomed", str(started), str(tmp_path / "never"))
        kept = sleep.spawn("kept", str(started), str(release))
        _wait_for_files(started, 2)
        doomed.cancel()
        with pytest.raises(RemoteError, match="cancelled"):
            doomed.get(timeout=30)
        release.touch()
        pid = kept.get(timeout=30)
        assert sleep.remote("after", str(started), str(release)) == pid


def test_a_crash_fails_every_input_the_container_was_running(modal_emulator, tmp_path):
    app = modal.App("emulator-concurrency-crash")

    def crash_or_wait(tag: int, folder: str) -> int:
        import os
        import pathlib
        import time

        pathlib.Path(folder, str(tag)).touch()
        while len(os.listdir(folder)) < 2:
            time.sleep(0.02)
        if tag == 0:
            os._exit(3)
        time.sleep(3600)
        return tag

    body = modal.concurrent(max_inputs=2)(crash_or_wait)
    crash = app.function(image=image, serialized=True, name="crash", max_containers=1)(body)
    with app.run():
        outcomes = list(crash.map(range(2), [str(tmp_path)] * 2, return_exceptions=True))
    assert all(isinstance(outcome, RemoteError) and "code 3" in str(outcome) for outcome in outcomes)


def _wait_for_files(folder, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(os.listdir(folder)) < count:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_thread_that_times_out_stops_its_container_and_the_other_input_runs_again(modal_emulator, tmp_path):
    app = modal.App("emulator-concurrency-sync-timeout")

    def wait_for_release(tag: str, folder: str, release: str) -> int:
        import os
        import pathlib
        import time

        pathlib.Path(folder, f"{tag}-{os.getpid()}").touch()
        while not pathlib.Path(release).exists():
            time.sleep(0.02)
        return os.getpid()

    body = modal.concurrent(max_inputs=2)(wait_for_release)
    sleep = app.function(image=image, serialized=True, name="sync_timeout", max_containers=1, timeout=2)(body)
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    with app.run():
        stuck = sleep.spawn("stuck", str(started), str(tmp_path / "never"))
        _wait_for_files(started, 1)
        time.sleep(1)  # the second input's timeout runs out a second after the first's (see above)
        waiting = sleep.spawn("waiting", str(started), str(release))
        with pytest.raises(FunctionTimeoutError):
            stuck.get(timeout=30)
        # A thread cannot be stopped: Modal's runtime interrupts its whole container to cancel one, and the
        # input it was also running is put back in the queue, as Modal reschedules such inputs.
        _wait_for_files(started, 3)
        release.touch()
        pid = waiting.get(timeout=30)
    containers = {path.name.split("-")[1] for path in started.iterdir() if path.name.startswith("waiting")}
    assert len(containers) == 2 and str(pid) in containers  # it ran again, in a new container
