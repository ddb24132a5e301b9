"""Reading fixed-stride kernel tables (big-page table, tracker table) page by page.

Both tables are virtually contiguous arrays whose physical pages are scattered, so each
physical page is judged alone. An entry size that does not divide 4096 makes a page
start part way into an entry: the first whole entry of a page sits at one of a few
phases. These helpers gather one field of the whole entries of many pages at once.
"""

from __future__ import annotations

import numpy as np

from pooltagscan.layouts import PAGE_SIZE
from pooltagscan.scanner.tagbytes import printable
from pooltagscan.uniques import sorted_distinct

_U64_PER_PAGE = PAGE_SIZE // 8


class PageFields:
    """Gathers fields of the entries of chosen pages of a window (uint32, (pages, 1024))."""

    def __init__(self, words: np.ndarray):
        self.u32 = words.reshape(-1)
        self.u64 = self.u32.view("<u8") if self.u32.size % 2 == 0 else None

    def gather(
        self,
        pages: np.ndarray,
        phase: int,
        entry_size: int,
        count: int,
        offset: int,
        width: int,
    ) -> np.ndarray:
        """Field at `offset` (4 or 8 bytes) of entries 0..count-1 at `phase` of each page:
        shape (len(pages), count), uint64."""
        at = (
            pages.astype(np.int64)[:, None] * PAGE_SIZE
            + phase
            + offset
            + np.arange(count, dtype=np.int64)[None, :] * entry_size
        )
        if width == 8:
            assert self.u64 is not None and (phase + offset) % 8 == 0 and entry_size % 8 == 0
            return self.u64[at // 8]
        return self.u32[at // 4].astype(np.uint64)


def entries_in_page(phase: int, entry_size: int) -> int:
    """Whole entries from `phase` to the end of a page."""
    return (PAGE_SIZE - phase) // entry_size


def tail_bytes(phase: int, entry_size: int) -> int:
    """Bytes after the last whole entry: the head of an entry the next page completes."""
    return (PAGE_SIZE - phase) % entry_size


def printable_tag(values: np.ndarray, allow_protected: bool) -> np.ndarray:
    """All four bytes 0x20-0x7E (the last may carry the pre-Win8 protected bit), for the
    uint64 columns the gathers give."""
    return printable(values.astype(np.uint32), allow_protected=allow_protected)


def pick_readings(groups: list, minimum: int) -> list[np.ndarray]:
    """Per group of pages read one way (a format at a phase: `.pages`, `.valid` all
    entries plausible, `.evidence` how many prove it), which of its pages are taken: a
    page read several ways keeps the valid reading with the most evidence, and needs at
    least `minimum`."""
    pages = sorted_distinct(np.concatenate([g.pages for g in groups]))
    valid = np.zeros((len(groups), pages.size), bool)
    score = np.full((len(groups), pages.size), -1, np.int64)
    where = [np.searchsorted(pages, g.pages) for g in groups]
    for i, (g, at) in enumerate(zip(groups, where)):
        valid[i, at] = g.valid
        score[i, at] = np.where(g.valid, g.evidence, -1)
    pick = np.argmax(score, axis=0)
    best = score[pick, np.arange(pages.size)]
    return [(pick[at] == i) & (best[at] >= minimum) for i, at in enumerate(where)]
