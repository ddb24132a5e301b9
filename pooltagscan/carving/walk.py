"""The present pages of the kernel half of an address space, enumerated from its tables.

Translating every kernel virtual address one by one would cost a walk per page over
terabytes of mostly empty space; reading each table page once and keeping its present
entries (numpy over the 512 or 1024 entries) visits only what is mapped. The self-map
entry (the top table pointing at itself, see `addressing.search`) is skipped: through it
every page table reappears as data. A hostile table cannot make the walk loop (its
depth is fixed), `MAX_TABLES` bounds how many table pages are read, and a table page
is walked once: entries that point at a table already walked (hostile aliasing: every
PDE naming the same page table multiplies the mappings by 512 per level) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pooltagscan.addressing.paging import (
    FRAME32,
    FRAME64,
    GIB,
    LARGE,
    MIB2,
    MIB4,
    PAE,
    PAGE_SIZE,
    PRESENT,
    PROTOTYPE,
    TRANSITION,
    X64,
    PageTables,
)

#: Table pages read at most (4 GiB of tables: far more than any real kernel half has).
MAX_TABLES = 1 << 20
_KERNEL_X64 = 0xFFFF_0000_0000_0000

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Mapping:
    """`size` bytes of virtual memory at `virtual`, physically contiguous at `physical`
    (one 4 KiB page or one large page)."""

    virtual: int
    physical: int
    size: int


@dataclass
class WalkStats:
    tables: int = 0
    pages: int = 0  # 4 KiB pages mapped, large pages counted by their 4 KiB pages
    truncated: bool = False


def kernel_mappings(
    tables: PageTables, read: Reader, limit: int, skip_index: int | None, stats: WalkStats
) -> Iterator[Mapping]:
    """Every present kernel-half mapping in ascending virtual order. `limit` is the
    dump's highest physical address (a transition PTE's page must lie below it)."""
    walker = _Walker(tables, read, limit, stats)
    if tables.mode == X64:
        assert tables.root is not None
        top = tables.root & FRAME64
        for index, entry in walker.entries(top, 0x100, 0x200, wide=True):
            if index == skip_index or entry & FRAME64 == top:
                continue
            va = _KERNEL_X64 | index << 39
            yield from walker.level(entry & FRAME64, va, (30, 21, 12), wide=True)
    elif tables.mode == PAE:
        directories = tables.pae_directories or ()
        own = {d for d in directories if d is not None}
        for slot in (2, 3):
            directory = directories[slot] if slot < len(directories) else None
            if directory is None:
                continue
            yield from walker.level(directory, slot << 30, (21, 12), wide=True, skip=own)
    else:
        assert tables.root is not None
        top = tables.root & FRAME32
        yield from walker.level(top, 0, (22, 12), wide=False, skip={top}, first=0x200)


class _Walker:
    def __init__(self, tables: PageTables, read: Reader, limit: int, stats: WalkStats):
        self.mode = tables.mode
        self.read, self.limit, self.stats = read, limit, stats
        self.walked: set[int] = set()

    def entries(
        self, table: int, first: int, stop: int, wide: bool, last: bool = False
    ) -> Iterator[tuple[int, int]]:
        """(index, entry) of the present entries of one table page (transition PTEs
        too when `last`)."""
        if table in self.walked:
            return
        if self.stats.tables >= MAX_TABLES:
            self.stats.truncated = True
            return
        self.walked.add(table)
        self.stats.tables += 1
        data = self.read(table, PAGE_SIZE)
        if len(data) < PAGE_SIZE:
            return
        values = np.frombuffer(data, dtype="<u8" if wide else "<u4").astype(np.uint64)
        keep = (values & PRESENT) != 0
        if last:
            frame = values & (FRAME64 if wide else FRAME32)
            keep |= (
                ((values & TRANSITION) != 0)
                & ((values & PROTOTYPE) == 0)
                & (frame != 0)
                & (frame < self.limit)
            )
        keep[:first] = False
        keep[stop:] = False
        for index in np.flatnonzero(keep).tolist():
            yield index, int(values[index])

    def level(
        self,
        table: int,
        va: int,
        shifts: tuple[int, ...],
        wide: bool,
        skip: set[int] | frozenset[int] = frozenset(),
        first: int = 0,
    ) -> Iterator[Mapping]:
        shift, rest = shifts[0], shifts[1:]
        frame_mask = FRAME64 if wide else FRAME32
        count = PAGE_SIZE // (8 if wide else 4)
        for index, entry in self.entries(table, first, count, wide, last=not rest):
            at = va | index << shift
            if not rest:
                self.stats.pages += 1
                yield Mapping(at, entry & frame_mask, PAGE_SIZE)
                continue
            if entry & LARGE:
                size = {30: GIB, 21: MIB2, 22: MIB4}.get(shift)
                if size is None:  # PS in a PML4 entry is reserved
                    continue
                if wide:
                    frame = entry & FRAME64 & ~(size - 1)
                else:
                    frame = (entry & 0xFFC0_0000) | ((entry >> 13) & 0xFF) << 32
                self.stats.pages += size // PAGE_SIZE
                yield Mapping(at, frame, size)
                continue
            child = entry & frame_mask
            if child in skip:
                continue
            yield from self.level(child, at, rest, wide)
