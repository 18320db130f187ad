"""What operations cost in RPCs, and running the emulator outside pytest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import modal

from tests.emulator import TOKEN_ID, TOKEN_SECRET

image = modal.Image.debian_slim().pip_install("six==1.16.0")
REPOSITORY = Path(__file__).resolve().parents[2]


def test_a_map_of_100_inputs_costs_a_bounded_number_of_rpcs(modal_emulator):
    app = modal.App("emulator-costs")

    def double(x: int) -> int:
        return 2 * x

    double_fn = app.function(image=image, serialized=True, name="double")(double)
    with app.run(), modal_emulator.recorder.counting() as rpcs:
        assert list(double_fn.map(range(100))) == [2 * x for x in range(100)]
    assert rpcs["FunctionMap"] == 1
    # The client batches up to 49 inputs per request, debounced; how many batches depends on timing.
    assert 3 <= rpcs["FunctionPutInputs"] <= 50
    # Each long poll returns at least one new output (plus the final acknowledgement).
    assert rpcs["FunctionGetOutputs"] <= 101


def test_app_run_costs_are_recorded_by_name(modal_emulator):
    app = modal.App("emulator-app-costs")

    def noop() -> None:
        return None

    app.function(image=image, serialized=True, name="noop")(noop)
    with modal_emulator.recorder.counting() as rpcs, app.run():
        pass
    for method in ("AppCreate", "FunctionPrecreate", "FunctionCreate", "AppPublish", "AppClientDisconnect"):
        assert rpcs[method] == 1, method
    assert rpcs["ImageGetOrCreate"] == 2  # one per layer: debian_slim, then pip_install


def test_module_entry_point_serves_until_interrupted_then_reports_rpc_counts():
    # A clean environment: nothing of this session's client settings leaks in.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator"],
        cwd=REPOSITORY,
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        exported = _read_exports(process)
        assert exported["MODAL_TOKEN_ID"] == TOKEN_ID and exported["MODAL_TOKEN_SECRET"] == TOKEN_SECRET
        modal.Client.verify(exported["MODAL_SERVER_URL"], (TOKEN_ID, TOKEN_SECRET))
    finally:
        process.send_signal(signal.SIGINT)
        remaining, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert json.loads(remaining) == {"rpc_counts": {"ClientHello": 1}}


def _read_exports(process: subprocess.Popen) -> dict[str, str]:
    assert process.stdout is not None
    exported: dict[str, str] = {}
    while len(exported) < 4:
        line = process.stdout.readline()
        assert line.startswith("export "), f"unexpected output {line!r}"
        name, _, value = line.removeprefix("export ").strip().partition("=")
        exported[name] = value.strip("'")
    return exported


def test_modal_token_info_works_against_the_emulator(modal_emulator):
    info = subprocess.run(
        [sys.executable, "-m", "modal", "token", "info"], capture_output=True, text=True, timeout=120
    )
    assert info.returncode == 0, info.stderr
    assert TOKEN_ID in info.stdout and "emulator" in info.stdout
