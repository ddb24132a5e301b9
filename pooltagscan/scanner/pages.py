"""Turn one window of pages into allocation records, for a chosen family and encoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pooltagscan.layouts import (
    LAYOUTS,
    LEGACY_POOLTYPE_LIMIT,
    PAGE_SIZE,
    STATE_ALLOCATED,
    STATE_UNKNOWN,
    Encoding,
    Family,
    Layout,
    decode_pooltype,
)
from pooltagscan.records import (
    CONFIDENCE_HIGH,
    CONFIDENCE_LOW,
    CONFIDENCE_MEDIUM,
    FAMILY_INDEX,
    RECORD_DTYPE,
    SOURCE_PAGE,
    take,
)
from pooltagscan.scanner import legacy, segment
from pooltagscan.scanner.native import native
from pooltagscan.scanner.tagbytes import split_protected


@dataclass(frozen=True)
class ScanConfig:
    """Everything a worker needs to scan a window; small and picklable."""

    family: Family
    encoding: Encoding
    # Sorted uint32 tag values a tag database knows; an isolated segment-heap header
    # with one of these tags is more credible than one with an unheard-of tag.
    known_tags: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint32))
    # Search every page for the big-page and tracker tables too (see scanner/bigpages.py
    # and scanner/tracker.py).
    tables: bool = True


def scan_words(words: np.ndarray, address: int, config: ScanConfig) -> np.ndarray:
    """Records for a window whose first page is at `address` (page aligned)."""
    layout = LAYOUTS[config.family]
    if layout.scanner == "segment":
        return _segment_records(words, address, config, layout)
    return _legacy_records(words, address, config, layout)


def _legacy_records(
    words: np.ndarray, address: int, config: ScanConfig, layout: Layout
) -> np.ndarray:
    if native is not None:
        return native_legacy_records(words, address, config, layout)[0]
    chunks = legacy.walk_chains(words, layout)
    partial = legacy.partial_mask(chunks)
    keep = chunks.complete | partial
    confidence = np.where(
        chunks.complete,
        np.where(chunks.consistent, CONFIDENCE_HIGH, CONFIDENCE_MEDIUM),
        CONFIDENCE_LOW,
    )[keep]
    _, _, block, pooltype = layout.fields(chunks.w0[keep])
    tag, protected = split_protected(chunks.tag[keep])
    pool, state = decode_pooltype(pooltype, config.encoding)
    offset = address + chunks.page[keep].astype(np.uint64) * PAGE_SIZE + chunks.offset[keep]
    records = _pack(
        offset,
        tag,
        block * layout.unit,
        pooltype,
        pool,
        state,
        confidence,
        protected,
        config.family,
    )
    # The numpy walk runs page-parallel, each page's chunks in address order: a stable sort
    # on the page index (a 16-bit radix sort for windows under 256 MiB) restores address
    # order. The C walk gives address order already.
    page = chunks.page[keep]
    if page.size < 2 or bool(np.all(page[1:] >= page[:-1])):
        return records
    key = page.astype(np.uint16) if words.shape[0] <= 0xFFFF else page
    return take(records, np.argsort(key, kind="stable"))


def native_legacy_records(
    words: np.ndarray,
    address: int,
    config: ScanConfig,
    layout: Layout,
    probe: tuple[bool, list, int] | None = None,
) -> tuple[np.ndarray, bytes]:
    """The legacy records by the C scanner (_tables.c; the numpy code above is its twin)
    and, given `probe` = (wide, combos, entries), the table probe's flags of the same
    pass (see tableprobe.fused_pass)."""
    prev, block, kind = layout.previous, layout.block, layout.pooltype
    wide, combos, entries = probe or (False, [], 1)
    raw, flags = native.legacy_records(
        words, address, layout.unit, prev.shift, prev.mask, block.shift, block.mask,
        kind.shift, kind.mask, LEGACY_POOLTYPE_LIMIT, config.encoding is Encoding.XP,
        FAMILY_INDEX[config.family], probe is not None, wide, combos, entries,
    )  # fmt: skip
    # A bytearray: the records are writable in place (a copy of this packed dtype costs
    # more than the whole C pass).
    return np.frombuffer(raw, RECORD_DTYPE), flags


def native_segment_records(
    words: np.ndarray,
    address: int,
    config: ScanConfig,
    layout: Layout,
    probe: tuple[bool, list, int] | None = None,
) -> tuple[np.ndarray, bytes]:
    """The segment-heap records by the C scanner (_tables.c; _segment_records below is
    its twin) and, given `probe` = (wide, combos, entries), the table probe's flags of
    the same pass (see tableprobe.fused_pass)."""
    mask, value = layout.segment_w0
    block, kind = layout.block, layout.pooltype
    wide, combos, entries = probe or (False, [], 1)
    raw, flags = native.segment_records(
        words, address, layout.words_per_unit, int(mask), int(value), block.shift, block.mask,
        kind.shift, kind.mask, layout.segment_max_block, layout.vs_header_units,
        config.encoding is Encoding.XP, FAMILY_INDEX[config.family],
        np.ascontiguousarray(config.known_tags, np.uint32), probe is not None, wide, combos,
        entries,
    )  # fmt: skip
    return np.frombuffer(raw, RECORD_DTYPE), flags


def _segment_records(
    words: np.ndarray, address: int, config: ScanConfig, layout: Layout
) -> np.ndarray:
    if native is not None:
        return native_segment_records(words, address, config, layout)[0]
    found = segment.find_headers(words, layout)
    linked = found.linked
    known = np.isin(found.tag, config.known_tags)
    confidence = np.where(
        linked, CONFIDENCE_HIGH, np.where(known, CONFIDENCE_MEDIUM, CONFIDENCE_LOW)
    )
    _, _, block, pooltype = layout.fields(found.w0)
    pool, _ = decode_pooltype(pooltype, config.encoding)
    # An LFH block's header survives its free, so its state stays unknown; see
    # SegmentHeaders.vs_in_use for when a VS chunk counts as allocated.
    state = np.where(found.vs_in_use, STATE_ALLOCATED, STATE_UNKNOWN)
    offset = address + found.slot.astype(np.uint64) * layout.unit
    return _pack(
        offset,
        found.tag,
        block * layout.unit,
        pooltype,
        pool,
        state,
        confidence,
        np.zeros(found.slot.size, bool),
        config.family,
    )


def _pack(offset, tag, size, pooltype, pool, state, confidence, protected, family) -> np.ndarray:
    out = np.empty(len(offset), dtype=RECORD_DTYPE)
    out["offset"] = offset
    out["tag"] = tag
    out["size"] = size
    out["pooltype"] = pooltype
    out["pool"] = pool
    out["state"] = state
    out["confidence"] = confidence
    out["protected"] = protected
    out["family"] = FAMILY_INDEX[family]
    out["source"] = SOURCE_PAGE
    out["entry"] = 0
    return out
