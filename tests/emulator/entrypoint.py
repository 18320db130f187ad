"""The container side: runs inside the image's environment, one process per emulated container.

Not imported by the emulator: `workers.py` passes this file's source to `python -c`, so the process
sees only the environment's site-packages and the mounted files (the working directory, `/root` of the
container). It speaks length-prefixed pickles (of plain dicts, bytes and strings): the function
definition then one input at a time on stdin; one reply per input on the file descriptor named by
`MODAL_EMULATOR_REPLY_FD`. stdout and stderr stay free for the user's prints, which become logs.
"""

import asyncio
import importlib
import inspect
import os
import pickle
import struct
import sys
import traceback


def _read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None
    (size,) = struct.unpack(">I", header)
    return pickle.loads(stream.read(size))


def _write_frame(stream, message):
    payload = pickle.dumps(message, protocol=4)
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def _load_function(definition):
    import modal
    from modal._serialization import deserialize

    if definition["function_serialized"]:
        return deserialize(definition["function_serialized"], None)
    target = importlib.import_module(definition["module_name"])
    for part in definition["function_name"].split("."):
        target = getattr(target, part)
    # A module-level `@app.function` is a modal Function; the container runs the function it wraps.
    return target._raw_f_ if isinstance(target, modal.Function) else target


def _failure(exc):
    from modal._serialization import pickle_exception, pickle_traceback

    serialized_tb, tb_line_cache = pickle_traceback(exc, os.environ.get("MODAL_TASK_ID", ""))
    return {
        "status": "failure",
        "data": pickle_exception(exc),
        "exception": repr(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "serialized_tb": serialized_tb,
        "tb_line_cache": tb_line_cache,
    }


def _call(function, message):
    from modal._serialization import deserialize_data_format, serialize_data_format

    args, kwargs = deserialize_data_format(message["args"], message["data_format"], None)
    result = function(*args, **kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return {"status": "success", "data": serialize_data_format(result, message["data_format"])}


def main():
    # The protocol moves off fd 0 so that user code reading stdin finds it empty, not our frames.
    requests = os.fdopen(os.dup(0), "rb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    replies = os.fdopen(int(os.environ.pop("MODAL_EMULATOR_REPLY_FD")), "wb")
    definition = _read_frame(requests)
    try:
        function = _load_function(definition)
        load_error = None
    except BaseException as exc:
        function, load_error = None, exc
        traceback.print_exc()
    # Container start-up ends here: an input's timeout counts from now, as on Modal.
    _write_frame(replies, {"status": "ready"})
    while True:
        message = _read_frame(requests)
        if message is None:
            return
        if load_error is not None:
            reply = _failure(load_error)
        else:
            try:
                reply = _call(function, message)
            except Exception as exc:
                traceback.print_exc()
                reply = _failure(exc)
        sys.stdout.flush()
        sys.stderr.flush()
        # Marks the end of this input's output on both streams (see workers.py).
        os.write(1, b"\0")
        os.write(2, b"\0")
        _write_frame(replies, reply)


main()
