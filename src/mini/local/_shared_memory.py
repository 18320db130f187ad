"""Large buffers between the pool and its workers through shared memory, with copy semantics.

Each side writes the large buffers it sends (arguments one way, results the other) into segments of its
own (`Outbox`) and lends them to the other side, which maps them (`Inbox`) and builds its arrays on them
without a copy. A segment is an anonymous memory file (Linux `memfd_create`), passed once over the
worker's socket (SCM_RIGHTS) and reused for later buffers:

- why memfd rather than `multiprocessing.shared_memory` or a file: it has no name, so nothing can be left
  behind. The kernel frees it when the last process holding it (a descriptor or a mapping) ends, whether
  that process returned, crashed, was killed or was interrupted; no resource tracker or cleanup hook is
  involved, and `/dev/shm` is never written.
- why segments are reused: on the machines we measured, touching fresh shared pages costs ten times the
  copy (page faults), and so does mapping a segment anew; a segment kept and mapped once is as fast as
  plain memory.
- copy semantics: the sender copies each buffer into a segment (its own array is never shared), and a
  segment lent to the other side is not written again until that side says every object built on it is
  gone (`Inbox` watches them; the release travels with the next message). So a callee's writes never reach
  the caller's array, and nothing written later reaches an array the other side still holds.

Only the stdlib is used here: the worker side runs inside environments that hold nothing but the
project's pinned dependencies.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import weakref
from collections import OrderedDict
from typing import Any

# Buffers from this size travel through shared memory; smaller ones are copied through the socket, which
# is as fast for them and keeps segments few.
SHARED_BYTES = 1 << 20
# Linux has memfd_create; elsewhere every buffer goes through the socket.
AVAILABLE = hasattr(os, "memfd_create")
# Released segments kept for reuse, least recently used dropped first beyond this many bytes (the most
# recently released one is always kept, however large).
_IDLE_BYTES = 1 << 30

Descriptor = tuple[int, int]  # (segment id, bytes used): a buffer lent through shared memory
Announcement = tuple[int, int]  # (segment id, segment size): a new segment, whose descriptor travels along


class _Segment:
    __slots__ = ("fd", "id", "memory", "size")

    def __init__(self, segment_id: int, size: int) -> None:
        self.id = segment_id
        self.size = size
        self.fd = os.memfd_create("mini", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.memory = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        self.memory.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Outbox:
    """The segments this side writes for its peer: `place` copies a buffer into a free one (or a new one)
    and lends it; `released` takes back what the peer no longer uses.

    >>> descriptor = outbox.place(memoryview(array).cast("B"))   # then send outbox.take_new() first
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._free: OrderedDict[int, _Segment] = OrderedDict()  # least recently released first
        self._lent: dict[int, _Segment] = {}
        self._new: list[_Segment] = []
        self._retired: list[int] = []
        self._closed = False

    def place(self, raw: memoryview) -> Descriptor:
        """Copy `raw` into a segment lent to the peer from now; ValueError once closed."""
        if self._closed:
            raise ValueError("the segments of a worker that has ended")
        size = raw.nbytes
        segment = self._fitting(size)
        if segment is None:
            segment = _Segment(next(self._ids), _rounded(size))
            self._new.append(segment)
        segment.memory[:size] = raw
        self._lent[segment.id] = segment
        return segment.id, size

    def announcements(self, most: int) -> list[tuple[tuple[str, list[Announcement]], list[int]]]:
        """Segments made since the last call, to announce before the message that uses them: messages
        `("segments", [(id, size), ...])`, each with the descriptors to attach (at most `most`). Once
        sent, `sent(fds)` closes this side's descriptors: the peer holds its own then."""
        new, self._new = self._new, []
        return [
            (("segments", [(s.id, s.size) for s in new[at : at + most]]), [s.fd for s in new[at : at + most]])
            for at in range(0, len(new), most)
        ]

    def sent(self, fds: list[int]) -> None:
        for segment in [*self._lent.values(), *self._free.values()]:
            if segment.fd in fds:
                os.close(segment.fd)
                segment.fd = -1

    def take_retired(self) -> list[int]:
        """Segments closed here since the last call: the peer should drop its mapping of them."""
        retired, self._retired = self._retired, []
        return retired

    def released(self, ids: list[int]) -> None:
        for segment_id in ids:
            segment = self._lent.pop(segment_id, None)
            if segment is not None:
                self._free[segment_id] = segment
        idle = sum(segment.size for segment in self._free.values())
        while len(self._free) > 1 and idle > _IDLE_BYTES:
            _, oldest = self._free.popitem(last=False)
            idle -= oldest.size
            oldest.close()
            self._retired.append(oldest.id)

    def close(self) -> None:
        """Close every segment (the peer's mappings, if any, keep their memory until it drops them)."""
        self._closed = True
        for segment in [*self._new, *self._lent.values(), *self._free.values()]:
            segment.close()
        self._new, self._lent, self._free = [], {}, OrderedDict()

    def _fitting(self, size: int) -> _Segment | None:
        # The smallest free segment that holds `size` bytes, so that large segments stay for large buffers.
        fits = [segment for segment in self._free.values() if segment.size >= size]
        if not fits:
            return None
        best = min(fits, key=lambda segment: segment.size)
        del self._free[best.id]
        return best


class Inbox:
    """The peer's segments, mapped here. `view` gives the memory of one lent buffer as an object that the
    unpickled array keeps alive; once every object built on it is gone, the segment's id is released
    (`take_released`, sent back with this side's next message).

    >>> inbox.add(announcements, fds)
    >>> args = pickle.loads(payload, buffers=[inbox.view(*descriptor)])
    """

    def __init__(self) -> None:
        self._mapped: dict[int, mmap.mmap] = {}
        self._released: list[int] = []  # appended by finalizers, from any thread

    def add(self, announcements: list[Announcement], fds: list[int]) -> None:
        for (segment_id, size), fd in zip(announcements, fds, strict=True):
            try:
                self._mapped[segment_id] = mmap.mmap(fd, size)
            finally:
                os.close(fd)

    def view(self, segment_id: int, size: int) -> Any:
        # A ctypes array over the mapping: what unpickling builds on it references this very object (a
        # memoryview would be bypassed), so its finalizer runs when the last of those objects is gone.
        buffer = (ctypes.c_ubyte * size).from_buffer(self._mapped[segment_id])
        weakref.finalize(buffer, self._released.append, segment_id)
        return buffer

    def retire(self, ids: list[int]) -> None:
        for segment_id in ids:
            self._mapped.pop(segment_id, None)  # arrays still built on it keep the mapping alive

    def take_released(self) -> list[int]:
        released, self._released = self._released, []
        return released

    def close(self) -> None:
        self._mapped.clear()


def _rounded(size: int) -> int:
    # Up to a sixteenth of the next power of two (at least a page), so that a slightly larger buffer next
    # time still fits the same segment.
    step = max(mmap.PAGESIZE, 1 << max(size.bit_length() - 5, 0))
    return -(-size // step) * step
