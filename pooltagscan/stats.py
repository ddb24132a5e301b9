"""Per-tag statistics in the manner of WinDbg's `!poolused`, aggregated batch by batch.

"Live" blocks are the allocated ones plus the undecided ones: blocks whose state the dump
cannot tell (segment-heap LFH blocks, headers with no proven predecessor). `!poolused`
would count those as in use, so the nonpaged/paged columns do too; `undecided` counts them
again so nobody mistakes them for proven live allocations. Free blocks are counted apart.

The first nine columns are a contract: saved `scan --stats --format json` documents are
read back by `diff` and `report --baseline`, including documents written before the other
columns existed. New counters are appended, never renamed or reordered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pooltagscan.layouts import (
    POOL_NONPAGED,
    POOL_PAGED,
    STATE_ALLOCATED,
    STATE_FREE,
    STATE_UNKNOWN,
)
from pooltagscan.records import (
    CONFIDENCE_HIGH,
    CONFIDENCE_LOW,
    CONFIDENCE_MEDIUM,
    RECORD_DTYPE,
    SOURCE_BIGPOOL,
    SOURCE_PAGE,
    TagNames,
)
from pooltagscan.scanner.native import native
from pooltagscan.uniques import sorted_distinct, unique_inverse

# Counter columns per tag, in this order. The first nine are the original ones (see the
# module docstring); the invariants the tests hold:
#   allocated_allocs + undecided + free_allocs == total_allocs   (and the same for bytes)
#   live_allocs == allocated_allocs + undecided == small_allocs + big_allocs
#   high_confidence + medium_confidence + low_confidence == total_allocs
COLUMNS = (
    "nonpaged_allocs",  # live blocks of the nonpaged pool
    "nonpaged_bytes",
    "paged_allocs",  # live blocks of the paged pool
    "paged_bytes",
    "free_allocs",  # blocks the header says are free, any pool, any source
    "free_bytes",
    "undecided",  # live blocks whose state is unknown (a part of the live ones)
    "total_allocs",  # every block, free ones included
    "total_bytes",
    "allocated_allocs",  # blocks proven allocated
    "allocated_bytes",
    "undecided_bytes",
    "live_allocs",  # allocated + undecided: what `diff` and the report count
    "live_bytes",
    "high_confidence",  # blocks by confidence, free ones included
    "medium_confidence",
    "low_confidence",
    "small_allocs",  # live blocks found by their pool header in a page
    "small_bytes",
    "big_allocs",  # live big-pool allocations, from the kernel's big-page table
    "big_bytes",
)
LEGACY_COLUMNS = COLUMNS[:9]  # what documents of version 1 carry
SORT_KEYS = ("bytes", "count", "tag", "nonpaged", "paged")
_INDEX = {name: i for i, name in enumerate(COLUMNS)}


# Beside each tag, the kernel's own count of it (tracking.Reconciliation); null without a
# tracker table in the dump.
TRACKER_COLUMNS = ("tracker_live", "tracked_share", "tracker_flag")


@dataclass
class TagRow:
    tag: str
    counters: dict[str, int]
    owner: str = ""
    description: str = ""
    tracker: dict[str, Any] | None = None  # TRACKER_COLUMNS, when a tracker table was found

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            **self.counters,
            **(self.tracker or dict.fromkeys(TRACKER_COLUMNS)),
            "owner": self.owner,
            "description": self.description,
        }


# Every record falls in one class of (state, pool, source, confidence); each counter
# pair is the sum over the classes it takes. A batch is counted with two bincounts over
# (tag, class) and a product with these indicator matrices, instead of a mask and a
# bincount per column (4.7 ms a 32 MiB window against 1.6 ms for its whole scan).
_CLASS_FIELDS = ("state", "pool", "source", "confidence")
_CLASS_RADIX = (3, 3, 2, 3)
_CLASSES = int(np.prod(_CLASS_RADIX))


def _class_counters() -> tuple[np.ndarray, np.ndarray]:
    """(count, bytes) indicator matrices, classes x COLUMNS."""
    count = np.zeros((_CLASSES, len(COLUMNS)), np.int64)
    weight = np.zeros((_CLASSES, len(COLUMNS)), np.int64)
    for code, (state, pool, source, confidence) in enumerate(np.ndindex(*_CLASS_RADIX)):
        live = state != STATE_FREE
        pairs = [
            ("nonpaged_allocs", "nonpaged_bytes", live and pool == POOL_NONPAGED),
            ("paged_allocs", "paged_bytes", live and pool == POOL_PAGED),
            ("free_allocs", "free_bytes", not live),
            ("undecided", "undecided_bytes", state == STATE_UNKNOWN),
            ("total_allocs", "total_bytes", True),
            ("allocated_allocs", "allocated_bytes", state == STATE_ALLOCATED),
            ("live_allocs", "live_bytes", live),
            ("high_confidence", None, confidence == CONFIDENCE_HIGH),
            ("medium_confidence", None, confidence == CONFIDENCE_MEDIUM),
            ("low_confidence", None, confidence == CONFIDENCE_LOW),
            ("small_allocs", "small_bytes", live and source == SOURCE_PAGE),
            ("big_allocs", "big_bytes", live and source == SOURCE_BIGPOOL),
        ]
        for count_col, bytes_col, member in pairs:
            if member:
                count[code, _INDEX[count_col]] = 1
                if bytes_col is not None:
                    weight[code, _INDEX[bytes_col]] = 1
    return count, weight


_COUNT_OF_CLASS, _BYTES_OF_CLASS = _class_counters()


@dataclass(frozen=True)
class ClassSums:
    """A batch's records counted by (tag, class) in one C pass (tag_class_sums in
    _tables.c): what `--stats` needs of a window, without sorting its tags. `pool_pages`
    is the distinct pages of its header-carrying records, -1 when they were not in
    address order (the caller counts them then)."""

    keys: np.ndarray  # uint64: tag << 8 | class, sorted
    blocks: np.ndarray  # int64 records per key
    sizes: np.ndarray  # int64 summed sizes per key
    pool_pages: int

    @classmethod
    def of(cls, records: np.ndarray) -> ClassSums | None:
        """None without the C module, or for records of another dtype."""
        if native is None or records.dtype != RECORD_DTYPE:
            return None
        keys, blocks, sizes, pages = native.tag_class_sums(
            np.ascontiguousarray(records), _CLASS_RADIX, SOURCE_PAGE
        )
        return cls(
            np.frombuffer(keys, np.uint64),
            np.frombuffer(blocks, np.int64),
            np.frombuffer(sizes, np.int64),
            pages,
        )

    @property
    def records(self) -> int:
        return int(self.blocks.sum())

    @property
    def bytes(self) -> int:
        return int(self.sizes.sum())

    def counters(self) -> tuple[np.ndarray, np.ndarray]:
        """(tag values, counter rows), as TagStats.count makes them."""
        if not self.keys.size:
            return np.empty(0, np.uint32), np.zeros((0, len(COLUMNS)), np.int64)
        tag = (self.keys >> np.uint64(8)).astype(np.uint32)
        cls = (self.keys & np.uint64(0xFF)).astype(np.intp)
        start = np.flatnonzero(np.concatenate(([True], tag[1:] != tag[:-1])))
        per_key = (
            _COUNT_OF_CLASS[cls] * self.blocks[:, None] + _BYTES_OF_CLASS[cls] * self.sizes[:, None]
        )
        return tag[start], np.add.reduceat(per_key, start, axis=0)


def _class_codes(records: np.ndarray) -> np.ndarray:
    code = np.zeros(records.size, np.int64)
    for name, radix in zip(_CLASS_FIELDS, _CLASS_RADIX):
        code *= radix
        code += np.minimum(records[name], radix - 1)
    return code


class TagStats:
    """Accumulates counters keyed by tag value."""

    def __init__(self) -> None:
        self._tags = np.empty(0, np.uint32)
        self._counts = np.zeros((0, len(COLUMNS)), np.int64)

    def add(self, records: np.ndarray) -> None:
        """Count one batch; batches are merged by tag, so any split of a scan adds up."""
        self.merge(*self.count(records))

    @staticmethod
    def count(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tag values, counter rows) of one batch: what a scan thread hands over instead of
        the records when only the statistics are wanted (see merge)."""
        if not records.size:
            return np.empty(0, np.uint32), np.zeros((0, len(COLUMNS)), np.int64)
        sums = ClassSums.of(records)
        if sums is not None:
            return sums.counters()
        tags, inverse = unique_inverse(records["tag"])
        cell = inverse.reshape(-1).astype(np.int64) * _CLASSES + _class_codes(records)
        cells = tags.size * _CLASSES
        blocks = np.bincount(cell, minlength=cells).reshape(tags.size, _CLASSES)
        # float64 sums are exact below 2**53 bytes per batch
        size = np.bincount(cell, weights=records["size"], minlength=cells)
        size = size.astype(np.int64).reshape(tags.size, _CLASSES)
        counts = blocks @ _COUNT_OF_CLASS + size @ _BYTES_OF_CLASS
        return tags, counts

    def merge(self, tags: np.ndarray, counts: np.ndarray) -> None:
        if not tags.size:
            return
        all_tags = sorted_distinct(np.concatenate((self._tags, tags)))
        merged = np.zeros((all_tags.size, len(COLUMNS)), np.int64)
        merged[np.searchsorted(all_tags, self._tags)] += self._counts
        merged[np.searchsorted(all_tags, tags)] += counts
        self._tags, self._counts = all_tags, merged

    def __len__(self) -> int:
        return int(self._tags.size)

    def rows(self, describe=None, sort: str = "bytes") -> list[TagRow]:
        """Rows sorted as asked; `describe(tag) -> TagInfo | None` fills owner/description."""
        names = TagNames()
        rows = []
        for value, counts in zip(self._tags.tolist(), self._counts.tolist()):
            row = TagRow(names(value), dict(zip(COLUMNS, counts)))
            info = describe(row.tag) if describe else None
            if info is not None:
                row.owner, row.description = info.owner, info.description
            rows.append(row)
        return sort_rows(rows, sort)

    def totals(self) -> dict[str, int]:
        return (
            dict(zip(COLUMNS, self._counts.sum(axis=0).tolist()))
            if len(self)
            else dict.fromkeys(COLUMNS, 0)
        )


def sort_rows(rows: Iterable[TagRow], sort: str) -> list[TagRow]:
    keyfuncs = {
        "tag": lambda r: (r.tag,),
        "count": lambda r: (-r.counters["total_allocs"], r.tag),
        "bytes": lambda r: (-r.counters["total_bytes"], r.tag),
        "nonpaged": lambda r: (-r.counters["nonpaged_bytes"], r.tag),
        "paged": lambda r: (-r.counters["paged_bytes"], r.tag),
    }
    if sort not in keyfuncs:
        raise ValueError(f"unknown sort key {sort!r}; use one of {', '.join(SORT_KEYS)}")
    return sorted(rows, key=keyfuncs[sort])
