"""scanner/segment.py on hand-made pages: strict headers, LFH and VS links inside one
physical page, and a family added as one new Layout without touching any module."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from handmade import blank, put, tag_value, words_of, x64_header, x86_header

from pooltagscan.layouts import SEGMENT_HEAP, Encoding, Family, Field, Layout
from pooltagscan.scanner import segment

VS_HEADER = b"\xff" * 16  # an encoded _HEAP_VS_CHUNK_HEADER: never a strict header


def _hdr(block: int, pooltype: int = 2, tag: bytes = b"MmCi") -> bytes:
    return x64_header(0, 0, block, pooltype, tag)


def _find(buf: bytearray, layout: Layout = SEGMENT_HEAP) -> segment.SegmentHeaders:
    return segment.find_headers(words_of(buf), layout)


def _table(found: segment.SegmentHeaders, unit: int = 16) -> dict[str, list]:
    return {
        "offset": (found.slot * unit).tolist(),
        "lfh": found.lfh.tolist(),
        "vs_next": found.vs_next.tolist(),
        "vs_prev": found.vs_prev.tolist(),
        "linked": found.linked.tolist(),
        "vs_in_use": found.vs_in_use.tolist(),
    }


def test_lfh_run_is_linked() -> None:
    """Five equal 64-byte blocks back to back: each is linked at the LFH stride."""
    buf = blank()
    offsets = [0x40, 0x80, 0xC0, 0x100, 0x140]
    for at in offsets:
        put(buf, at, _hdr(4))
    found = _find(buf)
    assert _table(found) == {
        "offset": offsets,
        "lfh": [True] * 5,
        "vs_next": [False] * 5,
        "vs_prev": [False] * 5,
        "linked": [True] * 5,
        "vs_in_use": [False] * 5,
    }
    assert found.tag.tolist() == [tag_value(b"MmCi")] * 5
    assert found.w0.tolist() == [0x02040000] * 5


def test_lfh_needs_same_size_and_pool() -> None:
    """A neighbour at the stride with another pool class (paged) is no LFH link."""
    buf = blank()
    for at, pooltype in ((0x40, 2), (0x80, 2), (0xC0, 3), (0x100, 2), (0x140, 2)):
        put(buf, at, _hdr(4, pooltype))
    assert _find(buf).lfh.tolist() == [True, True, False, True, True]
    buf = blank()
    put(buf, 0x40, _hdr(4))
    put(buf, 0x80, _hdr(2))  # where a 4-unit block says, but 2 units long
    assert _table(_find(buf))["linked"] == [False, False]


def test_vs_chain() -> None:
    """VS header (16 bytes) + POOL_HEADER; the next POOL_HEADER is 16 + BlockSize*16
    later. The first chunk has no predecessor: linked forward, state left unknown."""
    buf = blank()
    at = 0x100
    for block in (5, 3, 2):
        put(buf, at, VS_HEADER)
        put(buf, at + 16, _hdr(block, 3, b"Vsch"))
        at += 16 + block * 16
    assert _table(_find(buf)) == {
        "offset": [0x110, 0x170, 0x1B0],
        "lfh": [False, False, False],
        "vs_next": [True, True, False],
        "vs_prev": [False, True, True],
        "linked": [True, True, True],
        "vs_in_use": [False, True, True],
    }


def test_lfh_link_wins_over_vs_for_state() -> None:
    """A header reached at the VS stride that is also an LFH block stays unknown."""
    buf = blank()
    for at in (0x40, 0x70, 0x80, 0xC0):
        put(buf, at, _hdr(4))
    assert _table(_find(buf)) == {
        "offset": [0x40, 0x70, 0x80, 0xC0],
        "lfh": [True, False, True, True],
        "vs_next": [False, True, False, False],
        "vs_prev": [False, False, False, True],
        "linked": [True, True, True, True],
        "vs_in_use": [False, False, False, False],
    }


def test_isolated_header_is_not_linked() -> None:
    buf = blank()
    put(buf, 0x800, _hdr(7))
    found = _find(buf)
    assert found.slot.tolist() == [0x80]
    assert found.linked.tolist() == [False]


def test_links_stay_inside_one_page() -> None:
    """LFH (0xFC0 + 0x40) and VS (0xFB0 + 0x50) targets at 0x1000 are the next physical
    page: an identical header there is not linked. A run ending exactly at the page
    end is linked all the same."""
    buf = blank(2)
    put(buf, 0xFC0, _hdr(4))
    put(buf, 0x1000, _hdr(4))
    found = _find(buf)
    assert _table(found)["offset"] == [0xFC0, 0x1000]
    assert not found.linked.any()

    buf = blank(2)
    put(buf, 0xFB0, VS_HEADER)
    put(buf, 0xFB0 + 16, _hdr(4, 3))  # VS target = 0xFC0 + 0x50 = 0x1010
    put(buf, 0x1000, VS_HEADER)
    put(buf, 0x1010, _hdr(4, 3))
    assert not _find(buf).linked.any()

    buf = blank(2)
    for at in (0xF00, 0xF40, 0xF80, 0xFC0, 0x1000):
        put(buf, at, _hdr(4))
    assert _find(buf).lfh.tolist() == [True, True, True, True, False]


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        (_hdr(0xFE), True),  # 0xFE0 bytes: the largest block with a header
        (_hdr(0xFF), False),  # 0xFF0: would be big pool
        (_hdr(0), False),
        (_hdr(4, 0x12), False),  # PoolType bit 4
        (x64_header(1, 0, 4, 2, b"MmCi"), False),  # PreviousSize != 0
        (x64_header(0, 2, 4, 2, b"MmCi"), False),  # PoolIndex != 0
        (_hdr(4, 2, b"Mm\x00i"), False),  # unprintable tag
        (_hdr(4, 2, b"Pro\xe3"), False),  # no protected bit on segment-heap systems
    ],
)
def test_strict_header_rules(header: bytes, kept: bool) -> None:
    buf = blank()
    put(buf, 0x230, header)
    assert _find(buf).slot.tolist() == ([0x23] if kept else [])
    assert SEGMENT_HEAP.segment_max_block == 0xFE


def test_slots_are_window_wide() -> None:
    """slot is counted from the window start: page 2, offset 0x40 is slot 2*256 + 4."""
    buf = blank(3)
    put(buf, 2 * 4096 + 0x40, _hdr(4))
    put(buf, 2 * 4096 + 0x80, _hdr(4))
    found = _find(buf)
    assert found.slot.tolist() == [516, 520]
    assert found.lfh.tolist() == [True, True]


def test_empty_window() -> None:
    found = segment.find_headers(np.zeros((2, 1024), np.uint32), SEGMENT_HEAP)
    assert found.slot.size == 0 and found.linked.size == 0


# ---------------------------------------------------------------- one Layout per family

# A 32-bit segment heap with 8-byte units and the x86 bit fields, as the brief of the
# strategy puts it: a family is one Layout, the scanner derives everything from it.
SEGMENT_X86 = Layout(
    Family.SEGMENT_HEAP, 8, 8, Field(0, 0x1FF), Field(9, 0x7F), Field(16, 0x1FF),
    Field(25, 0x7F), scanner="segment", evidence="x86 segment-heap pages",
    architecture="x86", encoding=Encoding.SEGMENT_HEAP,
)  # fmt: skip

# The same units with one byte per field: proves the scanner's stride handling with
# 8-byte units independently of the PoolType field width.
SEGMENT_8 = Layout(
    Family.SEGMENT_HEAP, 8, 8, Field(0, 0xFF), Field(8, 0xFF), Field(16, 0xFF),
    Field(24, 0xFF), scanner="segment", evidence="8-byte segment-heap pages",
    architecture="x86", encoding=Encoding.SEGMENT_HEAP,
)  # fmt: skip

LFH_8 = [0x18, 0x48, 0x78, 0xA8]  # 6-unit (48-byte) blocks: 8-byte aligned, not 16


def _lfh_page_8(header) -> bytearray:
    buf = blank()
    for at in LFH_8:
        put(buf, at, header(0, 0, 6, 2, b"Lfh8")[:8])
    put(buf, 0x400, header(0, 0, 6, 2, b"Solo")[:8])
    return buf


def test_new_layout_with_8_byte_units_links_lfh() -> None:
    """find_headers follows the layout's unit: 48-byte strides at 8-byte slots link,
    while the stock 16-byte layout cannot even see headers at 0x18 or 0x48."""
    buf = _lfh_page_8(x64_header)
    found = _find(buf, SEGMENT_8)
    assert (SEGMENT_8.units_per_page, SEGMENT_8.words_per_unit) == (512, 2)
    assert _table(found, unit=8)["offset"] == [*LFH_8, 0x400]
    assert found.lfh.tolist() == [True, True, True, True, False]
    assert found.tag.tolist() == [tag_value(b"Lfh8")] * 4 + [tag_value(b"Solo")]
    assert _find(buf).slot.tolist() == [0x40]  # only 0x400 is 16-byte aligned


def test_new_x86_segment_layout_links_lfh() -> None:
    """The brief's 32-bit segment heap (x86 fields, 8-byte units) as one new Layout."""
    buf = _lfh_page_8(lambda p, i, b, t, tag: x86_header(p, i, b, t, tag))
    found = _find(buf, SEGMENT_X86)
    assert _table(found, unit=8)["offset"] == [*LFH_8, 0x400]
    assert found.lfh.tolist() == [True, True, True, True, False]
    assert found.linked.tolist() == [True, True, True, True, False]
    assert struct.unpack("<I", x86_header(0, 0, 6, 2, b"Lfh8")[:4])[0] == 0x04060000
