"""A non-coherent CXL device for unit tests, attached at the store's cachectl seam.

A plain file, like QEMU's shared backing, is coherent: every head sees every store at once, so
a store whose flushes and invalidates were all deleted would still pass every test. Here each
head (each Store) has its own cache over the device, modelled as if it held every line:

- a write lands in the head's cache only and makes the line dirty;
- flush / invalidate (clflush in cxlcache.c: both write a dirty line back, then drop it)
  write the head's dirty lines in the range to memory and refetch the range;
- a read returns the head's cached copy. Reading a line that memory no longer matches (another
  head wrote it back since this head last dropped it) is a read of another head's data without
  an invalidate: it raises Violation;
- publish_u32 (the commit store) raises Violation while the head has any other dirty line:
  whatever the record points at must be in memory before the flag that makes it visible;
- two heads with the same line dirty raise Violation at the first write-back (one's write-back
  would silently undo the other's stores).

Every operation is recorded in Fabric.events, so a test can also assert on the order."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field

from tbagent.store.cachectl import CacheOps, Mapping

LINE = 64


class Violation(AssertionError):
    """The store broke the non-coherence protocol."""


@dataclass
class Fabric:
    """The device as every attached head shares it: the views, and what they did in order."""

    views: list[View] = field(default_factory=list)
    events: list[tuple[int, str, int, int]] = field(default_factory=list)  # (view, op, off, length)

    def attach(self, fd: int, size: int) -> tuple[Mapping, CacheOps]:
        view = View(self, len(self.views), mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        self.views.append(view)
        return view, FakeCache(view)


def _lines(off: int, length: int) -> range:
    return range(off // LINE, -(-(off + length) // LINE)) if length else range(0)


class View:
    """One head's CPU view of the device: the Store's `mm`."""

    def __init__(self, fabric: Fabric, index: int, memory: mmap.mmap) -> None:
        self.fabric = fabric
        self.index = index
        self.memory = memory
        self.cache = bytearray(memory[:])  # as if every line were cached at attach time
        self.dirty: set[int] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self.cache)

    def _range(self, key: slice) -> tuple[int, int]:
        start, stop, step = key.indices(len(self.cache))
        if step != 1:
            raise TypeError("device memory is read and written in contiguous ranges")
        return start, max(start, stop)

    def __getitem__(self, key: slice, /) -> bytes:
        a, b = self._range(key)
        if self.cache[a:b] != self.memory[a:b]:
            for line in _lines(a, b - a):
                lo, hi = max(a, line * LINE), min(b, (line + 1) * LINE)
                if line not in self.dirty and self.cache[lo:hi] != self.memory[lo:hi]:
                    raise Violation(f"head view {self.index} reads {lo:#x}..{hi:#x}, which another head has written "
                                    "back since this view last invalidated it")
        self.fabric.events.append((self.index, "read", a, b - a))
        return bytes(self.cache[a:b])

    def __setitem__(self, key: slice, value: bytes | bytearray | memoryview, /) -> None:
        a, b = self._range(key)
        if len(value) != b - a:
            raise ValueError("a device write cannot change the device's size")
        self.cache[a:b] = value
        self.dirty.update(_lines(a, b - a))
        self.fabric.events.append((self.index, "write", a, b - a))

    def writeback_and_drop(self, off: int, length: int) -> None:
        """clflush over a range: dirty lines go to memory, then the range is refetched."""
        lines = _lines(off, length)
        for line in sorted(d for d in self.dirty if d in lines):
            for other in self.fabric.views:
                if other is not self and not other.closed and line in other.dirty:
                    raise Violation(f"head views {self.index} and {other.index} both have line {line * LINE:#x} dirty")
            self.memory[line * LINE : (line + 1) * LINE] = self.cache[line * LINE : (line + 1) * LINE]
            self.dirty.discard(line)
        if lines:
            a, b = lines.start * LINE, min(len(self.cache), lines.stop * LINE)
            self.cache[a:b] = self.memory[a:b]

    def close(self) -> None:
        self.closed = True
        self.memory.close()


class FakeCache:
    def __init__(self, view: View) -> None:
        self.view = view

    def _check(self, off: int, length: int) -> None:
        if not 0 <= off <= len(self.view) or not 0 <= length <= len(self.view) - off:
            raise Violation(f"cache operation on {off:#x}+{length:#x}, outside the device")

    def flush(self, off: int, length: int) -> None:
        self._check(off, length)
        self.view.fabric.events.append((self.view.index, "flush", off, length))
        self.view.writeback_and_drop(off, length)

    def invalidate(self, off: int, length: int) -> None:
        self._check(off, length)
        self.view.fabric.events.append((self.view.index, "invalidate", off, length))
        self.view.writeback_and_drop(off, length)

    def publish_u32(self, off: int, value: int) -> None:
        self._check(off, 4)
        if off % 4:
            raise Violation("publication flag must be 4-byte aligned")
        pending = sorted(self.view.dirty)  # the flag's own line too: the header goes before the flag
        if pending:
            raise Violation(f"head view {self.view.index} publishes the flag at {off:#x} while {len(pending)} line(s) "
                            f"from {pending[0] * LINE:#x} are written but not flushed")
        self.view.fabric.events.append((self.view.index, "publish", off, 4))
        self.view.cache[off : off + 4] = struct.pack("<I", value)
        self.view.dirty.add(off // LINE)
        self.view.writeback_and_drop(off, 4)

    def close(self) -> None:
        pass
