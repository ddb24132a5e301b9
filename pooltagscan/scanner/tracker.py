"""The kernel's own per-tag accounting (PoolTrackTable), found by structure alone.

PoolTrackTable is a hash table of {Key, NonPagedAllocs, NonPagedFrees, NonPagedBytes,
PagedAllocs, PagedFrees, PagedBytes} entries, most of them unused (all zero). A
physical page is taken for a page of it only when, at one phase, every whole entry is
either all zero or a printable tag whose counters agree with each other (frees never
exceed allocations, bytes are zero exactly when nothing is outstanding and at least
one per outstanding allocation), with at least MIN_ENTRIES tags. Text fails (its
counters would be printable too), and so do pointer arrays and most structures. A tag
with odd bytes is accepted in a page that holds enough printable ones.

An entry cut by a page boundary loses its counters; when its Key is still in the page
it is kept as a partial row, so that the tag is known to be tracked.
"""

from __future__ import annotations

import numpy as np

from pooltagscan.layouts import PAGE_SIZE, TrackerFormat
from pooltagscan.scanner.native import native as _native
from pooltagscan.scanner.tableprobe import PageProbe, probe
from pooltagscan.scanner.tables import (
    PageFields,
    entries_in_page,
    pick_readings,
    printable_tag,
    tail_bytes,
)

TRACKER_DTYPE = np.dtype(
    [
        ("tag", "<u4"),
        ("nonpaged_allocs", "<u8"),
        ("nonpaged_frees", "<u8"),
        ("nonpaged_bytes", "<u8"),
        ("paged_allocs", "<u8"),
        ("paged_frees", "<u8"),
        ("paged_bytes", "<u8"),
        ("entry", "<u8"),  # buffer offset in a window; the scan makes it an address
        ("partial", "?"),  # cut by a page boundary: only the tag is known
    ]
)
COUNTERS = TRACKER_DTYPE.names[1:7]
PROBE_ENTRIES = 6
MIN_ENTRIES = 4
MAX_COUNT = 1 << 32
MAX_BYTES = 1 << 42


class _Group:
    def __init__(self, fields: PageFields, pages: np.ndarray, fmt: TrackerFormat, phase: int):
        self.pages, self.fmt, self.phase = pages, fmt, phase
        n = entries_in_page(phase, fmt.entry_size)
        size = fmt.entry_size

        def get(offset: int, width: int) -> np.ndarray:
            return fields.gather(pages, phase, size, n, offset, width)

        cw, bw = fmt.count_width, fmt.bytes_width
        self.key = get(0, 4)
        self.counts = {}
        # A driver may track a tag with odd bytes; only printable ones count as evidence.
        ok = self.key != 0
        zero = self.key == 0
        for pool, (a, f, b) in (("nonpaged", fmt.nonpaged), ("paged", fmt.paged)):
            allocs, frees, nbytes = get(a, cw), get(f, cw), get(b, bw)
            self.counts[f"{pool}_allocs"] = allocs
            self.counts[f"{pool}_frees"] = frees
            self.counts[f"{pool}_bytes"] = nbytes
            live = allocs - np.minimum(frees, allocs)
            ok &= (allocs < MAX_COUNT) & (frees <= allocs) & (nbytes < MAX_BYTES)
            ok &= np.where(live == 0, nbytes == 0, nbytes >= live)
            zero &= (allocs == 0) & (frees == 0) & (nbytes == 0)
        for at in fmt.zero_at:
            pad = get(at, 4)
            ok &= pad == 0
            zero &= pad == 0
        self.used = ok
        self.valid = np.all(ok | zero, axis=1)
        self.evidence = (ok & printable_tag(self.key, allow_protected=False)).sum(axis=1)
        self.tail = None
        if tail_bytes(phase, size) >= 4:
            self.tail = fields.gather(pages, phase + n * size, size, 1, 0, 4)[:, 0]


