"""scanner/legacy.py on hand-made pages: whole-page chains, their prefixes when broken,
page consistency and the XP/Vista votes, with every offset known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from handmade import blank, cycle, legacy_chain, put, tag_value, words_of, x64_header, x86_header

from pooltagscan.layouts import X64, X86
from pooltagscan.scanner import legacy

# 9 chunks of x64 units (16 bytes) summing to the page's 256 units.
X64_BLOCKS = (0x20, 0x40, 0x10, 0x30, 0x08, 0x08, 0x18, 0x28, 0x10)
X64_OFFSETS = [0x000, 0x200, 0x600, 0x700, 0xA00, 0xA80, 0xB00, 0xC80, 0xF00]
# 6 chunks of x86 units (8 bytes) summing to 512 units; 0x100 needs the 9th size bit.
X86_BLOCKS = (0x40, 0x100, 0x20, 0x60, 0x20, 0x20)
X86_OFFSETS = [0x000, 0x200, 0xA00, 0xB00, 0xE00, 0xF00]
TAGS = (b"Proc", b"Thre", b"File", b"Irp ", b"Io  ", b"MmSt", b"Even", b"Key ", b"Toke")
VISTA_PAGED = (3, 1, 3, 3, 1, 3, 3, 3, 1)  # in use / free, all paged
XP_NONPAGED = (1, 0, 1, 1, 0, 1, 1, 1, 0)  # allocated nonpaged / free


def _x64_page(pooltypes=VISTA_PAGED, tags=TAGS, pages: int = 1, page: int = 0) -> bytearray:
    buf = blank(pages)
    offsets = legacy_chain(buf, page, X64_BLOCKS, pooltypes, tags, unit=16)
    assert offsets == X64_OFFSETS
    return buf


def _by_address(chunks: legacy.ChainChunks) -> list[tuple[int, int]]:
    return sorted(zip(chunks.page.tolist(), chunks.offset.tolist()))


def test_complete_x64_chain() -> None:
    """Every chunk of a page whose chain ends exactly at 4096 is found, complete and
    consistent, with its header word and tag."""
    chunks = legacy.walk_chains(words_of(_x64_page()), X64)
    assert chunks.walked == 1
    assert chunks.offset.tolist() == X64_OFFSETS  # one page: walk order is address order
    assert chunks.page.tolist() == [0] * 9
    assert chunks.chain.tolist() == [0] * 9
    assert chunks.complete.all() and chunks.consistent.all()
    assert chunks.tag.tolist() == [tag_value(t) for t in TAGS]
    _, _, block, pooltype = X64.fields(chunks.w0)
    assert block.tolist() == list(X64_BLOCKS)
    assert pooltype.tolist() == list(VISTA_PAGED)
    assert legacy.complete_pages(chunks) == 1
    assert not legacy.partial_mask(chunks).any()


def test_complete_x86_chain() -> None:
    """The same on x86: 8-byte units, 512 per page, 9-bit BlockSize."""
    buf = blank()
    pts = (1, 0, 1, 1, 0, 1)
    offsets = legacy_chain(buf, 0, X86_BLOCKS, pts, TAGS[:6], unit=8, header=x86_header)
    assert offsets == X86_OFFSETS
    chunks = legacy.walk_chains(words_of(buf), X86)
    assert chunks.offset.tolist() == X86_OFFSETS
    assert chunks.complete.all() and chunks.consistent.all()
    _, _, block, pooltype = X86.fields(chunks.w0)
    assert block.tolist() == list(X86_BLOCKS)
    assert pooltype.tolist() == list(pts)
    assert legacy.complete_pages(chunks) == 1
    # The x86 page is no x64 chain (and the x64 page no x86 one).
    assert legacy.complete_pages(legacy.walk_chains(words_of(buf), X64)) == 0
    assert legacy.complete_pages(legacy.walk_chains(words_of(_x64_page()), X86)) == 0


def test_only_pages_starting_with_a_header_are_walked() -> None:
    """Pages 1 (zeros) and 3 (PoolType >= 0x40 at offset 0) are not walked; pages of a
    window keep their index and the chain index counts walked pages only."""
    buf = _x64_page(pages=4, page=0)
    legacy_chain(buf, 2, X64_BLOCKS, VISTA_PAGED, TAGS, unit=16)
    put(buf, 3 * 4096, x64_header(0, 0, 0x10, 0x40, b"Proc"))
    chunks = legacy.walk_chains(words_of(buf), X64)
    assert chunks.walked == 2
    assert _by_address(chunks) == [(p, o) for p in (0, 2) for o in X64_OFFSETS]
    assert sorted(set(zip(chunks.page.tolist(), chunks.chain.tolist()))) == [(0, 0), (2, 1)]
    assert legacy.complete_pages(chunks) == 2


@pytest.mark.parametrize("broken_at", [1, 2, 3, 5, 8])
def test_broken_chain_keeps_linked_prefix(broken_at: int) -> None:
    """A bad PreviousSize at chunk `broken_at` ends the walk there: the chunks before it
    are reported (as partial) only from MIN_PARTIAL_LINKS links on, never as complete."""
    buf = _x64_page(pages=2, page=1)
    at = 4096 + X64_OFFSETS[broken_at]
    put(buf, at, x64_header(0x11, 0, X64_BLOCKS[broken_at], 3, TAGS[broken_at]))
    chunks = legacy.walk_chains(words_of(buf), X64)
    assert _by_address(chunks) == [(1, o) for o in X64_OFFSETS[:broken_at]]
    assert not chunks.complete.any()
    assert legacy.complete_pages(chunks) == 0
    partial = legacy.partial_mask(chunks)
    assert legacy.MIN_PARTIAL_LINKS == 3
    assert partial.tolist() == [broken_at >= 3] * broken_at


def test_broken_chain_with_unprintable_tag_is_dropped() -> None:
    """One unprintable tag in a broken prefix drops the whole prefix (no chain to vouch)."""
    tags = list(TAGS)
    tags[1] = b"\x01\x02\x03\x04"
    buf = _x64_page(tags=tags)
    put(buf, X64_OFFSETS[5], x64_header(0x11, 0, X64_BLOCKS[5], 3, TAGS[5]))
    chunks = legacy.walk_chains(words_of(buf), X64)
    assert chunks.offset.tolist() == X64_OFFSETS[:5]
    assert not legacy.partial_mask(chunks).any()


def test_block_past_page_end_breaks_chain() -> None:
    """A last BlockSize running past 4096 is no link: 8 linked chunks, partial."""
    buf = _x64_page()
    put(buf, X64_OFFSETS[8], x64_header(X64_BLOCKS[7], 0, 0x11, 3, TAGS[8]))
    chunks = legacy.walk_chains(words_of(buf), X64)
    assert chunks.offset.tolist() == X64_OFFSETS[:8]
    assert not chunks.complete.any()
    assert legacy.partial_mask(chunks).tolist() == [True] * 8


def test_complete_broken_pages_mixed_in_one_window() -> None:
    """Complete and partial pages of one window are judged each on its own."""
    buf = _x64_page(pages=2, page=0)
    legacy_chain(buf, 1, X64_BLOCKS, VISTA_PAGED, TAGS, unit=16)
    put(buf, 4096 + X64_OFFSETS[4], x64_header(0x22, 0, X64_BLOCKS[4], 3, TAGS[4]))
    chunks = legacy.walk_chains(words_of(buf), X64)
    got = sorted(
        zip(
            chunks.page.tolist(),
            chunks.offset.tolist(),
            chunks.complete.tolist(),
            legacy.partial_mask(chunks).tolist(),
        )
    )
    want = [(0, o, True, False) for o in X64_OFFSETS]
    want += [(1, o, False, True) for o in X64_OFFSETS[:4]]
    assert got == want
    assert legacy.complete_pages(chunks) == 1


def test_mixed_pool_classes_are_inconsistent() -> None:
    """Paged (3) and nonpaged (2) chunks in one chain: complete but not consistent."""
    chunks = legacy.walk_chains(words_of(_x64_page(pooltypes=cycle((3, 2), 9))), X64)
    assert chunks.complete.all()
    assert not chunks.consistent.any()
    assert legacy.complete_pages(chunks) == 0


def test_free_chunks_do_not_break_consistency_under_xp() -> None:
    """XP free chunks read PoolType 0: they are left out of the class comparison."""
    chunks = legacy.walk_chains(words_of(_x64_page(pooltypes=XP_NONPAGED)), X64)
    assert chunks.complete.all() and chunks.consistent.all()


@pytest.mark.parametrize(("bad", "consistent"), [(0, True), (4, True), (5, False), (9, False)])
def test_mostly_unprintable_tags_are_inconsistent(bad: int, consistent: bool) -> None:
    """A page stays consistent while at least half of its 9 tags are printable."""
    tags = [b"\x00\x01\x02\x03"] * bad + list(TAGS[bad:])
    chunks = legacy.walk_chains(words_of(_x64_page(tags=tags)), X64)
    assert chunks.complete.all()
    assert chunks.consistent.tolist() == [consistent] * 9


def test_protected_bit_tags_are_printable() -> None:
    """Pre-Win8 object tags carry the high bit of their last byte ('Pro\\xe3')."""
    tags = [b"Pro\xe3", b"Thr\xe5", b"Fil\xe5", b"Mut\xe1", b"Dri\xf6"] + list(TAGS[5:])
    chunks = legacy.walk_chains(words_of(_x64_page(tags=tags)), X64)
    assert chunks.complete.all() and chunks.consistent.all()


@pytest.mark.parametrize(
    ("pooltypes", "votes"),
    [
        (XP_NONPAGED, (1, 0)),  # 0 and 1 mixed: XP nonpaged page
        (VISTA_PAGED, (0, 1)),  # 3 present: Vista paged page
        ((2, 0, 2, 2, 0, 2, 2, 2, 0), (0, 0)),  # Vista nonpaged or XP paged: no say
        ((3, 1, 3, 3, 1, 3, 3, 3, 0x23), (0, 1)),  # session bit ignored, still 3
        ((0x0B, 1, 3, 3, 1, 3, 3, 3, 1), (0, 1)),  # quota bit (8) ignored
    ],
)
def test_chain_votes_per_page(pooltypes: tuple[int, ...], votes: tuple[int, int]) -> None:
    chunks = legacy.walk_chains(words_of(_x64_page(pooltypes=pooltypes)), X64)
    assert legacy.chain_votes(chunks, X64) == votes


def test_chain_votes_count_only_complete_consistent_pages() -> None:
    """Two XP pages, one Vista page, one broken XP page and one inconsistent page."""
    buf = blank(5)
    for page, pts in enumerate((XP_NONPAGED, XP_NONPAGED, VISTA_PAGED, XP_NONPAGED)):
        legacy_chain(buf, page, X64_BLOCKS, pts, TAGS, unit=16)
    put(buf, 3 * 4096 + X64_OFFSETS[6], x64_header(0x33, 0, X64_BLOCKS[6], 1, TAGS[6]))
    legacy_chain(buf, 4, X64_BLOCKS, cycle((3, 2, 1), 9), TAGS, unit=16)
    chunks = legacy.walk_chains(words_of(buf), X64)
    assert chunks.walked == 5
    assert legacy.complete_pages(chunks) == 3
    assert legacy.chain_votes(chunks, X64) == (2, 1)


def test_chain_votes_x86() -> None:
    """x86 votes read the 7-bit PoolType at bit 25."""
    buf = blank(2)
    legacy_chain(buf, 0, X86_BLOCKS, (1, 0, 1, 1, 0, 1), TAGS[:6], unit=8, header=x86_header)
    legacy_chain(buf, 1, X86_BLOCKS, (3, 1, 3, 3, 1, 3), TAGS[:6], unit=8, header=x86_header)
    chunks = legacy.walk_chains(words_of(buf), X86)
    assert legacy.chain_votes(chunks, X86) == (1, 1)


def test_no_pages_no_chunks() -> None:
    chunks = legacy.walk_chains(np.zeros((3, 1024), np.uint32), X64)
    assert chunks.walked == 0 and chunks.offset.size == 0
    assert legacy.chain_votes(chunks, X64) == (0, 0)
    assert legacy.complete_pages(chunks) == 0
    assert legacy.partial_mask(chunks).size == 0
