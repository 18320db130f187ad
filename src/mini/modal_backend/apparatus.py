"""`ModalApparatus`: run calls on Modal, building the image from the project's locked dependencies."""

from __future__ import annotations

from typing import Any

from mini.apparatus import Apparatus
from mini.modal_backend.backend import ModalBackend
from mini.options import Options


class ModalApparatus(Apparatus):
    """Runs calls in Modal containers, on GPUs if asked. Experiment code never imports `modal`.

    >>> app = ModalApparatus("sweep").w(gpu="A100", timeout=3600)
    >>> losses = list(app.map(train, configs))

    Nothing touches the network or builds anything until the first call: then the image spec is derived
    (Python version, frozen pins including the `cuda` group, `src/` packages mounted at start), the image is
    built or found by its content hash, and an ephemeral app is opened. It is reused by later calls of this
    apparatus and its `.w()` variants, and stopped by `close()` or at interpreter exit. Volumes
    (`app.volume(name)`) are Modal Volumes named after the project, mounted in every function, reloaded
    before each call and committed after it.

    Options: gpu, cpu, memory, timeout (default 1 hour), retries (default 0), secrets, env, volumes (Modal's
    own, by mount path; mini does not commit those), max_containers (default 10), region, image (your own
    `modal.Image`; the sources are still added), startup_timeout (client side: how long to wait for a first
    result), progress.
    """

    backend: ModalBackend

    def __init__(self, name: str = "mini", **options: Any) -> None:
        super().__init__(name, ModalBackend(name), Options().merged(options))
