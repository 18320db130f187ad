"""Dynamic batching (`@modal.batched`): the emulator forms the batches, Modal's runtime calls with lists."""

from __future__ import annotations

import modal
import pytest
from modal.exception import InvalidError

image = modal.Image.debian_slim()


def _batched(app: modal.App, name: str, behaviour: str, **options) -> modal.Function:
    def echo_with_batch_size(xs: list[int]) -> list[tuple[int, int]]:
        if behaviour == "raise":
            raise ValueError(f"the whole batch {xs} fails")
        if behaviour == "short":
            return [(x, len(xs)) for x in xs][:-1]
        return [(x, len(xs)) for x in xs]

    batched = modal.batched(max_batch_size=4, wait_ms=500)(echo_with_batch_size)
    return app.function(image=image, serialized=True, name=name, **options)(batched)


def test_batches_hold_at_most_max_batch_size_and_every_input_gets_its_own_output(modal_emulator):
    app = modal.App("emulator-batching")
    echo = _batched(app, "batched_echo", "ok", max_containers=1)
    with app.run():
        results = list(echo.map(range(10)))
    assert [x for x, _ in results] == list(range(10))
    sizes = modal_emulator.recorder.function("batched_echo").batch_sizes
    assert sum(sizes) == 10 and max(sizes) == 4  # all were waiting, so batches filled up to the limit
    assert all(size == batch for (_, size), batch in zip(results, [4] * 8 + [2] * 2, strict=True))


def test_separate_calls_share_a_batch_within_the_linger_time(modal_emulator):
    app = modal.App("emulator-batching-calls")
    echo = _batched(app, "batched_calls", "ok", max_containers=1)
    with app.run():
        calls = [echo.spawn(x) for x in range(3)]
        results = [call.get(timeout=30) for call in calls]
    assert [x for x, _ in results] == [0, 1, 2]
    assert max(size for _, size in results) > 1  # spawned one by one, they still met in one batch
    assert modal_emulator.recorder.function("batched_calls").batch_sizes[0] > 1


def test_a_lone_input_runs_once_the_linger_time_is_over(modal_emulator):
    app = modal.App("emulator-batching-lone")
    echo = _batched(app, "batched_lone", "ok")
    with app.run():
        assert echo.remote(7) == (7, 1)
    assert modal_emulator.recorder.function("batched_lone").batch_sizes == [1]


@pytest.mark.parametrize(
    ("behaviour", "error", "message"),
    [("raise", ValueError, "the whole batch"), ("short", InvalidError, "must be a list of equal length")],
)
def test_a_failing_batch_fails_each_of_its_inputs(modal_emulator, behaviour, error, message):
    app = modal.App(f"emulator-batching-{behaviour}")
    echo = _batched(app, f"batched_{behaviour}", behaviour, max_containers=1)
    with app.run():
        outcomes = list(echo.map(range(4), return_exceptions=True))
    assert len(outcomes) == 4
    assert all(isinstance(outcome, error) and message in str(outcome) for outcome in outcomes)
