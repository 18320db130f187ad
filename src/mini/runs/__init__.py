"""Detached runs: calls that outlive the process that launched them, and a registry to find them again.

>>> run = app.spawn_map(train, learning_rates)     # returns at once; close the laptop
>>> Run.open(run.id).status()                      # later, from any process on this checkout
'running'

Layout: `registry` (the run folders under `.mini/runs/`), `handles` (`Run`, `Job`), `launcher` (what a
backend implements), `local_launcher` (this machine's implementation), `launch` (what `spawn` does).
Importing this package stays cheap: no pickling, backend or image code is loaded until it is used.
"""

from mini.runs.errors import CallCancelled, CallNotFinished, RunError, RunNotFound
from mini.runs.handles import Job, Run
from mini.runs.launcher import Launcher
from mini.runs.monitor import Monitor
from mini.runs.state import CallState, Status

__all__ = [
    "CallCancelled",
    "CallNotFinished",
    "CallState",
    "Job",
    "Launcher",
    "Monitor",
    "Run",
    "RunError",
    "RunNotFound",
    "Status",
]
