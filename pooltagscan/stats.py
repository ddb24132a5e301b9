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
    SOURCE_BIGPOOL,
    SOURCE_PAGE,
    TagNames,
)

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


def _masks(records: np.ndarray) -> list[tuple[str, str | None, np.ndarray | None]]:
    """(count column, bytes column or None, block mask or None for all) per counter pair."""
    state, pool, source = records["state"], records["pool"], records["source"]
    confidence = records["confidence"]
    live = state != STATE_FREE
    return [
        ("nonpaged_allocs", "nonpaged_bytes", live & (pool == POOL_NONPAGED)),
        ("paged_allocs", "paged_bytes", live & (pool == POOL_PAGED)),
        ("free_allocs", "free_bytes", ~live),
        ("undecided", "undecided_bytes", state == STATE_UNKNOWN),
        ("total_allocs", "total_bytes", None),
        ("allocated_allocs", "allocated_bytes", state == STATE_ALLOCATED),
        ("live_allocs", "live_bytes", live),
        ("high_confidence", None, confidence == CONFIDENCE_HIGH),
        ("medium_confidence", None, confidence == CONFIDENCE_MEDIUM),
        ("low_confidence", None, confidence == CONFIDENCE_LOW),
        ("small_allocs", "small_bytes", live & (source == SOURCE_PAGE)),
        ("big_allocs", "big_bytes", live & (source == SOURCE_BIGPOOL)),
    ]


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
        """(tag values, counter rows) of one batch: what a scan worker ships instead of
        the records when only the statistics are wanted (see merge)."""
        if not records.size:
            return np.empty(0, np.uint32), np.zeros((0, len(COLUMNS)), np.int64)
        tags, inverse = np.unique(records["tag"], return_inverse=True)
        size = records["size"].astype(np.int64)
        counts = np.zeros((tags.size, len(COLUMNS)), np.int64)
        for count_col, bytes_col, mask in _masks(records):
            picked = inverse if mask is None else inverse[mask]
            counts[:, _INDEX[count_col]] = np.bincount(picked, minlength=tags.size)
            if bytes_col is not None:
                weights = size if mask is None else size[mask]
                counts[:, _INDEX[bytes_col]] = np.bincount(
                    picked, weights=weights, minlength=tags.size
                ).astype(np.int64)  # float64 sums are exact below 2**53 bytes per batch
        return tags, counts

    def merge(self, tags: np.ndarray, counts: np.ndarray) -> None:
        if not tags.size:
            return
        all_tags = np.union1d(self._tags, tags)
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
