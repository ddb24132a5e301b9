"""scanner/pages.scan_words: exact records (address, tag, size, pool, state, confidence)
for hand-made windows, following README "What the confidence and state mean"."""

from __future__ import annotations

import numpy as np
from handmade import blank, legacy_chain, put, tag_value, words_of, x64_header, x86_header

from pooltagscan.layouts import (
    POOL_NONPAGED,
    POOL_PAGED,
    POOL_UNKNOWN,
    STATE_ALLOCATED,
    STATE_FREE,
    STATE_UNKNOWN,
    Encoding,
    Family,
)
from pooltagscan.records import (
    CONFIDENCE_HIGH,
    CONFIDENCE_LOW,
    CONFIDENCE_MEDIUM,
    FAMILY_INDEX,
    RECORD_DTYPE,
    SOURCE_PAGE,
)
from pooltagscan.scanner.pages import ScanConfig, scan_words

BASE = 0x10000
X64_BLOCKS = (0x20, 0x40, 0x10, 0x30, 0x08, 0x08, 0x18, 0x28, 0x10)
X64_OFFSETS = (0x000, 0x200, 0x600, 0x700, 0xA00, 0xA80, 0xB00, 0xC80, 0xF00)
TAGS = (b"Pro\xe3", b"Thre", b"File", b"Irp ", b"Io  ", b"MmSt", b"Even", b"Key ", b"Toke")
PLAIN = (b"Proc", *TAGS[1:])
VISTA = (3, 1, 3, 3, 1, 3, 3, 3, 1)
MIXED = (3, 2, 3, 3, 1, 3, 3, 3, 1)

Row = tuple[int, bytes, int, int, int, int, int, bool]


def _rows(records: np.ndarray) -> list[Row]:
    """(offset, tag bytes, size, pooltype, pool, state, confidence, protected) per record,
    after checking the fields every page record shares."""
    assert records.dtype == RECORD_DTYPE
    assert (records["source"] == SOURCE_PAGE).all() and (records["entry"] == 0).all()
    return [
        (
            int(r["offset"]),
            int(r["tag"]).to_bytes(4, "little"),
            int(r["size"]),
            int(r["pooltype"]),
            int(r["pool"]),
            int(r["state"]),
            int(r["confidence"]),
            bool(r["protected"]),
        )
        for r in records
    ]


def _vista_pool_state(pooltype: int) -> tuple[int, int]:
    pool = POOL_PAGED if pooltype & 1 else POOL_NONPAGED
    return pool, STATE_ALLOCATED if pooltype & 2 else STATE_FREE


def test_legacy_x64_records() -> None:
    """Page 0: complete chain (high; 'Pro\\xe3' reported as protected 'Proc'); page 1:
    complete but mixed pool classes (medium); page 2: broken at chunk 5 (5 low)."""
    buf = blank(3)
    legacy_chain(buf, 0, X64_BLOCKS, VISTA, TAGS, unit=16)
    legacy_chain(buf, 1, X64_BLOCKS, MIXED, PLAIN, unit=16)
    legacy_chain(buf, 2, X64_BLOCKS, VISTA, PLAIN, unit=16)
    put(buf, 2 * 4096 + X64_OFFSETS[5], x64_header(0x11, 0, X64_BLOCKS[5], 3, b"Bad!"))
    records = scan_words(words_of(buf), BASE, ScanConfig(Family.X64, Encoding.VISTA))

    want: list[Row] = []
    for page, pts, confidence, count in (
        (0, VISTA, CONFIDENCE_HIGH, 9),
        (1, MIXED, CONFIDENCE_MEDIUM, 9),
        (2, VISTA, CONFIDENCE_LOW, 5),
    ):
        for i in range(count):
            tag = PLAIN[i]
            want.append(
                (
                    BASE + page * 4096 + X64_OFFSETS[i],
                    tag,
                    X64_BLOCKS[i] * 16,
                    pts[i],
                    *_vista_pool_state(pts[i]),
                    confidence,
                    page == 0 and i == 0,
                )
            )
    assert _rows(records) == want
    assert (records["family"] == FAMILY_INDEX[Family.X64]).all()


def test_legacy_x86_xp_records() -> None:
    """x86 sizes are BlockSize * 8; XP PoolType 0 is free in an unknown pool."""
    blocks = (0x40, 0x100, 0x20, 0x60, 0x20, 0x20)
    offsets = (0x000, 0x200, 0xA00, 0xB00, 0xE00, 0xF00)
    pts = (1, 0, 1, 3, 0, 1)
    buf = blank(2)
    legacy_chain(buf, 1, blocks, pts, PLAIN[:6], unit=8, header=x86_header)
    records = scan_words(words_of(buf), 0x200000, ScanConfig(Family.X86, Encoding.XP))
    xp = {0: (POOL_UNKNOWN, STATE_FREE), 1: (POOL_NONPAGED, STATE_ALLOCATED)}
    xp[3] = (POOL_NONPAGED, STATE_ALLOCATED)
    assert _rows(records) == [
        (0x201000 + o, t, b * 8, p, *xp[p], CONFIDENCE_HIGH, False)
        for o, t, b, p in zip(offsets, PLAIN, blocks, pts, strict=False)
    ]
    assert (records["family"] == FAMILY_INDEX[Family.X86]).all()


