"""One map's use of a result cache: each call looked up before it is dispatched, each success kept as soon as
its outcome arrives. `mini._maprun.MapRun` drives it:

    cache = open_map_cache(options, "sweep", train, kwargs)      # None when the variant has no cache
    hit, found = cache.look_up(index, args, encoder)             # the result, or the call to dispatch
    cache.keep(outcomes); cache.flush()                          # after each batch of outcomes
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mini.cache.folders import cache_folder, check_name, default_name
from mini.cache.keys import Unhashable, argument_digest, function_scope
from mini.cache.store import Store, frame_headers, store_for
from mini.errors import ArgumentError
from mini.options import Options
from mini.project import find_project_root
from mini.serialization import PROTOCOL, ArgumentEncoder, Call, Outcome, labelled_arguments, loads

_SCALARS = frozenset({int, float, str, bool, type(None)})
# Positional scalars pickle to a few dozen bytes, which serve as their own key; past this, their digest.
_KEY_BYTES = 512
# Pieces smaller than this are joined before writing (a copy of a few bytes saves an iovec each); larger
# ones are written from where they are, so a 100 MB array is never copied on its way to the disk.
_SMALL = 1 << 16


def open_map_cache(
    options: Options, apparatus: str, fn: Callable[..., Any], kwargs: Mapping[str, Any]
) -> MapCache | None:
    """The cache of a map of `fn` under `options` (`cache=NAME`, or `True` for the apparatus's name)."""
    setting = options.cache
    if not setting:
        return None
    name = check_name(setting) if isinstance(setting, str) else default_name(apparatus)
    scope = function_scope(name, fn, options.env)
    root = find_project_root()
    store = store_for(cache_folder(name, root), lambda: cache_folder(name, root, create=True))
    store.refresh()
    return MapCache(store, scope, fn, dict(kwargs))


class MapCache:
    """Looks calls up in one scope of a store and keeps their outcomes, a batch at a time."""

    def __init__(self, store: Store, scope: bytes, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self._store = store
        self._scope = scope
        self._table = store.table(scope)
        self._fn = fn
        self._kwargs = kwargs
        self._plain = not kwargs  # no keywords: calls of scalars may take the fast path
        try:
            self._keywords = argument_digest(kwargs)  # once per map: every call shares them
        except Unhashable as error:
            raise self._unhashable(-1, (), kwargs, error) from None
        self._pending: dict[int, bytes] = {}  # calls dispatched and not kept yet: their keys
        # What the next flush writes: keys and pickle sizes of the outcomes kept, (position, count) of those
        # with buffers and the buffers' sizes, then the data (small pieces are joined when the next large one
        # comes, or at the flush).
        self._kept: list[bytes] = []
        self._sizes: list[int] = []
        self._buffered: list[tuple[int, int]] = []
        self._buffer_sizes: list[int] = []
        self._data: list[Any] = []
        self._small: list[bytes] = []
        self.hits = 0

    def look_up(self, index: int, args: tuple[Any, ...], encoder: ArgumentEncoder) -> tuple[bool, Any]:
        """`(True, result)` for a call found in the cache; else `(False, call)`, the call to dispatch."""
        if self._plain and _SCALARS.issuperset(map(type, args)):
            # Numbers and strings pickle deterministically with plain pickle, which is the call's payload
            # anyway (`ArgumentEncoder` encodes them so): the payload is the key.
            payload = pickle.dumps((args, self._kwargs), protocol=PROTOCOL)
            key = payload if len(payload) <= _KEY_BYTES else b"H" + hashlib.blake2b(payload).digest()
            entry = self._table.get(key)
            if entry is None:
                self._pending[index] = key
                return False, Call(index, payload)
        else:
            try:
                digest = argument_digest(args)
            except Unhashable as error:
                raise self._unhashable(index, args, {}, error) from None
            key = b"C" + hashlib.blake2b(digest + self._keywords, digest_size=32).digest()
            entry = self._table.get(key)
        if entry is not None:
            found = self._store.read(entry)
            if found is not None:
                try:
                    value = loads(found[0], buffers=found[1])
                except Exception:  # written by other code (a class since renamed, another mini): a miss
                    pass
                else:
                    self.hits += 1
                    return True, value
            self._table.pop(key, None)
        self._pending[index] = key
        return False, encoder.encode(index, args, self._kwargs)

    def keep(self, outcomes: Sequence[Outcome]) -> None:
        """Queue the successes among `outcomes` for the next `flush`: their pickles and buffers, as they came
        from the backend. Failures are not kept, so the next run tries them again."""
        pending, kept, sizes, small = self._pending, self._kept, self._sizes, self._small
        for outcome in outcomes:
            if not outcome.ok:
                continue  # its key stays pending: a retry may still succeed
            key = pending.pop(outcome.index, None)
            if key is None:
                continue
            data: bytes = outcome.data  # type: ignore[assignment]
            size = len(data)
            kept.append(key)
            sizes.append(size)
            if outcome.buffers:
                self._keep_buffers(data, size, outcome.buffers)
            elif size < _SMALL:
                small.append(data)
            else:
                self._piece(data, size)

    def _keep_buffers(self, data: bytes, size: int, buffers: Sequence[Any]) -> None:
        lengths = [memoryview(buffer).nbytes for buffer in buffers]
        self._buffered.append((len(self._kept) - 1, len(lengths)))
        self._buffer_sizes.extend(lengths)
        self._piece(data, size)
        for buffer, length in zip(buffers, lengths, strict=True):
            self._piece(buffer, length)

    def _piece(self, piece: Any, size: int) -> None:
        if size < _SMALL:
            self._small.append(piece)
            return
        if self._small:
            self._data.append(b"".join(self._small))
            self._small = []
        self._data.append(piece)

    def flush(self) -> None:
        """Write what `keep` queued, in one frame."""
        if not self._kept:
            return
        if self._small:
            self._data.append(b"".join(self._small))
        counts = [0] * len(self._kept)
        for position, count in self._buffered:
            counts[position] = count
        headers = frame_headers(self._kept, self._sizes, counts, self._buffer_sizes)
        size = sum(self._sizes) + sum(self._buffer_sizes)
        count, data = len(self._kept), self._data
        self._kept, self._sizes, self._buffered, self._buffer_sizes = [], [], [], []
        self._data, self._small = [], []
        self._store.write(self._scope, count, headers, data, size)

    def close(self) -> None:
        self.flush()
        self._store.touch()

    def _unhashable(
        self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any], error: Unhashable
    ) -> ArgumentError:
        which = f"call #{index}" if index >= 0 else "every call"
        culprit = "an argument"
        for label, value in labelled_arguments(self._fn, args, kwargs):
            try:
                argument_digest(value)
            except Unhashable as inner:
                culprit, error = label, inner
                break
        where = f" (at {error.path.lstrip()})" if error.path else ""
        return ArgumentError(
            f"{culprit} of {which} to {_qualname(self._fn)} cannot be hashed for the cache: {error.reason}"
            f"{where}. A cached call is looked up by the value of its arguments: pass numbers, strings, "
            "lists, tuples, dicts, sets, dataclasses, enums, paths or NumPy arrays, or use a variant without "
            "a cache (.w(cache=False))."
        )


def _qualname(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
