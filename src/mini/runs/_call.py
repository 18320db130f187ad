"""One detached local call: `python -m mini.runs._call RUN_FOLDER INDEX TIMEOUT RETRIES`.

The run's scheduler starts it as the leader of its own session, so it outlives the launcher and `cancel`
can kill its whole process group. It runs the call and stores the outcome in the run folder. TIMEOUT is
seconds or "-"; a timed-out call is not retried, because the timeout ends its process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from mini import _observe
from mini.runs.events import CallEventFile
from mini.runs.inner_calls import recording
from mini.runs.registry import RunFolder


def _run(folder: RunFolder, index: int, timeout: float | None, retries: int) -> int:
    from mini.errors import CallTimeoutError
    from mini.reports import placement_here
    from mini.runtime import LOCAL, CallContext
    from mini.serialization import Call, Outcome, decode_error, encode_error, loads, run_call

    try:
        fn = loads((folder.path / "function.pkl").read_bytes())
        call = Call(index, (folder.call_dir(index) / "payload.pkl").read_bytes())
    except Exception as exc:  # e.g. the function's module cannot be imported here
        folder.store_outcome(index, Outcome(index, False, encode_error(exc)))
        _report(exc)
        return 1

    events = CallEventFile(folder.events_path(index))  # its reports, kept with the run as they come
    settle = threading.Lock()
    settled = False

    def time_out() -> None:
        nonlocal settled
        with settle:
            if settled:
                return
            settled = True
            error = CallTimeoutError(
                f"call #{index} ran over its timeout of {timeout:g}s; its process was killed."
            )
            folder.store_outcome(index, Outcome(index, False, encode_error(error)))
            events.flush()
            print(f"mini: {error}", file=sys.stderr, flush=True)
            os.killpg(os.getpid(), signal.SIGKILL)  # and whatever the call started

    if timeout is not None:
        timer = threading.Timer(timeout, time_out)
        timer.daemon = True
        timer.start()
    attempts = 0
    # The calls this one makes, for `mini status` (an experiment's maps), and what they report.
    with recording(folder, index), _observe.listening(events.inner_report):
        while True:
            attempts += 1
            events.emit(index, "started", placement_here())
            outcome = run_call(fn, call, context=CallContext(index, LOCAL, events=events))
            if outcome.ok:
                break
            _report(decode_error(outcome.data))
            if attempts > retries:
                break
    events.close()  # before the outcome: a reader that sees the outcome has every report
    with settle:
        if settled:
            return 1
        settled = True
        folder.store_outcome(index, outcome, attempts=attempts)
    return 0 if outcome.ok else 1


def _report(exc: BaseException) -> None:
    """Put a failure's traceback in the call's log, where `mini logs` shows it."""
    cause = exc.__cause__
    text = getattr(cause, "text", None) or f"{type(exc).__name__}: {exc}\n"
    print(text, file=sys.stderr, end="", flush=True)


def main(argv: list[str]) -> int:
    # `python -m` puts the working directory first on sys.path; the call imports what PYTHONPATH names,
    # exactly as a pooled worker does.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    folder, index = RunFolder(Path(argv[0])), int(argv[1])
    timeout = None if argv[2] == "-" else float(argv[2])
    retries = int(argv[3])
    if folder.cancelled_at(index) is not None:  # cancelled as it was being started
        return 1
    started = {"started": time.time(), "pid": os.getpid()}
    folder.write_call_file(index, "started.json", json.dumps(started).encode())
    return _run(folder, index, timeout, retries)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
