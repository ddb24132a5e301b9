"""Map a stretch of a dump so that a file shrinking under the scan is an error, not a crash.

A one-process scan reading windows with pread spends as long copying them out of the page
cache as scanning them. A mapping skips that copy, but touching a page the file no
longer holds raises SIGBUS, which no Python code survives. The C module `_mapguard`
answers such a fault inside an armed mapping with a page of zeros and notes where it
happened; `mapped` then raises `Faulted` when the window is done, before any result
built from those zeros is used. Where the module is not built (no compiler, not Linux),
or POOLTAGSCAN_NO_MAPGUARD is set, `available()` is False and callers read with pread.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

try:
    from pooltagscan.inputs import _mapguard
except ImportError:
    _mapguard = None
if os.environ.get("POOLTAGSCAN_NO_MAPGUARD"):  # the tests take the other paths this way
    _mapguard = None

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# Mappings start on a 2 MiB boundary of the file: the kernel then maps the page cache's
# large folios whole, and faulting a window in costs an eighth of what 4 KiB pages do
# (measured on 2 MiB windows at unaligned offsets: 0.26 against 0.03 us a page).
ALIGN = max(2 << 20, mmap.ALLOCATIONGRANULARITY)


class Faulted(Exception):
    """The mapped file did not hold the byte at `offset` (a file offset) when it was read."""

    def __init__(self, offset: int):
        super().__init__(offset)
        self.offset = offset


def available() -> bool:
    return _mapguard is not None


@contextmanager
def mapped(fd: int, offset: int, length: int, guard: bool) -> Iterator[memoryview]:
    """`length` bytes at `offset` of `fd`, mapped read-only (shared, faulted in at once),
    unmapped on exit. With `guard`, Faulted is raised on exit when a byte of the range
    could not be read; without, such a read kills the process (scan workers only, whose
    death the parent reports). Faulted at once when the file no longer reaches the end
    of the range; OSError/ValueError when the range cannot be mapped."""
    start = offset - offset % ALIGN
    delta = offset - start
    # ... and end on one, where the file reaches it (mmap refuses a range past the end).
    file_size = os.fstat(fd).st_size
    if file_size < offset + length:
        raise Faulted(max(offset, file_size))
    size = max(delta + length, min(-(-(delta + length) // ALIGN) * ALIGN, file_size - start))
    if _POPULATE:
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE,
                       prot=mmap.PROT_READ, offset=start)  # fmt: skip
    else:
        mm = mmap.mmap(fd, size, offset=start, access=mmap.ACCESS_READ)
    view = memoryview(mm)[delta : delta + length]
    _sweep()
    slot = _mapguard.arm(view) if guard and _mapguard is not None else -1
    if guard and slot < 0:  # no guard to be had (all slots armed): copy the bytes instead
        view.release()
        mm.close()
        yield _read(fd, offset, length)
        return
    try:
        yield view
    finally:
        fault = _mapguard.faulted(slot) if slot >= 0 else -1
        # Disarmed before the range is unmapped: another scan thread may map the same
        # addresses the moment it is, and its faults must not land in this slot.
        if slot >= 0:
            _mapguard.disarm(slot)
        try:
            view.release()
            mm.close()
        except BufferError:
            # A caller still holds a view (a `with ... as words` name outlives its block):
            # the mapping lives on with it, and so must a guard, until it goes.
            if slot >= 0:
                again = _mapguard.arm(mm)
                if again >= 0:
                    with _lingering_lock:
                        _lingering.append((weakref.ref(mm), again))
    if fault >= 0:
        raise Faulted(offset + fault)


# (mapping, slot) of guards kept for mappings that outlived their block. Swept, not called
# back: a weakref callback that Ctrl-C interrupts is "ignored" and the interrupt lost.
# Scan threads map windows side by side: one lock, so no guard is disarmed twice.
_lingering: list[tuple[weakref.ref, int]] = []
_lingering_lock = threading.Lock()


def _sweep() -> None:
    """Disarm the guards of lingering mappings that are gone now."""
    with _lingering_lock:
        for item in [item for item in _lingering if item[0]() is None]:
            _lingering.remove(item)
            _mapguard.disarm(item[1])


def _read(fd: int, offset: int, length: int) -> memoryview:
    buf = bytearray(length)
    got = os.preadv(fd, [buf], offset)
    if got < length:
        raise Faulted(offset + got)
    return memoryview(buf)
