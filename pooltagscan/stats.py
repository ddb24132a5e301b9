"""Per-tag statistics in the manner of WinDbg's `!poolused`, aggregated batch by batch.

Blocks whose state the dump cannot tell (segment-heap LFH blocks) are counted with the
allocations of their pool, as `!poolused` would see them, and also in `undecided`
so nobody mistakes them for proven live allocations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pooltagscan.layouts import POOL_NONPAGED, POOL_PAGED, STATE_FREE, STATE_UNKNOWN
from pooltagscan.records import TagNames

# Counter columns per tag, in this order.
COLUMNS = (
    "nonpaged_allocs",
    "nonpaged_bytes",
    "paged_allocs",
    "paged_bytes",
    "free_allocs",
    "free_bytes",
    "undecided",
    "total_allocs",
    "total_bytes",
)
SORT_KEYS = ("bytes", "count", "tag", "nonpaged", "paged")


@dataclass
class TagRow:
    tag: str
    counters: dict[str, int]
    owner: str = ""
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            **self.counters,
            "owner": self.owner,
            "description": self.description,
        }


class TagStats:
    """Accumulates counters keyed by tag value."""

    def __init__(self) -> None:
        self._tags = np.empty(0, np.uint32)
        self._counts = np.zeros((0, len(COLUMNS)), np.int64)

    def add(self, records: np.ndarray) -> None:
        if not records.size:
            return
        tags, inverse = np.unique(records["tag"], return_inverse=True)
        size = records["size"].astype(np.int64)
        live = records["state"] != STATE_FREE
        counts = np.zeros((tags.size, len(COLUMNS)), np.int64)
        for col, mask in (
            (0, live & (records["pool"] == POOL_NONPAGED)),
            (2, live & (records["pool"] == POOL_PAGED)),
            (4, ~live),
        ):
            counts[:, col] = np.bincount(inverse[mask], minlength=tags.size)
            counts[:, col + 1] = np.bincount(
                inverse[mask], weights=size[mask], minlength=tags.size
            ).astype(np.int64)
        counts[:, 6] = np.bincount(inverse[records["state"] == STATE_UNKNOWN], minlength=tags.size)
        counts[:, 7] = np.bincount(inverse, minlength=tags.size)
        counts[:, 8] = np.bincount(inverse, weights=size, minlength=tags.size).astype(np.int64)
        self._merge(tags, counts)

    def _merge(self, tags: np.ndarray, counts: np.ndarray) -> None:
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
