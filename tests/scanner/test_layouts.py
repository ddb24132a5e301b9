"""layouts.py: the only place that knows bit positions, so every field, mask, code table
and table-format choice is pinned here on hand-packed words."""

from __future__ import annotations

import numpy as np
import pytest
from handmade import x64_header, x86_header

from pooltagscan.layouts import (
    BIG_2003_X64,
    BIG_2003_X86,
    BIG_20348_X64,
    BIG_VISTA_X86,
    BIG_WIN10_X64,
    BIG_X64,
    BIG_XP_X86,
    LAYOUTS,
    POOL_NONPAGED,
    POOL_PAGED,
    POOL_UNKNOWN,
    SEGMENT_HEAP,
    STATE_ALLOCATED,
    STATE_FREE,
    STATE_UNKNOWN,
    X64,
    X86,
    Encoding,
    Family,
    Field,
    Layout,
    decode_pooltype,
)


def _w0(header: bytes) -> np.ndarray:
    return np.frombuffer(header[:4], dtype="<u4").copy()


def _fields(layout: Layout, header: bytes) -> tuple[int, int, int, int]:
    return tuple(int(f[0]) for f in layout.fields(_w0(header)))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("prev", "index", "block", "pooltype"),
    [(0, 0, 1, 0), (0x1FF, 0x7F, 0x1FF, 0x7F), (0x100, 0x01, 0x100, 0x02), (0x20, 0x55, 0x3, 0x5)],
)
def test_x86_fields_are_9_7_9_7_bits(prev: int, index: int, block: int, pooltype: int) -> None:
    """x86 packs PreviousSize 0-8, PoolIndex 9-15, BlockSize 16-24, PoolType 25-31: the
    9th bit of the sizes (0x100) must not leak into the neighbouring 7-bit fields."""
    assert _fields(X86, x86_header(prev, index, block, pooltype, b"Abcd")) == (
        prev,
        index,
        block,
        pooltype,
    )


def test_x86_fields_on_raw_word() -> None:
    """The same split on a literal word, independent of the test's own packer."""
    w0 = np.array([(0x41 << 25) | (0x123 << 16) | (0x2A << 9) | 0x1F0], dtype=np.uint32)
    prev, index, block, pooltype = X86.fields(w0)
    assert (int(prev[0]), int(index[0]), int(block[0]), int(pooltype[0])) == (
        0x1F0,
        0x2A,
        0x123,
        0x41,
    )


def test_x64_fields_are_bytes() -> None:
    """x64 (and the segment heap) keep one field per byte of word 0."""
    header = x64_header(0x12, 0x34, 0x56, 0x78, b"Abcd")
    assert _fields(X64, header) == (0x12, 0x34, 0x56, 0x78)
    assert _fields(SEGMENT_HEAP, header) == (0x12, 0x34, 0x56, 0x78)
    w0 = np.array([0xFFEEDDCC], dtype=np.uint32)
    assert [int(f[0]) for f in X64.fields(w0)] == [0xCC, 0xDD, 0xEE, 0xFF]


def test_field_in_place() -> None:
    assert Field(16, 0x1FF).in_place == 0x01FF0000
    assert Field(25, 0x7F).in_place == 0xFE000000
    assert Field(8, 0xFF).in_place == 0x0000FF00


def test_unit_properties() -> None:
    """Units, slots per page, words per slot and field width per family."""
    assert (X86.unit, X86.header_size, X86.units_per_page, X86.words_per_unit) == (8, 8, 512, 2)
    assert (X64.unit, X64.header_size, X64.units_per_page, X64.words_per_unit) == (16, 16, 256, 4)
    assert (X86.size_bits, X64.size_bits, SEGMENT_HEAP.size_bits) == (9, 8, 8)
    assert SEGMENT_HEAP.segment_max_block == 0xFE


def test_segment_w0_mask_and_value() -> None:
    """PreviousSize, PoolIndex and PoolType bits 1, 4, 7 are fixed; bit 1 must be set."""
    mask, value = SEGMENT_HEAP.segment_w0
    assert (int(mask), int(value)) == (0x9200FFFF, 0x02000000)


@pytest.mark.parametrize(
    ("prev", "index", "block", "pooltype", "strict"),
    [
        (0, 0, 4, 0x02, True),  # nonpaged
        (0, 0, 4, 0x03, True),  # paged
        (0, 0, 0xFE, 0x6F, True),  # every bit the 0x6D mask lets through
        (1, 0, 4, 0x02, False),  # PreviousSize != 0: a legacy chain header
        (0, 1, 4, 0x02, False),  # PoolIndex != 0
        (0, 0, 4, 0x12, False),  # PoolType bit 4
        (0, 0, 4, 0x82, False),  # PoolType bit 7
        (0, 0, 4, 0x01, False),  # bit 1 (always set on 19H1+) missing
        (0, 0, 4, 0x00, False),
    ],
)
def test_segment_w0_accepts_only_strict_headers(
    prev: int, index: int, block: int, pooltype: int, strict: bool
) -> None:
    mask, value = SEGMENT_HEAP.segment_w0
    w0 = _w0(x64_header(prev, index, block, pooltype, b"Abcd"))
    assert bool(((w0 & mask) == value)[0]) is strict


