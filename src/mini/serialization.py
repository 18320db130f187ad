"""The serialisation boundary every backend crosses: calls, outcomes, and errors with remote tracebacks.

Functions, arguments and results always go through cloudpickle, even in threads, so that a local run
behaves like a remote one (a callee's mutation is never seen by the caller).

Backends that can move large buffers themselves (the local ones) ask for them out-of-band (pickle protocol
5): a 100 MB array then travels as one buffer next to a small pickle instead of being copied into it.
"""

from __future__ import annotations

import inspect
import io
import pickle
import sys
import traceback
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from mini.errors import RemoteError, RemoteTraceback, SerializationError
from mini.runtime import CallContext, StreamStopped, enter, leave, wait_for

PROTOCOL = 5
# Smaller buffers stay inside the pickle: a separate frame costs more than copying them.
OUT_OF_BAND_BYTES = 1 << 16

Buffer = Any  # a writable, contiguous buffer of bytes (a bytearray, or a uint8 NumPy array)


class Call:
    """One invocation: its position in the map and its pickled `(args, kwargs)`, whose large buffers may
    travel out-of-band in `buffers` (snapshots owned by the call, see `ArgumentEncoder`).

    When every argument is a number, a string, a boolean or None, `plain` holds `(args, kwargs)` as they
    are (immutable: nothing to snapshot or copy), for a backend that can carry them itself; `payload` is
    then pickled from them when first asked for."""

    __slots__ = ("_payload", "buffers", "index", "plain")

    def __init__(
        self,
        index: int,
        payload: bytes | None = None,
        buffers: Sequence[Buffer] = (),
        plain: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
    ) -> None:
        self.index = index
        self._payload = payload
        self.buffers = buffers
        self.plain = plain

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            self._payload = pickle.dumps(self.plain, protocol=PROTOCOL)
        return self._payload

    def copy(self) -> Call:
        """This call with buffers of its own: a re-run must not see what a thread-mode attempt changed."""
        if not self.buffers:
            return self
        return Call(self.index, self.payload, tuple(copied(memoryview(b)) for b in self.buffers))

    def __repr__(self) -> str:
        return f"Call({self.index}, {len(self.payload)} bytes, {len(self.buffers)} buffers)"


@dataclass(slots=True)
class Outcome:
    """What became of a call: `ok` with a pickled result (its large buffers in `buffers`), or not `ok`
    with a pickled or local error."""

    index: int
    ok: bool
    data: bytes | BaseException
    buffers: Sequence[Buffer] = ()


def dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def dump_result(obj: Any, buffers: list[Buffer] | None = None, copy: bool = False) -> bytes:
    """Pickle a result; with a `buffers` list, large buffers go there instead (copied if `copy`)."""
    if type(obj) in _SCALARS:  # the common tiny result: no buffers, no fallback needed
        return pickle.dumps(obj, protocol=PROTOCOL)
    callback = None if buffers is None else _BufferCollector(buffers, copy)
    # Plain pickle is several times faster for ordinary data, and it refuses (rather than mis-pickles)
    # what it cannot find by reference, such as a class unpickled by value; cloudpickle handles those.
    try:
        return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)
    except Exception:
        if buffers:
            buffers.clear()
        return cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)


loads = pickle.loads


def fresh_buffer(size: int) -> Buffer:
    """Uninitialised memory for `size` bytes that an unpickled array can own.

    NumPy's allocator asks for huge pages, so filling 100 MB of it costs a fraction of the page faults a
    bytearray takes; NumPy is only used when the process has imported it already (it then owns the arrays).
    """
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        return numpy.empty(size, dtype=numpy.uint8)
    return bytearray(size)


def copied(raw: memoryview) -> Buffer:
    """A private copy of a buffer, so that neither side sees the other's later writes."""
    copy = fresh_buffer(raw.nbytes)
    memoryview(copy)[:] = raw
    return copy


class _BufferCollector:
    """A pickle `buffer_callback`: keeps large buffers out-of-band in `into`, small ones in the pickle."""

    def __init__(self, into: list[Buffer], copy: bool) -> None:
        self.into = into
        self._copy = copy

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True
        self.into.append(copied(raw) if self._copy else raw)
        return False


