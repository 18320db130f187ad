"""Where cached outcomes live: append-only segment files under `.mini/cache/NAME/`, one per writing process.

    .mini/cache/NAME/<pid>-<random>.seg     a header, then frames appended as outcomes arrive
    .mini/cache/NAME/last_used              touched once per map that used the cache (`mini cache ls`)

A frame is one batch of outcomes of one map, written with one `writev`: a frame header (the map's scope,
the sizes, a checksum of the record headers), the record headers (as arrays: each call's argument key, the
sizes of its pickle and of its out-of-band buffers), then the pickles and buffers themselves, exactly as the
backend delivered them. Readers scan the headers only and seek over the data, so opening a cache of large
results reads almost nothing; a hit reads one entry straight into the memory its result will own. A writer
does not index what it writes: its next map finds it by scanning, as any other process does.

Nothing is ever rewritten in place, and no two processes write the same file, so concurrent sweeps never
corrupt each other (they may both compute a call; either entry serves). A frame cut short by a crash, a
segment of another format, or a damaged header is skipped, never an error: what it held is recomputed.
"""

from __future__ import annotations

import array
import contextlib
import os
import secrets
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
_SEGMENT = struct.Struct("<12sI")  # magic, format
_SEGMENT_MAGIC = b"mini-cache\0\0"
# magic, scope, crc32 of the record headers, records, size of the record headers, size of the data
_FRAME = struct.Struct("<4s16sIIIQ")
_FRAME_MAGIC = b"MCfr"
_SUFFIX = ".seg"
LAST_USED = "last_used"
_IOV_MAX = 1024  # iovecs per writev (Linux's IOV_MAX)
_READ_CHUNK = 1 << 30  # bytes per pread/preadv: the kernel moves at most about 2 GiB per call

Entry = tuple["_Segment", int, int, tuple[int, ...]]  # segment, offset of the pickle, its size, buffer sizes


class _Segment:
    """One segment file as this process reads it: how far it has been scanned, and whether it can be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.scanned = 0
        self.stopped = False  # another format, or a damaged frame: nothing more is read from it

    def open(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def scan(self, found: Any) -> None:
        """Tell `found(scope, key, entry)` of every complete frame's records past `scanned`."""
        if self.stopped:
            return
        fd = self.open()
        size = os.fstat(fd).st_size
        if self.scanned == 0:
            if size < _SEGMENT.size:
                return  # being created
            magic, version = _SEGMENT.unpack(os.pread(fd, _SEGMENT.size, 0))
            if magic != _SEGMENT_MAGIC or version != FORMAT:
                self.stopped = True
                return
            self.scanned = _SEGMENT.size
        while self.scanned + _FRAME.size <= size:
            start = self.scanned
            frame = os.pread(fd, _FRAME.size, start)
            magic, scope, crc, count, headers_size, data_size = _FRAME.unpack(frame)
            if magic != _FRAME_MAGIC:
                self.stopped = True
                return
            data_start = start + _FRAME.size + headers_size
            if data_start + data_size > size:
                return  # cut short: still being written, or its writer died (then it stays so)
            headers = os.pread(fd, headers_size, start + _FRAME.size)
            if len(headers) != headers_size or zlib.crc32(headers) != crc:
                self.stopped = True
                return
            try:
                records = list(_records(self, count, headers, data_start))
            except (ValueError, IndexError):  # sizes that do not add up: a damaged frame
                self.stopped = True
                return
            for key, entry in records:
                found(scope, key, entry)
            self.scanned = data_start + data_size


def frame_headers(keys: list[bytes], sizes: list[int], counts: list[int], buffer_sizes: list[int]) -> bytes:
    """The record headers of a frame: key sizes, pickle sizes, buffer counts, buffer sizes, then the keys."""
    parts = [
        _array("H", [len(key) for key in keys]),
        _array("Q", sizes),
        _array("H", counts),
        _array("Q", buffer_sizes),
    ]
    return b"".join(parts) + b"".join(keys)