def _keys_hold(fields: PageFields, pages: np.ndarray, fmt: TrackerFormat, phase: int):
    """Pages whose key column at this phase holds MIN_ENTRIES printable tags and whose
    padding is zero: a cheap first look before _Group reads every field."""
    n = entries_in_page(phase, fmt.entry_size)
    key = fields.gather(pages, phase, fmt.entry_size, n, 0, 4)
    ok = np.count_nonzero(printable_tag(key, allow_protected=False), axis=1) >= MIN_ENTRIES
    for at in fmt.zero_at:
        ok &= np.all(fields.gather(pages, phase, fmt.entry_size, n, at, 4) == 0, axis=1)
    return pages[ok]


def _table_pages(words: np.ndarray, fields: PageFields, candidates: np.ndarray, fmt):
    """(phase, pages) pairs worth reading whole for one entry format."""
    if _native is None:
        for phase in fmt.phases():
            yield phase, _keys_hold(fields, candidates, fmt, phase)
        return
    flags = np.zeros(words.shape[0], np.uint8)
    flags[candidates] = 1
    step = fmt.phases().step
    zero_at = fmt.zero_at[0] if fmt.zero_at else -1
    masks = np.frombuffer(
        _native.tracker_phases(
            words, flags, fmt.entry_size, step, fmt.count_width, fmt.bytes_width,
            *fmt.nonpaged, *fmt.paged, zero_at, MIN_ENTRIES,
        ),
        "<u2",
    )  # fmt: skip
    if not masks.any():  # the common case: no candidate is a table page at any phase
        return
    for bit, phase in enumerate(fmt.phases()):
        yield phase, np.flatnonzero(masks & (1 << bit))


def wide(formats: tuple[TrackerFormat, ...]) -> bool:
    """x64 layouts: 64-bit words whose high halves are small (see tableprobe)."""
    return any(8 in (f.count_width, f.bytes_width) for f in formats)


def tracker_entries(
    words: np.ndarray, formats: tuple[TrackerFormat, ...], pages: PageProbe | None = None
) -> np.ndarray:
    """Tracker rows of one window (TRACKER_DTYPE, `entry` = buffer offset); `pages` is
    the window's probe when the caller already made it."""
    fields = PageFields(words)
    if wide(formats) and fields.u64 is None:
        return np.zeros(0, TRACKER_DTYPE)
    if pages is None:
        pages = probe(words, (), wide(formats))
    candidates = np.flatnonzero(pages.tracker)
    groups = []
    for fmt in formats if candidates.size else ():
        for phase, pages in _table_pages(words, fields, candidates, fmt):
            if pages.size:
                groups.append(_Group(fields, pages, fmt, phase))
    if not groups:
        return np.zeros(0, TRACKER_DTYPE)
    parts = []
    for g, keep in zip(groups, pick_readings(groups, MIN_ENTRIES)):
        if not keep.any():
            continue
        row, col = np.nonzero(g.used & keep[:, None])
        out = np.zeros(row.size, TRACKER_DTYPE)
        out["tag"] = g.key[row, col]
        for name in COUNTERS:
            out[name] = g.counts[name][row, col]
        out["entry"] = g.pages[row] * PAGE_SIZE + g.phase + col * g.fmt.entry_size
        parts.append(out)
        if g.tail is not None:
            tail_pages = np.flatnonzero(keep)
            tags = g.tail[tail_pages]
            named = printable_tag(tags, allow_protected=False)
            cut = np.zeros(int(named.sum()), TRACKER_DTYPE)
            cut["tag"] = tags[named]
            n = entries_in_page(g.phase, g.fmt.entry_size)
            cut["entry"] = g.pages[tail_pages[named]] * PAGE_SIZE + g.phase + n * g.fmt.entry_size
            cut["partial"] = True
            parts.append(cut)
    if not parts:
        return np.zeros(0, TRACKER_DTYPE)
    rows = np.concatenate(parts)
    return rows[np.argsort(rows["entry"], kind="stable")]