class ArgumentEncoder:
    """Pickles `(args, kwargs)` for many calls to one function, naming the argument that fails.

    One pickler is reused across calls: building a cloudpickle pickler costs more than pickling a small
    tuple, and maps of tiny calls are common. With `out_of_band`, large buffers (NumPy arrays) are copied
    once into the call's `buffers` instead of into the pickle: a snapshot either way, so a caller that
    changes an array after handing it to `map` does not change calls already queued. With `lend` too, they
    are referenced, not copied: only for a caller that waits for the call's end, and a backend whose callee
    cannot write to the caller's memory (another process sends them).
    """

    def __init__(self, fn: Callable[..., Any], out_of_band: bool = False, lend: bool = False) -> None:
        self._fn = fn
        self._buffer = io.BytesIO()
        self._buffers: list[Buffer] = []
        self._callback = _BufferCollector(self._buffers, copy=not lend) if out_of_band else None
        self._pickler: cloudpickle.Pickler | None = None

    def encode(self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        plain = type(args[0]) in _SCALARS if len(args) == 1 else _SCALARS.issuperset(map(type, args))
        if plain and (not kwargs or _SCALARS.issuperset(map(type, kwargs.values()))):
            # Immutable, and always picklable: carried as they are, pickled only where they must be.
            return Call(index, None, (), (args, kwargs))
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        if self._pickler is None:
            self._pickler = cloudpickle.Pickler(buffer, protocol=PROTOCOL, buffer_callback=self._callback)
        else:
            self._pickler.clear_memo()
        try:
            self._pickler.dump((args, kwargs))
        except Exception as exc:  # pickling raises many types: find the culprit and say which it is
            self._buffers.clear()
            self._pickler = None
            raise _unpicklable_argument(self._fn, index, args, kwargs, exc) from exc
        buffers = tuple(self._buffers)
        self._buffers.clear()
        return Call(index, buffer.getvalue(), buffers)


_SCALARS = frozenset({int, float, str, bool, type(None)})


def _unpicklable_argument(
    fn: Callable[..., Any], index: int, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
) -> SerializationError:
    for label, value in labelled_arguments(fn, args, kwargs):
        try:
            dumps(value)
        except Exception as inner:
            return SerializationError(
                f"{label} of call #{index} to {_qualname(fn)} cannot be pickled "
                f"({type(value).__name__}: {inner}). Arguments cross a process or network boundary; "
                "pass something picklable instead (e.g. a path or a config, and open the resource inside "
                "the function)."
            )
    return SerializationError(f"the arguments of call #{index} to {_qualname(fn)} cannot be pickled: {exc}")


def labelled_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Iterator[tuple[str, Any]]:
    """Each argument of a call with the words that name it in an error: `argument 'lr' (position 0)`,
    `keyword argument 'steps'`."""
    names = _parameter_names(fn, len(args))
    for position, value in enumerate(args):
        name = names[position]
        yield (f"argument {name!r} (position {position})" if name else f"argument {position}"), value
    for key, value in kwargs.items():
        yield f"keyword argument {key!r}", value


def _parameter_names(fn: Callable[..., Any], count: int) -> list[str | None]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names: list[str | None] = []
    for position in range(count):
        if position < len(params) and params[position].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            names.append(params[position].name)
        else:
            names.append(None)
    return names


def _qualname(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def dump_function(fn: Callable[..., Any]) -> bytes:
    """Pickle the function once per map; it is unpickled once per worker.

    A plain function that pickles by reference (its module and name: no state that could change) is
    pickled once per process; anything pickled by value (closures, lambdas, `__main__`) every time, so
    each map sees the state it closes over when the map starts.
    """
    try:
        cached = _by_reference.get(fn)
    except TypeError:  # not weakly referenceable
        cached = None
    if cached is not None and not _registered_by_value(fn):  # registering its module later must count
        return cached
    try:
        blob = dumps(fn)
    except Exception as exc:
        raise SerializationError(
            f"the function {_qualname(fn)} cannot be pickled ({exc}). Functions run in another process or "
            "machine: define it at module level, or make sure everything it closes over is picklable."
        ) from exc
    if isinstance(fn, types.FunctionType) and _pickles_by_reference(fn, blob):
        _by_reference[fn] = blob
    return blob


_by_reference: weakref.WeakKeyDictionary[Callable[..., Any], bytes] = weakref.WeakKeyDictionary()


def _registered_by_value(fn: Callable[..., Any]) -> bool:
    registry = cloudpickle.list_registry_pickle_by_value()
    if not registry:
        return False
    module = getattr(fn, "__module__", None) or ""
    return any(module == name or module.startswith(name + ".") for name in registry)


def _pickles_by_reference(fn: types.FunctionType, blob: bytes) -> bool:
    # Plain pickle can only name a function; if cloudpickle wrote the same bytes, it named it too.
    try:
        return pickle.dumps(fn, protocol=PROTOCOL) == blob
    except Exception:
        return False


def run_call(
    fn: Callable[..., Any],
    call: Call,
    out_of_band: bool = False,
    shared_memory: bool = False,
    context: CallContext | None = None,
) -> Outcome:
    """Run one call where the work happens (a thread, a worker process, a container).

    `out_of_band`: large result buffers go to `Outcome.buffers`. `shared_memory`: the caller lives in this
    process (a thread), so result buffers are copied to keep the callee's later changes its own (argument
    buffers are the call's own snapshot already, see `ArgumentEncoder` and `Call.copy`). `context`: what the
    callee sees as `mini.runtime.current()` while it runs.

    >>> outcome = run_call(fn, call, out_of_band=True, context=CallContext(call.index, "local"))
    """
    if call.plain is not None:
        args, kwargs = call.plain
        return invoke(fn, call.index, args, kwargs, out_of_band, shared_memory, context)
    try:
        args, kwargs = loads(call.payload, buffers=call.buffers)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return Outcome(call.index, False, encode_error(exc))
    return invoke(fn, call.index, args, kwargs, out_of_band, shared_memory, context)


def invoke(
    fn: Callable[..., Any],
    index: int,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    out_of_band: bool = False,
    shared_memory: bool = False,
    context: CallContext | None = None,
) -> Outcome:
    """`fn(*args, **kwargs)` with its result or error encoded, for arguments already unpickled (see
    `run_call`, which also unpickles them). An `async def` function is awaited on the worker's event loop;
    a generator's values go one by one to the context's event sink, and the call's result is None."""
    token = None if context is None else enter(context)
    try:
        result = fn(*args, **kwargs)
        if type(result) in _SCALARS:  # the common tiny result: no buffers, nothing to await or drain
            return Outcome(index, True, pickle.dumps(result, protocol=PROTOCOL))
        result = _settled(result, context)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from user code is a failed call, not our exit
        return Outcome(index, False, encode_error(exc))
    finally:
        if token is not None:
            leave(token)
    return encode_result(index, result, out_of_band, shared_memory)


def encode_result(index: int, result: Any, out_of_band: bool = False, shared_memory: bool = False) -> Outcome:
    """A call's result as an outcome (see `invoke`): pickled, its large buffers beside it when `out_of_band`
    (copied when `shared_memory`); a result that cannot be pickled fails the call, saying so."""
    try:
        result_buffers: list[Buffer] | None = [] if out_of_band else None
        data = dump_result(result, result_buffers, copy=shared_memory)
        return Outcome(index, True, data, result_buffers or ())
    except Exception as exc:
        which = f"call #{index}" if index >= 0 else "the call"
        error = SerializationError(
            f"the result of {which} ({type(result).__name__}) cannot be pickled: {exc}. "
            "Return plain data (numbers, lists, dicts, arrays) instead."
        )
        return Outcome(index, False, encode_error(error))


def _settled(result: Any, context: CallContext | None) -> Any:
    """The value a call's return stands for: an awaitable awaited, a generator drained into the context's
    event sink (the caller reads it as a stream)."""
    if inspect.isawaitable(result):
        return wait_for(result)
    if not (inspect.isgenerator(result) or inspect.isasyncgen(result)):
        return result
    sink = context.events if context is not None else None
    if sink is None:
        result.close() if inspect.isgenerator(result) else wait_for(result.aclose())
        raise TypeError("a generator function's values can only be read with app.stream(fn, ...)")
    index = context.index if context is not None else None
    try:
        if inspect.isgenerator(result):
            for value in result:
                sink.item(index, dump_result(value))
        else:
            while True:
                try:
                    value = wait_for(result.__anext__())
                except StopAsyncIteration:
                    break
                sink.item(index, dump_result(value))
    except StreamStopped:
        result.close() if inspect.isgenerator(result) else wait_for(result.aclose())
    return None


def encode_error(exc: BaseException) -> bytes:
    """Pickle an exception with its traceback text; fall back to a `RemoteError` that keeps the type name."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = dumps(exc)
        loads(blob)  # some exceptions pickle but cannot be rebuilt (required __init__ arguments)
    except Exception:
        blob = dumps(RemoteError(type(exc).__qualname__, str(exc)))
    return dumps((blob, text))


def decode_error(data: bytes | BaseException) -> BaseException:
    """Rebuild the exception a call raised, with the remote traceback attached as its cause."""
    if isinstance(data, BaseException):
        return data
    blob, text = loads(data)
    try:
        exc = loads(blob)
    except Exception as rebuild_error:  # the type exists remotely but not here
        exc = RemoteError("unknown", f"an exception that cannot be rebuilt here ({rebuild_error})")
    exc.__cause__ = RemoteTraceback(text)
    return exc


def decode_result(outcome: Outcome) -> Any:
    if outcome.ok:
        assert isinstance(outcome.data, bytes)
        return loads(outcome.data, buffers=outcome.buffers)
    raise decode_error(outcome.data)
