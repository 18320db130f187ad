"""The example experiment: real training on generated data, swept on the local backend, and its plot."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil
import subprocess
import sys
import uuid

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from experiment import model
from experiment.adam import adam_init, adam_update
from experiment.config import TrainConfig
from experiment.data import two_spirals
from experiment.sweep import grid, plot, summarise, sweep
from experiment.train import train
from mini import LocalApparatus
from mini.project import find_project_root, state_path

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Small enough to finish in seconds, large enough that every config clearly learns.
_CONFIGS = grid(learning_rates=[2e-2, 5e-2], widths=[8, 16], steps=200)


@pytest.fixture(scope="module")
def results() -> list[dict]:
    with LocalApparatus("experiment-test", workers=2) as app:
        return sweep(app, _CONFIGS)


def _assert_learned(result: dict, config: TrainConfig) -> None:
    assert {name: result[name] for name in dataclasses.asdict(config)} == dataclasses.asdict(config)
    losses = result["losses"]
    assert len(losses) == config.steps
    assert all(math.isfinite(loss) for loss in losses)
    assert result["final_loss"] == losses[-1]
    # Random weights start near log 2; a model that learned nothing would stay there and score 0.5.
    assert result["final_loss"] < 0.8 * losses[0]
    assert 0.65 < result["accuracy"] <= 1.0
    assert result["wall_time_s"] > 0
    assert result["device"].startswith(jax.devices()[0].platform)


def test_sweep_returns_one_learned_result_per_config_in_order(results):
    assert len(results) == len(_CONFIGS)
    for result, config in zip(results, _CONFIGS, strict=True):
        _assert_learned(result, config)


def test_results_are_plain_python_that_survive_pickling(results):
    def plain(value: object) -> bool:
        if isinstance(value, list):
            return all(plain(item) for item in value)
        return type(value) in (float, int, str)

    for result in results:
        assert all(plain(value) for value in result.values()), result
        assert pickle.loads(pickle.dumps(result)) == result


def test_sweep_runs_in_a_worker_process():
    # A process worker imports `experiment` afresh, as a remote container does; one config keeps it quick.
    (config,) = grid(learning_rates=[1e-1], widths=[8], steps=100)
    with LocalApparatus("experiment-test", mode="process") as app:
        (result,) = sweep(app, [config])
    _assert_learned(result, config)


def test_training_reports_its_step_and_loss_every_100_steps():
    (config,) = grid(learning_rates=[5e-2], widths=[8], steps=250)
    seen = []
    with LocalApparatus("experiment-test").w(on_report=seen.append) as app:
        result = app.run(train, config)
    assert [report.metrics["step"] for report in seen] == [100, 200, 250]
    assert [report.metrics["loss"] for report in seen] == [result["losses"][i] for i in (99, 199, 249)]


def test_plot_writes_a_png_that_matplotlib_reads_back(results, tmp_path):
    path = tmp_path / "curves.png"
    plot(results, path)
    assert path.read_bytes().startswith(_PNG_SIGNATURE)
    image = matplotlib.image.imread(path)
    height, width, channels = image.shape
    assert height > 100 and width > 100 and channels in (3, 4)
    # A blank canvas would be a single colour; curves, axes and legend are not.
    assert len(np.unique(image.reshape(-1, channels), axis=0)) > 10


def test_with_a_volume_each_run_stores_its_parameters_and_curve_and_a_call_picks_the_best(tmp_path):
    configs = grid(learning_rates=[2e-2, 5e-2], widths=[8], steps=150)
    name = f"experiment-test-{uuid.uuid4().hex[:8]}"
    try:
        with LocalApparatus("experiment-test", workers=2, mode="process") as app:
            runs = app.volume(name)
            summaries = sweep(app, configs, runs)
            rows = app.run(summarise, runs, [config.name for config in configs])
        assert runs.listdir("") == sorted(config.name for config in configs)
        for summary, row, config in zip(summaries, rows, configs, strict=True):
            assert "losses" not in summary  # the curve stays on the volume
            assert runs.listdir(config.name) == ["losses.json", "params.npz", "summary.json"]
            assert json.loads(runs.read_bytes(f"{config.name}/summary.json")) == summary
            _assert_learned(row, config)
            params = np.load(runs.download(f"{config.name}/params.npz", tmp_path / f"{config.name}.npz"))
            assert params["w0"].shape == (2, 8) and params["b2"].shape == (1,)
        best = max(rows, key=lambda row: (row["accuracy"], -row["final_loss"]))
        assert [row["best"] for row in rows] == ["yes" if row is best else "" for row in rows]
        plot(rows, tmp_path / "best.png")
        assert (tmp_path / "best.png").read_bytes().startswith(_PNG_SIGNATURE)
    finally:
        shutil.rmtree(state_path(find_project_root(), "volumes", name, create=False), ignore_errors=True)


def test_main_keeps_its_training_in_the_result_cache(tmp_path, monkeypatch):
    import experiment.sweep as example
    from mini import list_caches

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "spirals"\nversion = "0"\n')
    monkeypatch.setenv("MINI_PROJECT", str(project))  # its cache and volume, not the checkout's
    monkeypatch.setattr(example, "grid", lambda: grid(learning_rates=[5e-2], widths=[8, 16], steps=100))
    with LocalApparatus("spirals", workers=2) as app:
        first = example.main(app)
        second = example.main(app)
    assert second == first, "the second run trained again (its wall times would differ)"
    (info,) = list_caches()
    assert (info.name, info.entries) == (example.CACHE, 2)


def test_plot_without_results_says_so(tmp_path):
    with pytest.raises(ValueError, match="at least one result"):
        plot([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_importing_the_sweep_leaves_jax_and_matplotlib_unloaded():
    code = "import sys, experiment.sweep; print(sorted({'jax', 'matplotlib'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_train_rejects_anything_but_a_config():
    with pytest.raises(TypeError, match="TrainConfig"):
        train({"learning_rate": 1e-2, "hidden": 8})


@pytest.mark.parametrize(
    "fields", [{"learning_rate": 0.0}, {"learning_rate": -1e-3}, {"hidden": 0}, {"steps": 2.5}, {"depth": -1}]
)
def test_config_rejects_values_that_cannot_train(fields):
    with pytest.raises(ValueError, match=next(iter(fields))):
        TrainConfig(**fields)


def test_two_spirals_is_balanced_and_reproducible():
    x, y = two_spirals(200, seed=3)
    assert x.shape == (400, 2) and y.shape == (400,)
    assert y.sum() == 200 and set(np.unique(y)) == {0.0, 1.0}
    again, _ = two_spirals(200, seed=3)
    other, _ = two_spirals(200, seed=4)
    assert np.array_equal(x, again)
    assert not np.array_equal(x, other)
    # The two classes are point reflections of each other, so they share a centre at the origin.
    assert np.allclose(x[y == 0].mean(axis=0), -x[y == 1].mean(axis=0), atol=0.1)


def test_adam_first_step_moves_each_weight_by_the_learning_rate_against_its_gradient():
    # Bias correction makes Adam's first step exactly lr * sign(gradient), whatever the gradient's size.
    params = {"w": jnp.array([1.0, 1.0, 1.0])}
    grads = {"w": jnp.array([5.0, -0.01, 300.0])}
    new_params, state = adam_update(params, grads, adam_init(params), 0.1)
    np.testing.assert_allclose(new_params["w"], [0.9, 1.1, 0.9], rtol=1e-5)
    assert int(state.step) == 1


def test_loss_is_binary_cross_entropy_and_finite_for_confident_predictions():
    params = model.init_mlp(jax.random.key(0), [2, 4, 1])
    x = jnp.array([[0.3, -0.2], [-1.0, 0.5]])
    y = jnp.array([1.0, 0.0])
    p = jax.nn.sigmoid(model.logits(params, x))
    expected = -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))
    np.testing.assert_allclose(model.loss(params, x, y), expected, rtol=1e-5)
    # Scaled-up weights push sigmoid to exactly 0 or 1 in float32, where a naive log would give inf.
    confident = [{"w": layer["w"] * 1e4, "b": layer["b"]} for layer in params]
    assert math.isfinite(float(model.loss(confident, x, 1 - y)))