def _records(segment: _Segment, count: int, headers: bytes, data_start: int) -> Iterator[tuple[bytes, Entry]]:
    view = memoryview(headers)
    key_sizes, position = _unarray("H", view, 0, count)
    sizes, position = _unarray("Q", view, position, count)
    counts, position = _unarray("H", view, position, count)
    buffer_sizes, position = _unarray("Q", view, position, sum(counts))
    if position + sum(key_sizes) != len(headers):
        raise ValueError("the record headers do not add up")
    offset, taken = data_start, 0
    for key_size, size, buffers in zip(key_sizes, sizes, counts, strict=True):
        key = headers[position : position + key_size]
        position += key_size
        lengths = tuple(buffer_sizes[taken : taken + buffers]) if buffers else ()
        taken += buffers
        yield key, (segment, offset, size, lengths)
        offset += size + sum(lengths)


def _array(code: str, values: list[int]) -> bytes:
    packed = array.array(code, values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def _unarray(code: str, view: memoryview, position: int, count: int) -> tuple[array.array[int], int]:
    values = array.array(code)
    end = position + values.itemsize * count
    if end > len(view):
        raise ValueError("record headers cut short")
    values.frombytes(view[position:end])
    if sys.byteorder != "little":
        values.byteswap()
    return values, end


class _Writer:
    """This process's own segment of one cache, created on its first write (and `make_folder` first)."""

    def __init__(self, folder: Path, make_folder: Callable[[], object]) -> None:
        make_folder()
        while True:
            path = folder / f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0))
                break
            except FileExistsError:
                continue
        self.position = 0
        self.write([_SEGMENT.pack(_SEGMENT_MAGIC, FORMAT)], _SEGMENT.size)

    def gone(self) -> bool:
        """Whether the segment was deleted (`mini cache clear`, or the folder removed by hand)."""
        return os.fstat(self.fd).st_nlink == 0

    def write(self, pieces: Sequence[Any], total: int) -> None:
        """Append `pieces` (`total` bytes in all); a short write goes on where it stopped, so a frame is never
        left half-written while this process lives."""
        if len(pieces) <= _IOV_MAX:
            written = os.writev(self.fd, pieces)
            self.position += written
            if written == total:
                return
        else:
            written = 0
        views = [memoryview(piece).cast("B") for piece in pieces]
        while views:
            while views and written >= views[0].nbytes:
                written -= views[0].nbytes
                views.pop(0)
            if not views:
                return
            views[0] = views[0][written:]
            written = os.writev(self.fd, views[:_IOV_MAX])
            self.position += written

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Store:
    """One cache folder as this process sees it: an index of every entry (built from the segments' headers),
    the entries it reads, and its own segment, which it appends to. Safe to share between threads.

    >>> store = store_for(root / ".mini" / "cache" / "spirals-v1")
    >>> store.refresh(); table = store.table(scope)
    """

    def __init__(self, folder: Path, make_folder: Callable[[], object] | None = None) -> None:
        self.folder = folder
        self._make_folder = make_folder or (lambda: folder.mkdir(parents=True, exist_ok=True))
        self._lock = threading.Lock()
        self._tables: dict[bytes, dict[bytes, Entry]] = {}
        self._segments: dict[str, _Segment] = {}
        self._writer: _Writer | None = None
        self.write_failed: OSError | None = None

    def refresh(self) -> None:
        """Take in what other processes (and earlier runs) have written since the last look."""
        with self._lock:
            try:
                names = {e.name for e in os.scandir(self.folder) if e.name.endswith(_SUFFIX)}
            except FileNotFoundError:
                names = set()
            if any(name not in names for name in self._segments):  # entries were cleared: start over
                self._forget_all()
            for name in sorted(names):
                segment = self._segments.get(name)
                if segment is None:
                    segment = self._segments[name] = _Segment(self.folder / name)
                try:
                    segment.scan(self._found)
                except OSError:  # deleted as we looked; the next refresh starts over
                    segment.stopped = True

    def _found(self, scope: bytes, key: bytes, entry: Entry) -> None:
        table = self._tables.get(scope)
        if table is None:
            table = self._tables[scope] = {}
        table[key] = entry

    def _forget_all(self) -> None:
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()
        self._tables.clear()

    def table(self, scope: bytes) -> dict[bytes, Entry]:
        """The entries of one scope (one function under one cache name), by argument key."""
        with self._lock:
            table = self._tables.get(scope)
            if table is None:
                table = self._tables[scope] = {}
            return table

    def read(self, entry: Entry) -> tuple[bytes, list[Any]] | None:
        """An entry's pickle and its buffers, each read straight into memory of its own; None if it cannot
        be read back whole."""
        from mini.serialization import fresh_buffer

        segment, offset, size, sizes = entry
        with self._lock:
            try:
                fd = segment.open()
                data = _read_bytes(fd, size, offset)
                if data is None:
                    return None
                offset += size
                buffers = []
                for length in sizes:
                    buffer = fresh_buffer(length)
                    if not _read_into(fd, memoryview(buffer).cast("B"), offset):
                        return None
                    buffers.append(buffer)
                    offset += length
            except OSError:
                return None
        return data, buffers

    def write(self, scope: bytes, count: int, headers: bytes, data: list[Any], size: int) -> None:
        """Append one frame of `count` records (`headers` from `frame_headers`, then `data`: `size` bytes of
        pickles and buffers in record order). A cache that cannot be written (a full disk) is reported once,
        not raised: the map goes on and its results are simply not kept."""
        frame = _FRAME.pack(_FRAME_MAGIC, scope, zlib.crc32(headers), count, len(headers), size)
        with self._lock:
            try:
                writer = self._writer
                if writer is None or writer.gone():  # first write, or the folder was deleted: a new one
                    if writer is not None:
                        writer.close()
                    writer = self._writer = _Writer(self.folder, self._make_folder)
                writer.write([frame, headers, *data], _FRAME.size + len(headers) + size)
            except OSError as error:
                self._abandon_writer(error)

    def _abandon_writer(self, error: OSError) -> None:
        # Whatever part of the frame reached the file ends that segment (readers stop there); a later
        # write starts a new segment.
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.write_failed is None:
            print(
                f"mini: cannot write to the cache in {self.folder} ({error}); results are not kept.",
                file=sys.stderr,
            )
        self.write_failed = error

    def touch(self) -> None:
        """Note that the cache was used now (once per map: `mini cache ls` shows it)."""
        with contextlib.suppress(OSError):
            path = self.folder / LAST_USED
            try:
                os.utime(path)
            except FileNotFoundError:
                if self.folder.is_dir():
                    path.touch()

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._forget_all()

    def counts(self) -> tuple[int, int]:
        """(entries, segments of another format or damaged) as last refreshed."""
        with self._lock:
            entries = sum(len(table) for table in self._tables.values())
            unreadable = sum(1 for segment in self._segments.values() if segment.stopped)
            return entries, unreadable