def _decode(values: list[int], encoding: Encoding) -> list[tuple[int, int]]:
    pool, state = decode_pooltype(np.array(values, dtype=np.uint32), encoding)
    return list(zip(pool.tolist(), state.tolist(), strict=True))


NP, PG, UNK = POOL_NONPAGED, POOL_PAGED, POOL_UNKNOWN
ALLOC, FREE, SUNK = STATE_ALLOCATED, STATE_FREE, STATE_UNKNOWN


@pytest.mark.parametrize(
    ("encoding", "table"),
    [
        # XP/2003: 0 free (pool unknown), else POOL_TYPE + 1: odd nonpaged, even paged.
        (
            Encoding.XP,
            {0: (UNK, FREE), 1: (NP, ALLOC), 2: (PG, ALLOC), 3: (NP, ALLOC), 0x21: (NP, ALLOC)},
        ),
        # Vista+: bit 1 in use, bit 0 paged; modifier bits (quota 8, session 0x20) ignored.
        (
            Encoding.VISTA,
            {
                0: (NP, FREE),
                1: (PG, FREE),
                2: (NP, ALLOC),
                3: (PG, ALLOC),
                0x0A: (NP, ALLOC),
                0x23: (PG, ALLOC),
                0x21: (PG, FREE),
            },
        ),
        # Segment heap: bit 0 paged, state never from the header.
        (Encoding.SEGMENT_HEAP, {2: (NP, SUNK), 3: (PG, SUNK), 0x0A: (NP, SUNK), 0x6F: (PG, SUNK)}),
    ],
)
def test_decode_pooltype(encoding: Encoding, table: dict[int, tuple[int, int]]) -> None:
    assert _decode(list(table), encoding) == list(table.values())


def test_decode_pooltype_empty() -> None:
    pool, state = decode_pooltype(np.empty(0, np.uint8), Encoding.VISTA)
    assert pool.shape == state.shape == (0,)


def test_layouts_order_and_scanners() -> None:
    """Detection ties go to the first family of LAYOUTS, so its order is behaviour."""
    assert list(LAYOUTS) == [Family.X64, Family.SEGMENT_HEAP, Family.X86]
    assert all(lay.family is fam for fam, lay in LAYOUTS.items())
    assert {fam: lay.scanner for fam, lay in LAYOUTS.items()} == {
        Family.X64: "legacy",
        Family.SEGMENT_HEAP: "segment",
        Family.X86: "legacy",
    }
    # Only the segment heap fixes its encoding; legacy ones are voted per dump.
    assert {fam: lay.encoding for fam, lay in LAYOUTS.items()} == {
        Family.X64: None,
        Family.SEGMENT_HEAP: Encoding.SEGMENT_HEAP,
        Family.X86: None,
    }
    assert [lay.evidence for lay in LAYOUTS.values()] == [
        "x64 chains",
        "segment-heap pages",
        "x86 chains",
    ]


@pytest.mark.parametrize(
    ("layout", "encoding", "formats"),
    [
        (X86, Encoding.XP, (BIG_XP_X86, BIG_2003_X86)),
        (X86, Encoding.VISTA, (BIG_VISTA_X86,)),
        (X86, Encoding.SEGMENT_HEAP, (BIG_XP_X86, BIG_2003_X86)),  # falls back to the first
        (X64, Encoding.VISTA, (BIG_X64,)),
        (X64, Encoding.XP, (BIG_2003_X64,)),
        (X64, Encoding.SEGMENT_HEAP, (BIG_X64,)),
        (SEGMENT_HEAP, Encoding.SEGMENT_HEAP, (BIG_WIN10_X64, BIG_20348_X64)),
        (SEGMENT_HEAP, Encoding.VISTA, (BIG_WIN10_X64, BIG_20348_X64)),
    ],
)
def test_big_page_formats(layout: Layout, encoding: Encoding, formats: tuple[object, ...]) -> None:
    assert layout.big_page_formats(encoding) == formats


def test_big_page_formats_without_tables() -> None:
    """A family that declares no big-page formats searches for none."""
    bare = Layout(
        Family.X64, 16, 16, *(Field(8 * i, 0xFF) for i in range(4)),
        scanner="legacy", evidence="bare", architecture="x64",
    )  # fmt: skip
    assert bare.big_page_formats(Encoding.VISTA) == ()
