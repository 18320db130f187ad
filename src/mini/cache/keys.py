"""Cache keys: what makes two calls the same call (pure functions, no I/O but reading source files).

A key has two parts. The *scope* names the function as written (cache name, `module:qualname`, its source,
its defaults and the values it closes over, the `env` option), one digest per map. The *argument key* names
one call's arguments: for positional arguments that are all numbers, strings, booleans or None (and no
keywords), mini's own pickle of the call, which is deterministic for those; otherwise a canonical digest in
which equal values hash alike whatever their identity or insertion order.

>>> scope = function_scope("spirals-v1", train, env=None)
>>> argument_digest(({"lr": 0.1, "width": 64},)) == argument_digest(({"width": 64, "lr": 0.1},))
True

Functions the function calls and globals it reads are not part of the key (see docs/concepts.md).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import marshal
import pathlib
import struct
import sys
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from mini.errors import ArgumentError, OptionError
from mini.volumes import Volume

# Part of every scope: a change to the rules below makes every older key unreachable (recomputed).
KEY_RULES = b"mini-cache-keys-1"

_DOUBLE = struct.Struct("<d")
_LENGTH = struct.Struct("<Q")


class Unhashable(ArgumentError):
    """A value the canonical hash has no rule for; `path` says where it sits inside the argument. Callers
    turn it into an error that names the argument (`mini.cache.lookup`) or the function."""

    def __init__(self, value: Any, reason: str = "") -> None:
        super().__init__(type(value).__name__)
        self.value = value
        self.reason = reason or f"{_type_name(value)} values have no canonical hash"
        self.path = ""

    def inside(self, step: str) -> Unhashable:
        self.path = step + self.path
        return self


def argument_digest(value: Any) -> bytes:
    """A 32-byte digest of `value` in which equal values hash alike: dicts by their sorted items, sets by
    their sorted elements, NumPy arrays by dtype, shape and bytes, dataclasses by type and fields; lists and
    tuples differ, and so do `True` and `1`. Raises `Unhashable` for a value it has no rule for."""
    return _Canonical(set()).digest(value)


class _Canonical:
    """Feeds a canonical, prefix-free encoding of a value to `write`: each part starts with a tag byte, and
    anything of variable size carries its length, so two different values never write the same bytes."""

    def __init__(self, active: set[int]) -> None:
        self._hasher = hashlib.blake2b(digest_size=32)
        self._write = self._hasher.update
        self._active = active  # containers being written: a value that holds itself is refused

    def digest(self, value: Any) -> bytes:
        self.add(value)
        return self._hasher.digest()

    def _nested(self, value: Any, step: str) -> bytes:
        """The digest of a part on its own (dict items and set elements are sorted by digest)."""
        try:
            return _Canonical(self._active).digest(value)
        except Unhashable as error:
            raise error.inside(step) from None

    def add(self, value: Any) -> None:
        kind = type(value)
        exact = _EXACT.get(kind)
        if exact is not None:
            exact(self, value)
            return
        self._other(value)

    # ----- one rule per kind -------------------------------------------------------------------------

    def _none(self, value: None) -> None:
        self._write(b"N")

    def _bool(self, value: bool) -> None:
        self._write(b"T" if value else b"F")

    def _int(self, value: int) -> None:
        self._sized(b"i", value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True))

    def _float(self, value: float) -> None:
        self._write(b"f" + _DOUBLE.pack(value))

    def _complex(self, value: complex) -> None:
        self._write(b"c" + _DOUBLE.pack(value.real) + _DOUBLE.pack(value.imag))

    def _str(self, value: str) -> None:
        self._text(b"s", value)

    def _bytes(self, value: bytes) -> None:
        self._sized(b"b", value)

    def _bytearray(self, value: bytearray) -> None:
        self._sized(b"y", bytes(value))

    def _list(self, value: list[Any]) -> None:
        self._sequence(b"l", value)

    def _tuple(self, value: tuple[Any, ...]) -> None:
        self._sequence(b"t", value)

    def _dict(self, value: Mapping[Any, Any]) -> None:
        with self._entering(value):
            items = []
            for key, item in value.items():
                key_digest = self._nested(key, f"[{key!r}] (a key)")
                items.append((key_digest, self._nested(item, f"[{key!r}]")))
            items.sort()
            self._write(b"d" + _LENGTH.pack(len(items)))
            for key_digest, item_digest in items:
                self._write(key_digest + item_digest)

    def _set(self, value: set[Any] | frozenset[Any]) -> None:
        tag = b"S" if isinstance(value, set) else b"Z"
        with self._entering(value):
            digests = sorted(self._nested(item, f" (an element {item!r})") for item in value)
        self._write(tag + _LENGTH.pack(len(digests)) + b"".join(digests))

    def _range(self, value: range) -> None:
        self._text(b"r", f"{value.start}:{value.stop}:{value.step}")

    # ----- kinds found by isinstance -----------------------------------------------------------------

    def _other(self, value: Any) -> None:
        kind = type(value)
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
            self._array(numpy, value)
        elif isinstance(value, enum.Enum):
            self._named(b"E", kind)
            self.add(value.value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            self._dataclass(value)
        elif isinstance(value, pathlib.PurePath):
            self._named(b"P", kind)
            self._str(str(value))
        elif isinstance(value, Volume):
            # Named by where its files are (a cache is per project, and so is a volume of one name on one
            # backend): the same name on another backend is another volume, whose files a hit would lack.
            self._text(b"V", f"{value.backend}:{value.name}")
        elif isinstance(value, (types.FunctionType, functools.partial)):
            self._write(b"u" + _identity(value, self._active))
        elif isinstance(value, types.BuiltinFunctionType):
            self._text(b"B", _name(value))
        elif isinstance(value, type):
            self._named(b"C", value)
        elif isinstance(value, types.ModuleType):
            self._text(b"M", value.__name__)
        else:
            base = next((b for b in _SUBCLASSABLE if isinstance(value, b)), None)
            if base is None:
                raise Unhashable(value)
            # A subclass of a builtin (a NamedTuple, an IntEnum-like str): its type, then its builtin value.
            self._named(b"X", kind)
            _EXACT[base](self, value)
            if getattr(value, "__dict__", None):
                self._dict(vars(value))

    def _array(self, numpy: Any, value: Any) -> None:
        array = numpy.asarray(value)
        if array.dtype.hasobject:  # its bytes are pointers: hash the elements instead
            self._text(b"O", str(array.shape))
            self._list(array.ravel().tolist())
            return
        self._text(b"a", f"{array.dtype.str}{array.dtype.descr}{array.shape}")
        raw = numpy.ascontiguousarray(array).reshape(-1).view(numpy.uint8)
        self._write(_LENGTH.pack(raw.nbytes))
        self._write(memoryview(raw))

    def _dataclass(self, value: Any) -> None:
        self._named(b"D", type(value))
        with self._entering(value):
            fields = dataclasses.fields(value)
            self._write(_LENGTH.pack(len(fields)))
            for field in fields:
                self._str(field.name)
                try:
                    self.add(getattr(value, field.name))
                except Unhashable as error:
                    raise error.inside(f".{field.name}") from None

    # ----- helpers -----------------------------------------------------------------------------------

    def _sequence(self, tag: bytes, value: list[Any] | tuple[Any, ...]) -> None:
        with self._entering(value):
            self._write(tag + _LENGTH.pack(len(value)))
            for position, item in enumerate(value):
                try:
                    self.add(item)
                except Unhashable as error:
                    raise error.inside(f"[{position}]") from None

    def _text(self, tag: bytes, text: str) -> None:
        self._sized(tag, text.encode("utf-8", "surrogatepass"))

    def _sized(self, tag: bytes, data: bytes) -> None:
        self._write(tag + _LENGTH.pack(len(data)) + data)

    def _named(self, tag: bytes, kind: type) -> None:
        self._text(tag, f"{kind.__module__}:{kind.__qualname__}")

    def _entering(self, value: Any) -> _Guard:
        return _Guard(self._active, value)


class _Guard:
    def __init__(self, active: set[int], value: Any) -> None:
        self._active = active
        self._id = id(value)
        if self._id in active:
            raise Unhashable(value, f"a {_type_name(value)} that contains itself cannot be hashed")

    def __enter__(self) -> None:
        self._active.add(self._id)

    def __exit__(self, *exc: object) -> None:
        self._active.discard(self._id)


_EXACT: dict[type, Callable[[_Canonical, Any], None]] = {
    type(None): _Canonical._none,
    bool: _Canonical._bool,
    int: _Canonical._int,
    float: _Canonical._float,
    complex: _Canonical._complex,
    str: _Canonical._str,
    bytes: _Canonical._bytes,
    bytearray: _Canonical._bytearray,
    list: _Canonical._list,
    tuple: _Canonical._tuple,
    dict: _Canonical._dict,
    set: _Canonical._set,
    frozenset: _Canonical._set,
    range: _Canonical._range,
}
_SUBCLASSABLE = (tuple, list, dict, set, frozenset, str, bytes, int, float)


# ----- the function ------------------------------------------------------------------------------------


def function_identity(fn: Any) -> bytes:
    """A 32-byte digest of what `fn` is: `module:qualname`, its source (else its code object), its defaults
    and the values it closes over. `OptionError` for a callable with neither source nor code (a builtin),
    or whose defaults or closure cannot be hashed."""
    return _identity(fn, set())


def _identity(fn: Any, active: set[int]) -> bytes:
    hasher = hashlib.blake2b(digest_size=32)
    write = hasher.update
    if id(fn) in active:  # a nested function that calls itself closes over itself: name it, once
        write(b"again" + _name(fn).encode())
        return hasher.digest()
    active.add(id(fn))
    parts: list[tuple[str, Any]]
    try:
        if isinstance(fn, functools.partial):
            write(b"partial" + _identity(fn.func, active))
            parts = [("its bound arguments", fn.args), ("its bound keywords", fn.keywords)]
        elif isinstance(fn, types.MethodType):
            write(b"method" + _identity(fn.__func__, active))
            parts = [("the object it is bound to", fn.__self__)]
        elif isinstance(fn, types.FunctionType):
            write(b"function" + _name(fn).encode() + b"\0" + _code_identity(fn))
            parts = [("its default arguments", fn.__defaults__ or ())]
            parts.append(("its keyword-only defaults", fn.__kwdefaults__ or {}))
            for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
                try:
                    parts.append((f"the variable {name!r} it closes over", cell.cell_contents))
                except ValueError:  # a cell not filled yet (a name bound after the function was defined)
                    parts.append((f"the variable {name!r} it closes over", None))
        else:
            wrapped = getattr(fn, "__wrapped__", None)  # a decorator's object (functools.wraps)
            if wrapped is None or wrapped is fn:
                raise _no_code(fn)
            write(b"wrapper" + _name(type(fn)).encode() + _identity(wrapped, active))
            parts = []
        for what, value in parts:
            try:
                write(_Canonical(active).digest(value))
            except (Unhashable, RecursionError) as error:
                raise _unhashable_part(fn, what, error) from None
    finally:
        active.discard(id(fn))
    return hasher.digest()


def _unhashable_part(fn: Any, what: str, error: Exception) -> OptionError:
    held = (
        f" ({error.reason}, at {what}{error.path})" if isinstance(error, Unhashable) else " (nested too deep)"
    )
    return OptionError(
        f"the cache cannot key calls to {_name(fn)}: {what} cannot be hashed{held}. A cached call is keyed "
        "by the function's code, its defaults and the values it closes over: make that value plain data "
        "(numbers, strings, containers, dataclasses), pass it as an argument instead, or use a variant "
        "without a cache for this function (.w(cache=False))."
    )


_code_memo: weakref.WeakKeyDictionary[types.FunctionType, bytes] = weakref.WeakKeyDictionary()


def _code_identity(fn: types.FunctionType) -> bytes:
    """Its source when Python can find it (a file, a notebook cell), else its compiled code; read once per
    function object, so a source file edited under a running function keeps the code that really runs."""
    known = _code_memo.get(fn)
    if known is not None:
        return known
    try:
        identity = b"source\0" + inspect.getsource(fn).encode("utf-8", "surrogatepass")
    except (OSError, TypeError):  # typed at a prompt, or built with exec/compile from a string
        # Version 2: no back-references, whose presence depends on reference counts (not deterministic).
        identity = b"code\0" + marshal.dumps(fn.__code__, 2)
    _code_memo[fn] = identity
    return identity


def _no_code(fn: Any) -> OptionError:
    return OptionError(
        f"the cache cannot key calls to {_name(fn)} ({type(fn).__name__}): it has no source and no Python "
        "code object, and mini keys a cached call by the function's code. Wrap it in a function of your "
        "own (def my_step(x): return step(x)) and map that, or use this variant without a cache "
        "(.w(cache=False))."
    )


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}:{getattr(fn, '__qualname__', None) or repr(fn)}"


def function_scope(cache_name: str, fn: Callable[..., Any], env: Mapping[str, str] | None) -> bytes:
    """The 16-byte digest every call of one map shares: cache name, the function, the `env` option (the
    one option that can change what a call returns; gpu, timeout, retries and the rest cannot)."""
    hasher = hashlib.blake2b(KEY_RULES, digest_size=16)
    hasher.update(_LENGTH.pack(len(cache_name)) + cache_name.encode())
    hasher.update(function_identity(fn))
    hasher.update(argument_digest(dict(env or {})))
    return hasher.digest()
