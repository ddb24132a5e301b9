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
    """Chunks found on chain walks, one entry per chunk, in walk order (not address order)."""

    page: np.ndarray  # page index within the window
    offset: np.ndarray  # byte offset of the header within its page
    w0: np.ndarray
    tag: np.ndarray
    complete: np.ndarray  # the chunk's page chain reached the page end exactly
    consistent: np.ndarray  # the page's chain has one pool class and printable tags
    chain: np.ndarray  # which walked page (index into the walk's start pages)
    walked: int  # how many pages were walked


def walk_chains(words: np.ndarray, layout: Layout) -> ChainChunks:
    """Walk the header chain of every page of `words` (shape (pages, 1024), uint32).

    The twin of the C scanner's walk (`legacy_page` in _tables.c), for where the C module
    is not built: the scan and the detection call it only then (the tests hold the two
    to the same records and evidence)."""
    return _numpy_walk(words, layout)


def _numpy_walk(words: np.ndarray, layout: Layout) -> ChainChunks:
    """The state of the walks still under way is kept compact (one entry per active page)
    and every step is one gather from the flat window, so a step costs a few numpy calls
    whatever the number of pages."""
    units = layout.units_per_page
    words_per_unit = layout.unit // 4
    words_per_page = words.shape[1]
    flat = words.reshape(-1)
    prev, _, block, pooltype = layout.fields(words[:, 0])
    starts = np.flatnonzero((prev == 0) & (block > 0) & (pooltype < LEGACY_POOLTYPE_LIMIT))
    n = starts.size

    out_id: list[np.ndarray] = []
    out_at: list[np.ndarray] = []
    out_w0: list[np.ndarray] = []
    complete = np.zeros(n, dtype=bool)
    ids = np.arange(n)
    base = starts * words_per_page
    at = np.zeros(n, dtype=np.int64)  # in units
    last = np.zeros(n, dtype=np.uint32)
    while ids.size:
        w0 = flat[base + at * words_per_unit]
        p, _, b, t = layout.fields(w0)
        ok = (p == last) & (b > 0) & (t < LEGACY_POOLTYPE_LIMIT) & (at + b <= units)
        if not ok.all():
            ids, base, at, w0, b = ids[ok], base[ok], at[ok], w0[ok], b[ok]
        out_id.append(ids)
        out_at.append(at)
        out_w0.append(w0)
        at = at + b
        done = at == units
        if done.any():
            complete[ids[done]] = True
            going = ~done
            ids, base, at, b = ids[going], base[going], at[going], b[going]
        last = b

    chain = np.concatenate(out_id) if out_id else np.empty(0, np.int64)
    at = np.concatenate(out_at) if out_at else np.empty(0, np.int64)
    w0 = np.concatenate(out_w0) if out_w0 else np.empty(0, np.uint32)
    tag = flat[starts[chain] * words_per_page + at * words_per_unit + 1]
    consistent = _page_consistency(chain, w0, tag, layout, n)
    return ChainChunks(
        page=starts[chain],
        offset=at * layout.unit,
        w0=w0,
        tag=tag,
        complete=complete[chain],
        consistent=consistent[chain],
        chain=chain,
        walked=n,
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
    _, _, _, pooltype = layout.fields(chunks.w0[keep])
    present = np.zeros((chunks.walked, 4), dtype=bool)
    present[chunks.chain[keep], (pooltype & 3).astype(np.int64)] = True
    _, has1, has2, has3 = present.T
    xp = int(np.count_nonzero(has1 & ~has2 & ~has3))
    vista = int(np.count_nonzero(has3))
    return xp, vista


def complete_pages(chunks: ChainChunks) -> int:
    """How many pages carried a complete, consistent chain."""
    keep = chunks.complete & chunks.consistent
    return int(np.count_nonzero(np.bincount(chunks.chain[keep], minlength=chunks.walked)))


def partial_mask(chunks: ChainChunks) -> np.ndarray:
    """Chunks of broken chains that still have MIN_PARTIAL_LINKS links, all printable."""
    broken = ~chunks.complete
    if not broken.any():
        return broken
    bad = ~printable(chunks.tag, allow_protected=True)
    links = np.bincount(chunks.chain, minlength=chunks.walked)
    bad_links = np.bincount(chunks.chain, weights=bad, minlength=chunks.walked)
    good_page = (links >= MIN_PARTIAL_LINKS) & (bad_links == 0)
    return broken & good_page[chunks.chain]
