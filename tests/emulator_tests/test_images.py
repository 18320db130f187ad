"""Images as the emulator reads them: pins, Python version, ENV, requirements files, GPU-only wheels."""

from __future__ import annotations

import sys

import modal
import pytest
from modal.exception import RemoteError

from mini.image.materialise import gpu_available
from tests.emulator.images import UnsupportedImageError, describe_layers

LOCAL_SERIES = f"{sys.version_info.major}.{sys.version_info.minor}"
BASE = ["FROM python:3.12-slim-trixie", "RUN pip install --upgrade pip wheel uv"]


def _read_environment(app: modal.App, image: modal.Image, name: str) -> modal.Function:
    def read_environment(variable: str) -> str:
        import os

        import six

        return f"{os.environ.get(variable)} six={six.__version__}"

    return app.function(image=image, serialized=True, name=name)(read_environment)


def test_base_tooling_is_not_a_pin_and_later_layers_are():
    description = describe_layers([BASE, ["FROM base", "RUN python -m pip install numpy==2.1.0 six"]], {})
    assert description.python_version == "3.12"
    assert description.pins == ["numpy==2.1.0", "six"]


def test_requirements_files_from_uv_export_are_expanded():
    exported = b"six==1.16.0 \\\n    --hash=sha256:abc\n# via mini\nnumpy==2.1.0 ; python_version >= '3.11'\n"
    layer = [
        "FROM base",
        "COPY /.0_requirements.txt /.uv/0/requirements.txt",
        "RUN /.uv/uv pip install --python $(command -v python) --compile-bytecode "
        "--requirements /.uv/0/requirements.txt",
    ]
    description = describe_layers([BASE, layer], {"/.0_requirements.txt": exported})
    assert description.pins == ["six==1.16.0", "numpy==2.1.0 ; python_version >= '3.11'"]


def test_env_lines_are_collected():
    description = describe_layers([BASE, ["FROM base", "ENV A=1 B='two words'"]], {})
    assert description.env == {"A": "1", "B": "two words"}


def test_an_image_without_python_is_refused_with_the_reason():
    with pytest.raises(UnsupportedImageError, match="add_python"):
        describe_layers([["FROM ubuntu:22.04"]], {})


def test_uv_pip_install_requirements_file_and_env_reach_the_container(modal_emulator, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pinned\nsix==1.16.0\n")
    image = (
        modal.Image.debian_slim()
        .uv_pip_install(requirements=[str(requirements)])
        .env({"GREETING": "hello from ENV"})
    )
    app = modal.App("emulator-uv-requirements")
    reader = _read_environment(app, image, "uv_reader")
    with app.run():
        assert reader.remote("GREETING") == "hello from ENV six=1.16.0"
    record = modal_emulator.recorder.image_of("uv_reader")
    assert record.pins == ["six==1.16.0"]
    assert record.env == {"GREETING": "hello from ENV"}


def test_registry_image_with_added_python(modal_emulator):
    image = modal.Image.from_registry("ubuntu:22.04", add_python=LOCAL_SERIES).pip_install("six==1.16.0")
    app = modal.App("emulator-registry")
    reader = _read_environment(app, image, "registry_reader")
    with app.run():
        assert reader.remote("NOT_SET") == "None six=1.16.0"
    assert modal_emulator.recorder.image_of("registry_reader").python_version == LOCAL_SERIES


def test_registry_image_without_python_builds_but_cannot_run_a_function(modal_emulator):
    app = modal.App("emulator-no-python")
    reader = _read_environment(app, modal.Image.from_registry("ubuntu:22.04"), "no_python")
    with app.run(), pytest.raises(RemoteError, match="add_python"):
        reader.remote("NOT_SET")


def test_gpu_only_wheels_are_recorded_and_left_out_without_a_gpu(modal_emulator):
    cuda_pin = "nvidia-cublas-cu12==12.4.5.8"
    image = modal.Image.debian_slim().pip_install("six==1.16.0", cuda_pin)
    app = modal.App("emulator-gpu-only")
    reader = _read_environment(app, image, "gpu_only_reader")
    with app.run():
        assert reader.remote("NOT_SET") == "None six=1.16.0"
    record = modal_emulator.recorder.image_of("gpu_only_reader")
    assert cuda_pin in record.pins
    assert record.dropped == ([] if gpu_available() else [cuda_pin])
