"""The behaviour suite's backends by name, for the `app` fixture and for tests that need a second apparatus
of the same backend (in this process or a new one).

    app = make_apparatus("process")      # LocalApparatus("suite-process", workers=2, mode="process")
"""

from __future__ import annotations

from mini import Apparatus, LocalApparatus


def make_apparatus(backend: str) -> Apparatus:
    """A fresh apparatus of `backend` ("thread", "process", "isolated", "modal", "subprocess"); the modal one
    needs a client pointed at the emulator (the `modal_emulator` fixture)."""
    if backend == "modal":
        from mini import ModalApparatus

        return ModalApparatus("suite-modal", max_containers=2)
    if backend == "subprocess":  # defined in the tests, against mini.backend alone
        from tests.support.subprocess_backend import SubprocessBackend

        return Apparatus("suite-subprocess", SubprocessBackend(workers=2))
    return LocalApparatus(f"suite-{backend}", workers=2, mode=backend)
