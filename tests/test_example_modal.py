"""The example sweep on ModalApparatus through the emulator, as `--app modal --gpu A100` runs it.

The plot is covered in tests/test_experiment.py: it only reads the results, wherever they were computed.
"""

from __future__ import annotations

import math
import uuid

from experiment.sweep import grid, summarise, sweep
from mini import ModalApparatus


def test_the_sweep_runs_on_modal_and_reports_the_device_it_ran_on(modal_emulator):
    configs = grid(learning_rates=[5e-2, 1e-1], widths=[8], steps=60)
    # One container: importing JAX and compiling the training loop is most of the cost, and happens once.
    with ModalApparatus("spirals", max_containers=1).w(gpu="A100") as app:
        runs = app.volume(f"spirals-{uuid.uuid4().hex[:8]}")
        summaries = sweep(app, configs, runs)
        # The aggregate step: one more call, reading what the training calls left on the volume.
        results = app.run(summarise, runs, [config.name for config in configs])

    assert all("losses" not in summary for summary in summaries)
    assert runs.listdir("") == sorted(config.name for config in configs)
    assert sorted(result["best"] for result in results) == ["", "yes"]

    assert [(r["learning_rate"], r["hidden"], r["steps"]) for r in results] == [(5e-2, 8, 60), (1e-1, 8, 60)]
    for result in results:
        assert len(result["losses"]) == 60 and all(math.isfinite(loss) for loss in result["losses"])
        assert result["final_loss"] < result["losses"][0]
        # The emulator records the GPU request but has no GPU, so JAX falls back to the CPU, as it would on
        # any machine without CUDA.
        assert result["device"] == "cpu"

    function = [f for f in modal_emulator.recorder.functions.values() if f.name.startswith("train-")][-1]
    assert function.gpus == [("A100", 1)]
    image = modal_emulator.recorder.image_of(function.name)
    # The image carries the cuda group's jax[cuda12] pins; only the GPU-only wheels are left out here.
    assert any(pin.startswith("jax==") for pin in image.pins)
    assert any("cuda" in pin for pin in image.dropped)
