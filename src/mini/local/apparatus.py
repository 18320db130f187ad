"""`LocalApparatus`: run calls on this machine, the default backend (no account, no network)."""

from __future__ import annotations

from typing import Any

from mini.apparatus import Apparatus
from mini.local.backend import MODES, LocalBackend, Mode
from mini.options import Options

__all__ = ["MODES", "LocalApparatus", "Mode"]


class LocalApparatus(Apparatus):
    """Runs calls here: in threads (default), worker processes, or isolated worker processes.

    >>> with LocalApparatus("sweep", workers=2, mode="process") as app:
    ...     losses = list(app.map(train, configs))

    - `thread`: a thread pool in this process; fast to start and debuggable. A call that kills its
      process (`os._exit`, a segfault, the OOM killer) kills the caller with it, with no output: use
      `process` for such code.
    - `process`: spawned worker processes, reused across calls; a crashed worker fails only its call, with
      `WorkerCrashed`.
    - `isolated`: like `process`, but workers run in a virtual environment built from the project's image
      spec (locked pins only) with only the shipped `src/` packages importable, only the environment
      variables a container would get (`env=`, plus home, locale, temporary folder, network and GPU
      settings), in a fresh empty working directory. A missing dependency, an unshipped module, a variable
      of your shell or a file of your checkout fails here as it would remotely.

    Honours the options `timeout`, `retries` and `env`; `volumes` (Modal volumes) is refused, since
    `app.volume(name)` is the portable way (a folder under `.mini/volumes/`); other options are recorded
    and ignored.
    """

    backend: LocalBackend

    def __init__(self, name: str = "local", workers: int = 1, mode: Mode = "thread", **options: Any) -> None:
        super().__init__(name, LocalBackend(name, workers, mode), Options().merged(options))

    @property
    def workers(self) -> int:
        return self.backend.workers

    @property
    def mode(self) -> str:
        return self.backend.mode
