"""Big-pool allocations from the kernel's big-page table, found by structure alone.

Allocations of a page and more carry no POOL_HEADER; the kernel records each in
PoolBigPageTable, a virtually contiguous power-of-two array of {Va, Key, PoolType,
NumberOfBytes} entries whose physical pages are scattered. A physical page is taken
for a page of that table only when every whole entry in it, at one phase, is either
never used (only the free bit) or a plausible entry: a page-aligned kernel address
(bit 0 = freed), a tag, a size and pool type in range, and at least
MIN_ENTRIES such entries with printable tags. Kernel pointer arrays, handle and page tables and text fail
on the first entries already, which keeps the search cheap: a handful of Va slots per
page are tested before any page is looked at whole.

Entries that straddle two physical pages cannot be rebuilt (the next virtual page is
elsewhere) and are not reported.
"""

from __future__ import annotations

import numpy as np

from pooltagscan.layouts import (
    BIG_MAX_BYTES,
    BIG_POOLTYPE_BITS,
    PAGE_SIZE,
    POOL_NONPAGED,
    POOL_PAGED,
    POOL_UNKNOWN,
    STATE_ALLOCATED,
    STATE_FREE,
    BigPageFormat,
    big_pooltype,
)
from pooltagscan.records import (
    CONFIDENCE_HIGH,
    CONFIDENCE_MEDIUM,
    RECORD_DTYPE,
    SOURCE_BIGPOOL,
    concat,
    take,
)
from pooltagscan.scanner.tableprobe import PageProbe, probe, va_ok
from pooltagscan.scanner.tables import PageFields, entries_in_page, pick_readings, printable_tag
from pooltagscan.scanner.tagbytes import split_protected

MIN_ENTRIES = 2  # used or freed entries a page needs to count as a table page
HIGH_ENTRIES = 8  # ... and to make its records high confidence
MAX_PAGES = 1 << 20  # NumberOfPages on XP/2003: 4 GiB


def _plausible_pooltype(pt: np.ndarray) -> np.ndarray:
    return (pt & ~np.uint64(BIG_POOLTYPE_BITS)) == 0


class _Group:
    """Whole entries of a set of pages at one (format, phase)."""

    def __init__(self, fields: PageFields, pages: np.ndarray, fmt: BigPageFormat, phase: int):
        self.pages, self.fmt, self.phase = pages, fmt, phase
        n = entries_in_page(phase, fmt.entry_size)
        ptr = fmt.ptr_size
        self.va = fields.gather(pages, phase, fmt.entry_size, n, 0, ptr)
        self.key = fields.gather(pages, phase, fmt.entry_size, n, fmt.key_at, 4)
        size_width = fmt.size_width or ptr
        self.size = fields.gather(pages, phase, fmt.entry_size, n, fmt.size_at, size_width)
        self.ptfield = (
            fields.gather(pages, phase, fmt.entry_size, n, fmt.pooltype_at, 4)
            if fmt.pooltype_at is not None
            else np.zeros_like(self.va)
        )
        if fmt.size_in_pages:
            size_ok = (self.size > 0) & (self.size <= MAX_PAGES)
        else:
            size_ok = (self.size > 0) & (self.size < BIG_MAX_BYTES)
        self.never = (self.va == 1) & (self.key == 0) & (self.size == 0) & (self.ptfield == 0)
        self.real = va_ok(self.va, fmt) & (self.va != 1) & (self.key != 0) & size_ok
        # Which reading of the dword after Key each page takes.
        if fmt.pooltype_at is None:
            self.bitfield = np.zeros(pages.size, bool)
            pt_ok = np.ones_like(self.real)
        else:
            plain_ok = self._all_real(_plausible_pooltype(big_pooltype(self.ptfield, False)))
            bits_ok = self._all_real(_plausible_pooltype(big_pooltype(self.ptfield, True)))
            if fmt.bitfield is None:  # a plain value wherever one reads; else Windows 10's
                self.bitfield = ~plain_ok & bits_ok
            else:
                self.bitfield = np.full(pages.size, fmt.bitfield)
            pt_ok = np.where(self.bitfield, bits_ok, plain_ok)[:, None]
        self.real &= pt_ok
        self.valid = np.all(self.never | self.real, axis=1)
        # A tag with odd bytes is reported, but only printable tags count as evidence.
        self.evidence = (self.real & printable_tag(self.key, allow_protected=True)).sum(axis=1)

    def _all_real(self, ok: np.ndarray) -> np.ndarray:
        """Per page: `ok` holds on every entry that looks real."""
        return np.all(ok | ~self.real, axis=1)


def find_big_pages(
    words: np.ndarray, formats: tuple[BigPageFormat, ...], pages: PageProbe | None = None
) -> tuple[list[_Group], list[np.ndarray]]:
    """Groups of candidate pages per (format, phase), and which of their pages won;
    `pages` is the window's probe when the caller already made it."""
    fields = PageFields(words)
    if pages is None:
        pages = probe(words, formats, wide=False)
    groups: list[_Group] = []
    for k, (fmt, phase) in enumerate(pages.combos):
        found = pages.big_pages(k)
        if found.size:
            groups.append(_Group(fields, found, fmt, phase))
    if not groups:
        return [], []
    return groups, pick_readings(groups, MIN_ENTRIES)


def big_page_records(
    words: np.ndarray,
    formats: tuple[BigPageFormat, ...],
    family_code: int,
    pages: PageProbe | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(records at buffer offsets of their entries, those offsets) for one window.

    `offset` is the allocation's virtual address; the caller turns the entry offsets
    into addresses of the scanned space (`entry`)."""
    groups, won = find_big_pages(words, formats, pages)
    parts, offsets = [], []
    for g, keep in zip(groups, won):
        if not keep.any():
            continue
        real = g.real & keep[:, None]
        row, col = np.nonzero(real)
        va = g.va[row, col]
        key = g.key[row, col].astype(np.uint32)
        size = g.size[row, col]
        if g.fmt.size_in_pages:
            size = size * PAGE_SIZE
        out = np.zeros(row.size, RECORD_DTYPE)
        out["offset"] = va & ~np.uint64(1)
        out["tag"], out["protected"] = split_protected(key)
        out["size"] = np.minimum(size, np.uint64(0xFFFFFFFF))
        if g.fmt.pooltype_at is None:
            out["pool"] = POOL_UNKNOWN
        else:
            pt = np.where(
                g.bitfield[row],
                big_pooltype(g.ptfield[row, col], True),
                big_pooltype(g.ptfield[row, col], False),
            )
            out["pooltype"] = pt & 0xFF
            out["pool"] = np.where(pt & 1, POOL_PAGED, POOL_NONPAGED)
        out["state"] = np.where(va & 1, STATE_FREE, STATE_ALLOCATED)
        high = g.evidence[row] >= HIGH_ENTRIES
        out["confidence"] = np.where(high, CONFIDENCE_HIGH, CONFIDENCE_MEDIUM)
        out["family"] = family_code
        out["source"] = SOURCE_BIGPOOL
        parts.append(out)
        offsets.append(g.pages[row] * PAGE_SIZE + g.phase + col * g.fmt.entry_size)
    if not parts:
        return np.zeros(0, RECORD_DTYPE), np.zeros(0, np.int64)
    records = concat(parts)
    at = np.concatenate(offsets)
    order = np.argsort(at, kind="stable")
    return take(records, order), at[order]
