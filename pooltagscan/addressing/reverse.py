"""Physical page -> the big-pool allocations whose virtual range maps to it.

A physical dump is scanned (and YARA runs) by physical address, but a big-pool
allocation is known only by its kernel virtual address. To say which allocation holds
a physical byte, the allocations' ranges are walked through the page tables once, and
every physical page they map is recorded with the virtual address it has there: a hit
in that page is then placed by a binary search, whatever window it is found in.

Bounds (hostile tables can claim 4 GiB allocations by the thousand, and page tables can
map one physical page under any number of virtual addresses): at most `max_pages`
mapped pages are recorded in all and at most `max_steps` translations made (one per
4 KiB page walked, mapped or not; an absent upper-level table skips its whole range in
one); the walk stops at either and says so (`complete`), and a lookup looks at no more
than `MAX_ALIASES` allocations per page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pooltagscan.addressing.paging import PAGE_SIZE, PageTables

# 2 Mi pages: 8 GiB of mapped big-pool allocations, 48 MiB of arrays at most.
MAX_MAPPED_PAGES = 1 << 21
# Translations (a few microseconds each): about ten seconds at worst.
MAX_STEPS = 1 << 22
# Allocations looked at per physical page in a lookup: real memory maps a page once;
# only stale (freed) entries and hostile tables alias it.
MAX_ALIASES = 16


@dataclass
class PageOwners:
    """The reverse map: for each recorded physical page (sorted), the allocation (an
    index into the caller's arrays, in the caller's order of preference) and the virtual
    address of the page's first byte in that allocation's mapping."""

    pages: np.ndarray  # uint64 physical page numbers, sorted (ties: preferred first)
    page_va: np.ndarray  # uint64
    owner: np.ndarray  # int64 index into starts/sizes
    starts: np.ndarray  # uint64 allocation virtual addresses
    sizes: np.ndarray  # uint64 allocation sizes
    complete: bool = True  # False: the walk stopped at the page budget

    def __len__(self) -> int:
        return int(self.pages.size)

    def place(self, physical: int) -> tuple[int, int] | None:
        """(allocation index, virtual address) of the preferred allocation whose range
        holds the byte at `physical`, or None."""
        page = np.uint64(physical // PAGE_SIZE)
        lo = int(np.searchsorted(self.pages, page, side="left"))
        hi = min(int(np.searchsorted(self.pages, page, side="right")), lo + MAX_ALIASES)
        for j in range(lo, hi):
            virtual = int(self.page_va[j]) + physical % PAGE_SIZE
            i = int(self.owner[j])
            start = int(self.starts[i])
            if start <= virtual < start + int(self.sizes[i]):
                return i, virtual
        return None


def page_owners(
    tables: PageTables,
    starts: np.ndarray,
    sizes: np.ndarray,
    max_pages: int = MAX_MAPPED_PAGES,
    max_steps: int = MAX_STEPS,
) -> PageOwners:
    """Walk each allocation [starts[i], starts[i] + sizes[i]) through `tables` (in the
    given order: earlier allocations win a page they share with later ones) and record
    every physical page it maps, within the budgets of the module's docstring."""
    starts = np.asarray(starts, np.uint64)
    sizes = np.asarray(sizes, np.uint64)
    pages: list[np.ndarray] = []
    vas: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    room, steps = max_pages, max_steps
    complete = True
    for i, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist())):
        if room <= 0 or steps <= 0:
            complete = False
            break
        for piece in tables.pieces(start, size):
            steps -= 1
            if steps < 0:
                complete = False
                break
            if piece.physical is None:
                continue
            head = piece.physical % PAGE_SIZE
            count = (head + piece.length + PAGE_SIZE - 1) // PAGE_SIZE
            if count > room:
                count, complete = room, False
            k = np.arange(count, dtype=np.uint64)
            pages.append(np.uint64(piece.physical // PAGE_SIZE) + k)
            vas.append(np.uint64(piece.virtual - head) + k * np.uint64(PAGE_SIZE))
            owners.append(np.full(count, i, np.int64))
            room -= count
            if room <= 0:
                break
    if pages:
        page = np.concatenate(pages)
        va = np.concatenate(vas)
        owner = np.concatenate(owners)
        order = np.lexsort((owner, page))  # by page, then the caller's preference
        page, va, owner = page[order], va[order], owner[order]
    else:
        page, va, owner = (np.empty(0, np.uint64), np.empty(0, np.uint64),
                           np.empty(0, np.int64))  # fmt: skip
    return PageOwners(page, va, owner, starts, sizes, complete)