def test_legacy_encoding_only_changes_decoding() -> None:
    """The same page under XP: 1 becomes allocated nonpaged, 3 allocated nonpaged."""
    buf = blank()
    legacy_chain(buf, 0, X64_BLOCKS, VISTA, PLAIN, unit=16)
    records = scan_words(words_of(buf), 0, ScanConfig(Family.X64, Encoding.XP))
    assert records["pool"].tolist() == [POOL_NONPAGED] * 9
    assert records["state"].tolist() == [STATE_ALLOCATED] * 9
    assert records["offset"].tolist() == list(X64_OFFSETS)


def _seg(block: int, pooltype: int, tag: bytes) -> bytes:
    return x64_header(0, 0, block, pooltype, tag)


def test_segment_records() -> None:
    """LFH run (high, unknown state), VS chain (high; allocated when reached from the
    chunk before), isolated headers: medium with a known tag, low with an unknown one."""
    buf = blank(2)
    page = 4096  # all on the window's second page
    for at in (0x40, 0x80, 0xC0):
        put(buf, page + at, _seg(4, 2, b"MmCi"))
    at = 0x400
    for block in (5, 3, 2):
        put(buf, page + at, b"\xff" * 16)
        put(buf, page + at + 16, _seg(block, 3, b"Vsch"))
        at += 16 + block * 16
    put(buf, page + 0x800, _seg(7, 3, b"Kn0w"))
    put(buf, page + 0xA00, _seg(7, 2, b"Unk9"))
    known = np.array(sorted([tag_value(b"Kn0w"), tag_value(b"Zzzz")]), np.uint32)
    config = ScanConfig(Family.SEGMENT_HEAP, Encoding.SEGMENT_HEAP, known_tags=known)
    records = scan_words(words_of(buf), 0x7000, config)

    at0 = 0x7000 + page
    NP, PG, HIGH = POOL_NONPAGED, POOL_PAGED, CONFIDENCE_HIGH
    assert _rows(records) == [
        (at0 + 0x40, b"MmCi", 64, 2, NP, STATE_UNKNOWN, HIGH, False),
        (at0 + 0x80, b"MmCi", 64, 2, NP, STATE_UNKNOWN, HIGH, False),
        (at0 + 0xC0, b"MmCi", 64, 2, NP, STATE_UNKNOWN, HIGH, False),
        (at0 + 0x410, b"Vsch", 80, 3, PG, STATE_UNKNOWN, HIGH, False),
        (at0 + 0x470, b"Vsch", 48, 3, PG, STATE_ALLOCATED, HIGH, False),
        (at0 + 0x4B0, b"Vsch", 32, 3, PG, STATE_ALLOCATED, HIGH, False),
        (at0 + 0x800, b"Kn0w", 112, 3, PG, STATE_UNKNOWN, CONFIDENCE_MEDIUM, False),
        (at0 + 0xA00, b"Unk9", 112, 2, NP, STATE_UNKNOWN, CONFIDENCE_LOW, False),
    ]
    assert (records["family"] == FAMILY_INDEX[Family.SEGMENT_HEAP]).all()


def test_segment_isolated_without_tag_database_is_low() -> None:
    """With no known tags (the default) every isolated header is low confidence."""
    buf = blank()
    put(buf, 0x800, _seg(7, 3, b"Kn0w"))
    records = scan_words(words_of(buf), 0, ScanConfig(Family.SEGMENT_HEAP, Encoding.SEGMENT_HEAP))
    assert records["confidence"].tolist() == [CONFIDENCE_LOW]


def test_legacy_page_under_segment_family_and_back() -> None:
    """The family chooses the scanner: a legacy chain has one strict segment header
    (its first, PreviousSize 0) and nothing else; an LFH page has no legacy chain."""
    buf = blank()
    legacy_chain(buf, 0, X64_BLOCKS, (2,) * 9, PLAIN, unit=16)
    seg = scan_words(words_of(buf), 0, ScanConfig(Family.SEGMENT_HEAP, Encoding.SEGMENT_HEAP))
    assert seg["offset"].tolist() == [0]
    assert seg["confidence"].tolist() == [CONFIDENCE_LOW]

    buf = blank()
    for at in range(0, 4096, 0x40):
        put(buf, at, _seg(4, 2, b"MmCi"))
    assert scan_words(words_of(buf), 0, ScanConfig(Family.X64, Encoding.VISTA)).size == 0
