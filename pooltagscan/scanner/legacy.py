"""Legacy small-pool pages (XP through Windows 10 1809): validate whole-page chains.

A legacy pool page is a chain of chunks from offset 0 to the page end in which every
PreviousSize repeats the previous BlockSize. A complete chain is the strongest evidence a
raw page can give, so pages are judged as a whole: all pages of a window are walked in
lock-step with numpy (one gather per chain step), never chunk by chunk in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pooltagscan.layouts import LEGACY_POOLTYPE_LIMIT, Layout
from pooltagscan.scanner.tagbytes import printable

# A broken chain still reports its linked prefix (as low confidence) from this length on.
MIN_PARTIAL_LINKS = 3


@dataclass
class ChainChunks:
    """Chunks found on chain walks, one entry per chunk, grouped by page in walk order."""

    page: np.ndarray  # page index within the window
    offset: np.ndarray  # byte offset of the header within its page
    w0: np.ndarray
    tag: np.ndarray
    complete: np.ndarray  # the chunk's page chain reached the page end exactly
    consistent: np.ndarray  # the page's chain has one pool class and printable tags


def walk_chains(words: np.ndarray, layout: Layout) -> ChainChunks:
    """Walk the header chain of every page of `words` (shape (pages, 1024), uint32)."""
    units = layout.units_per_page
    words_per_unit = layout.unit // 4
    prev, _, block, pooltype = layout.fields(words[:, 0])
    starts = np.flatnonzero((prev == 0) & (block > 0) & (pooltype < LEGACY_POOLTYPE_LIMIT))

    pages_out: list[np.ndarray] = []
    pos_out: list[np.ndarray] = []
    w0_out: list[np.ndarray] = []
    tag_out: list[np.ndarray] = []

    n = starts.size
    complete = np.zeros(n, dtype=bool)
    pos = np.zeros(n, dtype=np.int64)  # in units
    last = np.zeros(n, dtype=np.uint32)
    active = np.arange(n)
    while active.size:
        page = starts[active]
        at = pos[active]
        col = at * words_per_unit
        w0 = words[page, col]
        tag = words[page, col + 1]
        p, _, b, t = layout.fields(w0)
        ok = (p == last[active]) & (b > 0) & (t < LEGACY_POOLTYPE_LIMIT) & (at + b <= units)
        pages_out.append(active[ok])
        pos_out.append(at[ok])
        w0_out.append(w0[ok])
        tag_out.append(tag[ok])
        nxt = at + b
        done = ok & (nxt == units)
        complete[active[done]] = True
        go = ok & ~done
        pos[active[go]] = nxt[go]
        last[active[go]] = b[go]
        active = active[go]

    chain = np.concatenate(pages_out) if pages_out else np.empty(0, np.int64)
    order = np.argsort(chain, kind="stable")  # group by page, keeping walk order
    chain = chain[order]
    w0 = np.concatenate(w0_out)[order] if w0_out else np.empty(0, np.uint32)
    tag = np.concatenate(tag_out)[order] if tag_out else np.empty(0, np.uint32)
    at = np.concatenate(pos_out)[order] if pos_out else np.empty(0, np.int64)

    consistent = _page_consistency(chain, w0, tag, layout, n)
    return ChainChunks(
        page=starts[chain],
        offset=at * layout.unit,
        w0=w0,
        tag=tag,
        complete=complete[chain],
        consistent=consistent[chain],
    )


def _page_consistency(
    chain: np.ndarray, w0: np.ndarray, tag: np.ndarray, layout: Layout, n: int
) -> np.ndarray:
    """Per walked page: one pool class throughout, and mostly printable tags.

    Free chunks keep their class under the Vista encoding and read 0 under XP's, so the
    class is compared over chunks whose PoolType is non-zero, using the low bit. XP and
    Vista flip the meaning of that bit but not its sameness within a page. Real pages
    do hold the odd binary tag (a driver passing garbage), so one bad tag must not sink
    a page whose chain is otherwise perfect; a page of mostly unprintable tags is data.
    """
    _, _, _, pooltype = layout.fields(w0)
    nonzero = pooltype != 0
    low = (pooltype & 1).astype(bool)
    has_odd = np.zeros(n, dtype=bool)
    has_even = np.zeros(n, dtype=bool)
    has_odd[chain[nonzero & low]] = True
    has_even[chain[nonzero & ~low]] = True
    good = np.bincount(chain, weights=printable(tag, allow_protected=True), minlength=n)
    total = np.bincount(chain, minlength=n)
    return ~(has_odd & has_even) & (2 * good >= total)


def chain_votes(chunks: ChainChunks, layout: Layout) -> tuple[int, int]:
    """(XP votes, Vista votes) from complete chains, for choosing the PoolType encoding.

    Per page, the low two PoolType bits that occur tell the encodings apart: a page
    mixing 0 and 1 (with no 2 or 3) is an XP nonpaged page (Vista cannot mix free
    nonpaged and free paged chunks in one page), and a page holding 3 is a Vista paged
    page (XP's 3, must-succeed pool, practically never appears).
    """
    keep = chunks.complete & chunks.consistent
    if not keep.any():
        return 0, 0
    page = chunks.page[keep]
    _, _, _, pooltype = layout.fields(chunks.w0[keep])
    low2 = (pooltype & 3).astype(np.int64)
    uniq, inverse = np.unique(page, return_inverse=True)
    present = np.zeros((uniq.size, 4), dtype=bool)
    present[inverse, low2] = True
    _, has1, has2, has3 = present.T
    xp = int(np.count_nonzero(has1 & ~has2 & ~has3))
    vista = int(np.count_nonzero(has3))
    return xp, vista


def complete_pages(chunks: ChainChunks) -> int:
    """How many pages carried a complete, consistent chain."""
    keep = chunks.complete & chunks.consistent
    return int(np.unique(chunks.page[keep]).size)


def partial_mask(chunks: ChainChunks) -> np.ndarray:
    """Chunks of broken chains that still have MIN_PARTIAL_LINKS printable links."""
    broken = ~chunks.complete
    if not broken.any():
        return broken
    tag_ok = printable(chunks.tag, allow_protected=True)
    page = chunks.page
    # Count links per broken page and require all of them printable.
    uniq, inverse, counts = np.unique(page, return_inverse=True, return_counts=True)
    all_ok = np.ones(uniq.size, dtype=bool)
    np.logical_and.at(all_ok, inverse, tag_ok)
    return broken & (counts[inverse] >= MIN_PARTIAL_LINKS) & all_ok[inverse]
