"""A local emulator of Modal's control plane, so the real modal client can be tested end to end.

    with run_emulator() as emulator, emulator.client_environment():
        with app.run():
            assert square.remote(3) == 9
        emulator.recorder.function("square").timeout_secs

In pytest, use the session fixture `modal_emulator` (tests/emulator/fixtures.py). Outside pytest:
`python -m tests.emulator --port 50051` prints the variables that point a client at it.
"""

from tests.emulator.recorder import FunctionRecord, ImageRecord, MountRecord, Recorder
from tests.emulator.server import TOKEN_ID, TOKEN_SECRET, Emulator, run_emulator

__all__ = [
    "TOKEN_ID",
    "TOKEN_SECRET",
    "Emulator",
    "FunctionRecord",
    "ImageRecord",
    "MountRecord",
    "Recorder",
    "run_emulator",
]