def _read_bytes(fd: int, size: int, offset: int) -> bytes | None:
    if size <= _READ_CHUNK:
        data = os.pread(fd, size, offset)
        return data if len(data) == size else None
    buffer = bytearray(size)
    return bytes(buffer) if _read_into(fd, memoryview(buffer), offset) else None


def _read_into(fd: int, view: memoryview, offset: int) -> bool:
    done = 0
    while done < view.nbytes:
        count = os.preadv(fd, [view[done : done + _READ_CHUNK]], offset + done)
        if count <= 0:
            return False
        done += count
    return True


_stores: dict[Path, Store] = {}
_stores_lock = threading.Lock()


def store_for(folder: Path, make_folder: Callable[[], object] | None = None) -> Store:
    """This process's `Store` of `folder`, shared by every map that uses it; `make_folder` creates the
    folder when a write finds it missing (by default, `mkdir`)."""
    with _stores_lock:
        store = _stores.get(folder)
        if store is None:
            store = _stores[folder] = Store(folder, make_folder)
        return store


def forget_store(folder: Path) -> None:
    """Drop this process's view of `folder` (its files were removed)."""
    with _stores_lock:
        store = _stores.pop(folder, None)
    if store is not None:
        store.close()


@dataclass(frozen=True)
class Footprint:
    """What one cache folder holds on disk."""

    entries: int
    bytes: int
    unreadable_segments: int
    last_used: float | None


def footprint(folder: Path) -> Footprint:
    """Count a cache folder's entries (reading headers only), its size and when it was last used."""
    store = Store(folder)
    try:
        store.refresh()
        entries, unreadable = store.counts()
    finally:
        store.close()
    size, newest = 0, None
    with contextlib.suppress(FileNotFoundError):
        for item in os.scandir(folder):
            stat = item.stat()
            if item.name.endswith(_SUFFIX):
                size += stat.st_size
            newest = stat.st_mtime if newest is None else max(newest, stat.st_mtime)
    return Footprint(entries, size, unreadable, newest)
