"""`mini run` in thread mode: when a call ends the whole process, say so, and which mode to use instead.

In thread mode the calls run inside `mini run`'s own process, so a call that ends it (`os._exit`, a
segfault, the OOM killer) takes the experiment with it, and nothing is printed. `watch_for_a_crash` forks
before the experiment is loaded: the child goes on with the command, and the parent waits for it. A child
that ends through Python's own exit (a result, an error, Ctrl-C) says so on a pipe; one that vanishes
without saying so was ended abruptly, and the parent explains.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any

_FORWARDED = (signal.SIGTERM, signal.SIGHUP)  # sent to one process (`kill`, `timeout`); SIGINT reaches both


def watch_for_a_crash() -> int | None:
    """In the process that goes on with the command: None. In the watching parent: the exit code to end
    with, once the command's process has ended. Also None where a fork is not possible or not safe."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        # Registered first, so it runs last: after every other exit hook has had its turn.
        atexit.register(os.write, write_end, b"exited")
        return None
    os.close(write_end)
    return _wait(child, read_end)


def _wait(child: int, read_end: int) -> int:
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        os.kill(child, signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends Ctrl-C to the child as well
    for signum in _FORWARDED:
        signal.signal(signum, forward)
    _, status = os.waitpid(child, 0)
    os.set_blocking(read_end, False)
    try:
        said_goodbye = os.read(read_end, 16) == b"exited"
    except BlockingIOError:  # a process the child forked still holds the pipe open, silently
        said_goodbye = False
    code = os.waitstatus_to_exitcode(status)
    if said_goodbye or (code < 0 and -code in forwarded):
        return code if code >= 0 else 128 - code
    print(_explanation(code), file=sys.stderr)
    return 128 - code if code < 0 else code or 1


def _explanation(code: int) -> str:
    if code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with status {code} without a Python error"
    return (
        f"mini run: the experiment's process {how}. In thread mode (the default) every call runs inside "
        "that process, so a call that ends it (os._exit, a segfault, the OOM killer) ends the whole run.\n"
        "  fix: run it with --mode process: such a call then fails alone, with WorkerCrashed."
    )
