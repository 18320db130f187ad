"""`.w(**options)`: known names only, never mutating, and the options every backend honours."""

from __future__ import annotations

import pytest

from mini import CallTimeoutError, OptionError
from tests.behaviour import calls


def test_an_unknown_option_is_an_error_with_a_suggestion(app):
    with pytest.raises(OptionError, match="unknown option 'gpus'.*Did you mean 'gpu'"):
        app.w(gpus=2)


@pytest.mark.parametrize(
    "bad",
    [{"timeout": -1}, {"timeout": "10"}, {"retries": -1}, {"retries": 1.5}, {"env": {"A": 1}}, {"gpu": ""}],
)
def test_invalid_option_values_are_refused(app, bad):
    with pytest.raises(OptionError):
        app.w(**bad)


def test_w_returns_a_variant_and_leaves_the_receiver_alone(app):
    variant = app.w(timeout=30, retries=2, gpu="A100")
    assert variant is not app
    assert variant.options.timeout == 30 and variant.options.gpu == "A100"
    assert app.options.timeout is None and app.options.gpu is None
    assert variant.w(retries=0).options.timeout == 30  # variants layer


def test_env_reaches_the_call(app):
    assert app.w(env={"MINI_TEST_VALUE": "42"}).run(calls.read_env, "MINI_TEST_VALUE") == "42"
    assert app.run(calls.read_env, "MINI_TEST_VALUE") is None


def test_retries_rerun_a_failing_call(app, tmp_path):
    folder = str(tmp_path)
    assert list(app.w(retries=2).map(calls.flaky, [1, 2], [folder] * 2, [2] * 2)) == [1, 2]
    assert (tmp_path / "attempts-1").read_text() == "3"


def test_retries_give_up_after_the_limit(app, tmp_path):
    with pytest.raises(RuntimeError, match="attempt 2 of input 1 fails"):
        app.w(retries=1).run(calls.flaky, 1, str(tmp_path), 5)


def test_a_call_over_its_timeout_raises_timeout_error(app, tmp_path):
    with pytest.raises(TimeoutError) as caught:
        app.w(timeout=0.2).run(calls.mark_and_block, 1, str(tmp_path))
    assert isinstance(caught.value, CallTimeoutError)
    (tmp_path / "release").touch()
    assert app.run(calls.square, 3) == 9  # the pool recovered


def test_timeout_fails_only_the_slow_call(app, tmp_path):
    out = list(
        app.w(timeout=0.5).map(calls.quick_or_block, [0, 1], [str(tmp_path)] * 2, return_exceptions=True)
    )
    (tmp_path / "release").touch()
    assert out[0] == 0 and isinstance(out[1], CallTimeoutError)
