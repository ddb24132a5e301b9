"""Segment-heap pool pages (Windows 10 19H1+, Windows 11): strict headers plus stride evidence.

Segment-heap headers have PreviousSize and PoolIndex 0, so there is no chain to walk and
a physical page may start in the middle of a chunk. Every 16-byte slot is tested with
one masked compare over the whole window; the few survivors are linked:
- LFH: the next block of the same size starts BlockSize*16 bytes later;
- VS: the next chunk's POOL_HEADER starts 16 + BlockSize*16 bytes later (after the
  encoded VS chunk header).
Links are only looked for inside one physical page, because the next virtual page is
usually somewhere else in physical memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pooltagscan.layouts import Layout
from pooltagscan.scanner.tagbytes import printable


@dataclass
class SegmentHeaders:
    """Strict header candidates of a window and their link evidence."""

    slot: np.ndarray  # header-sized slot index within the window
    w0: np.ndarray
    tag: np.ndarray
    lfh: np.ndarray  # linked to an equal-size neighbour at the LFH stride
    vs_next: np.ndarray  # a header sits where this VS chunk says the next one starts
    vs_prev: np.ndarray  # this header sits where a preceding VS chunk says it starts

    @property
    def linked(self) -> np.ndarray:
        return self.lfh | self.vs_next | self.vs_prev

    @property
    def vs_in_use(self) -> np.ndarray:
        """VS chunks taken as allocated: reached from the chunk before them.

        A freed VS chunk loses its POOL_HEADER to the free-list node, but when a free chunk
        absorbs its next neighbour, that neighbour's old header survives inside the free
        chunk and still points forward correctly. Such a stale header has no intact
        predecessor (the free chunk's start was overwritten), so only a backward link
        is taken as proof of use; a forward-only link leaves the state unknown.
        """
        return self.vs_prev & ~self.lfh


def find_headers(words: np.ndarray, layout: Layout) -> SegmentHeaders:
    """Candidates and links for `words` (uint32, shape (pages, 1024)); the numpy twin of
    segment_records in _tables.c.

    Every header-sized slot is tested with one masked compare of word 0: PreviousSize
    and PoolIndex zero and the PoolType bits the encoding fixes."""
    flat = words.reshape(-1)
    step = layout.words_per_unit
    w0_all = flat[0::step]
    mask, value = layout.segment_w0
    slot = np.flatnonzero((w0_all & mask) == value)
    w0 = w0_all[slot]
    block = layout.block.of(w0)
    keep = (block > 0) & (block <= layout.segment_max_block)
    slot, w0, block = slot[keep], w0[keep], block[keep]
    tag = flat[slot * step + 1]
    keep = printable(tag)
    slot, w0, block, tag = slot[keep], w0[keep], block[keep], tag[keep]

    slots_per_page = layout.units_per_page
    in_page = (slot % slots_per_page).astype(np.int64)
    paged = layout.pooltype.of(w0) & 1
    links = functools.partial(_links, slot, in_page, slots_per_page=slots_per_page)
    lfh_next, lfh_target = links(block.astype(np.int64))
    same = lfh_next.copy()
    same[lfh_next] = (block[lfh_target[lfh_next]] == block[lfh_next]) & (
        paged[lfh_target[lfh_next]] == paged[lfh_next]
    )
    # A VS chunk header precedes every POOL_HEADER: the next one is that much further.
    vs_next, vs_target = links(block.astype(np.int64) + layout.vs_header_units)

    lfh = same.copy()
    lfh[lfh_target[same]] = True
    vs_prev = np.zeros_like(vs_next)
    vs_prev[vs_target[vs_next]] = True
    return SegmentHeaders(slot=slot, w0=w0, tag=tag, lfh=lfh, vs_next=vs_next, vs_prev=vs_prev)


def _links(
    slot: np.ndarray, in_page: np.ndarray, step: np.ndarray, slots_per_page: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each candidate, whether a candidate sits `step` slots later in the same page."""
    target_slot = slot + step
    inside = in_page + step < slots_per_page
    where = np.searchsorted(slot, target_slot)
    where = np.minimum(where, max(slot.size - 1, 0))
    found = inside & (slot.size > 0)
    if slot.size:
        found &= slot[where] == target_slot
    return found, where
