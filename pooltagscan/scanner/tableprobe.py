"""The cheap first look of the kernel-table search: which pages may hold big-page table
or tracker table entries.

Nearly every page says no within its first words. The C loop of _tables.c visits each
page once for both tables and stops early; this module's numpy code is its twin, used
where the C module was not built (or POOLTAGSCAN_NO_NATIVE is set), slower and with the
same answers. Pages that pass are then read entry by entry (bigpages.py, tracker.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pooltagscan.layouts import LAYOUTS, BigPageFormat
from pooltagscan.scanner.native import native
from pooltagscan.scanner.pages import ScanConfig, native_legacy_records, native_segment_records
from pooltagscan.scanner.tables import PageFields
from pooltagscan.scanner.tagbytes import printable

PROBE_ENTRIES = 8  # big-page entries tested on every page before a page is read whole
# A tracker counter above this fails the filter: text (0x20202020 and up), pointers and
# UTF-16 have larger high halves. A tag allocated half a billion times since boot (x64
# builds before the 64-bit counters) hides its tracker page; none is known to.
QUICK_COUNT = 1 << 29
ZERO_STRIDE = 256  # bytes between the sampled words of a page that starts with zeros
# x86: words neither small nor printable (odd tags) allowed in a page's first 64 bytes and
# in the whole page.
MAX_ODD_HEAD, MAX_ODD = 2, 8


@dataclass
class PageProbe:
    """Per page of a window: which (format, phase) readings of the big-page table its
    first entries fit (bit k of `big` for combos[k]), and whether it may be a tracker
    page."""

    combos: list[tuple[BigPageFormat, int]]
    big: np.ndarray  # uint8 bit masks
    tracker: np.ndarray  # bool

    def big_pages(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.big & np.uint8(1 << k))


def probe(
    words: np.ndarray,
    formats: tuple[BigPageFormat, ...],
    wide: bool,
    skip: np.ndarray | None = None,
) -> PageProbe:
    """`wide`: the tracker layouts of x64 (64-bit words with small high halves); `skip`:
    pages known to be something else (pool pages), never looked at."""
    combos = _combos(words, formats)
    if skip is None:
        skip = np.zeros(words.shape[0], bool)
    if native is not None:
        args = [(f.ptr_size, f.entry_size, phase, f.kernel_min) for f, phase in combos]
        flags = native.probe_pages(words, wide, args, PROBE_ENTRIES, skip.view(np.uint8))
        flags = np.frombuffer(flags, np.uint8)
        return PageProbe(combos, flags[0::2], flags[1::2].astype(bool))
    fields = PageFields(words)
    every = np.flatnonzero(~skip)
    big = np.zeros(words.shape[0], np.uint8)
    for k, (fmt, phase) in enumerate(combos):
        va = fields.gather(every, phase, fmt.entry_size, PROBE_ENTRIES, 0, fmt.ptr_size)
        big[every] |= np.all(va_ok(va, fmt), axis=1).astype(np.uint8) << np.uint8(k)
    return PageProbe(combos, big, _tracker_pages(words, wide) & ~skip)


@dataclass
class FusedPass:
    """What one C pass over a window gave: the page scanner's records and, when asked,
    the table probe."""

    records: np.ndarray
    pages: PageProbe | None


def fused_pass(
    words: np.ndarray,
    address: int,
    config: ScanConfig,
    formats: tuple[BigPageFormat, ...],
    wide: bool,
) -> FusedPass | None:
    """The page scanner's first step and the table probe in one pass of the C module,
    so each page is probed while the scanner has it in the cache (a second pass pays a
    cache and a TLB miss per page); None where the C module is not built. Legacy pages
    proven by a whole chain are not probed, as `probe(skip=...)` would not."""
    if native is None:
        return None
    layout = LAYOUTS[config.family]
    combos = _combos(words, formats)
    args = [(f.ptr_size, f.entry_size, phase, f.kernel_min) for f, phase in combos]
    probe_args = (wide, args, PROBE_ENTRIES) if config.tables else None
    scanner = native_segment_records if layout.scanner == "segment" else native_legacy_records
    records, flags = scanner(words, address, config, layout, probe_args)
    found = FusedPass(records, None)
    if config.tables:
        flags = np.frombuffer(flags, np.uint8)
        found.pages = PageProbe(combos, flags[0::2], flags[1::2].astype(bool))
    return found


def _combos(words: np.ndarray, formats: tuple[BigPageFormat, ...]):
    return [(f, phase) for f in formats if f.ptr_size == 4 or words.size % 2 == 0
            for phase in f.phases()]  # fmt: skip


def va_ok(va: np.ndarray, fmt: BigPageFormat) -> np.ndarray:
    """A never-used marker (1) or a page-aligned kernel address, bit 0 = freed."""
    top = 0xFFFFFFFFFFFFF001 if fmt.ptr_size == 8 else 0xFFFFF001
    return (va == 1) | (((va & 0xFFE) == 0) & (va >= fmt.kernel_min) & (va <= top))


def _utf16_pair(words: np.ndarray) -> np.ndarray:
    """Two printable UTF-16LE characters (0x00XX00YY, XX and YY in 0x20-0x7E)."""
    a, b = words & 0xFF, (words >> 16) & 0xFF
    return ((words & 0xFF00FF00) == 0) & (a >= 0x20) & (a <= 0x7E) & (b >= 0x20) & (b <= 0x7E)


def _tracker_pages(words: np.ndarray, wide: bool) -> np.ndarray:
    """In a tracker page every 32-bit word is a tag, zero, a counter or half of a byte
    counter: on x64 the high half of every 64-bit word is small; on x86 every word is
    small or a printable tag (but for a few odd tags), two in five at least small. And
    the page is not all zero."""
    limit = np.uint32(QUICK_COUNT)
    head = words[:, :16]
    if wide:
        hi = head[:, 1::2]
        ok = np.all(hi < limit, axis=1) & (np.count_nonzero(hi < 1024, axis=1) >= 3)
    else:
        odd = np.count_nonzero((head >= limit) & ~printable(head), axis=1)
        ok = (odd <= MAX_ODD_HEAD) & (np.count_nonzero(head < (1 << 24), axis=1) >= 6)
        # UTF-16 text reads as small numbers: two characters a word give it away.
        ok &= np.count_nonzero(_utf16_pair(head), axis=1) < 8
    # A page whose first 64 bytes are zero is read whole only if a sample of it is not
    # (see zero_sample in _tables.c for why a tracker page is still found).
    empty = ~np.any(head != 0, axis=1)
    empty[empty] = ~np.any(words[empty][:, 0 :: ZERO_STRIDE // 4] != 0, axis=1) & ~np.any(
        words[empty][:, 1 :: ZERO_STRIDE // 4] != 0, axis=1
    )
    pages = np.flatnonzero(ok & ~empty)
    whole = words[pages]
    if wide:
        ok = np.all(whole[:, 1::2] < limit, axis=1)
    else:
        ok = np.count_nonzero((whole >= limit) & ~printable(whole), axis=1) <= MAX_ODD
        ok &= 5 * np.count_nonzero(whole < (1 << 24), axis=1) >= 2 * whole.shape[1]
    out = np.zeros(words.shape[0], bool)
    out[pages[ok & np.any(whole != 0, axis=1)]] = True
    return out
