"""The kernel's own per-tag accounting, summed from the tracker-table rows of a scan,
and its reconciliation with the blocks the scan carved.

PoolTrackTable says how many allocations of each tag are outstanding; the blocks found
in pool pages and the big-page table are what the dump still shows of them. More
proven-live blocks than the kernel counts, or blocks of a tag the kernel never counted,
is what hidden or forged allocations look like. Rows cut by a page boundary only prove
that a tag is tracked; their counts are unknown and never compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pooltagscan.records import TagNames
from pooltagscan.scanner.tracker import COUNTERS
from pooltagscan.uniques import sorted_distinct, unique_inverse

TRACKER_KIND = "pooltagscan-tracker"
TRACKER_VERSION = 1
TRACKER_SORTS = ("bytes", "count", "tag", "nonpaged", "paged")

FLAG_EXCEEDS = "exceeds-tracker"  # more proven-live blocks than the kernel counts
FLAG_UNTRACKED = "untracked"  # blocks of a tag the tracker table does not hold
FLAG_CUT = "tracker-entry-cut"  # the tag's entry straddles a page: counts unknown


@dataclass
class TrackerRow:
    tag: str
    counters: dict[str, int]
    owner: str = ""
    description: str = ""

    @property
    def live(self) -> int:
        """Outstanding allocations, both pools."""
        c = self.counters
        return (c["nonpaged_allocs"] - c["nonpaged_frees"]) + (c["paged_allocs"] - c["paged_frees"])

    @property
    def live_bytes(self) -> int:
        return self.counters["nonpaged_bytes"] + self.counters["paged_bytes"]

    def as_dict(self) -> dict[str, Any]:
        """The jsonl row: exactly the tag and the kernel's six counters."""
        return {"tag": self.tag, **self.counters}


@dataclass
class TrackerTotals:
    """Tracker rows of one dump, summed by tag (per-processor or session tables add up)."""

    _rows: list[np.ndarray] = field(default_factory=list)

    def add(self, rows: np.ndarray) -> None:
        if rows.size:
            self._rows.append(rows)

    @property
    def _all(self) -> np.ndarray:
        from pooltagscan.scanner.tracker import TRACKER_DTYPE

        return np.concatenate(self._rows) if self._rows else np.zeros(0, TRACKER_DTYPE)

    @property
    def found(self) -> bool:
        return bool(self._rows)

    @property
    def pages(self) -> int:
        """Physical pages of tracker table found."""
        rows = self._all
        return int(sorted_distinct(rows["entry"] >> np.uint64(12)).size)

    def cut_tags(self) -> set[str]:
        """Tags whose entry straddles a page boundary, with no whole entry elsewhere."""
        rows, names = self._all, TagNames()
        whole = {names(t) for t in rows["tag"][~rows["partial"]].tolist()}
        return {names(t) for t in rows["tag"][rows["partial"]].tolist()} - whole

    def rows(self, describe=None, sort: str = "bytes") -> list[TrackerRow]:
        all_rows = self._all
        whole = all_rows[~all_rows["partial"]]
        names = TagNames()
        tags, inverse = unique_inverse(whole["tag"])
        out = []
        sums = {
            name: np.bincount(inverse, weights=whole[name].astype(np.float64), minlength=tags.size)
            for name in COUNTERS
        }
        for i, value in enumerate(tags.tolist()):
            row = TrackerRow(names(value), {name: int(sums[name][i]) for name in COUNTERS})
            info = describe(row.tag) if describe else None
            if info is not None:
                row.owner, row.description = info.owner, info.description
            out.append(row)
        return sort_tracker_rows(out, sort)

    def document(self, rows: list[TrackerRow], meta: dict[str, Any]) -> dict[str, Any]:
        """The JSON form; `diff` reads it back."""
        return {
            "kind": TRACKER_KIND,
            "version": TRACKER_VERSION,
            **meta,
            "tracker_pages": self.pages,
            "cut_tags": sorted(self.cut_tags()),
            "tags": [{**r.as_dict(), "owner": r.owner, "description": r.description} for r in rows],
        }


def sort_tracker_rows(rows: list[TrackerRow], sort: str) -> list[TrackerRow]:
    keys = {
        "bytes": lambda r: (-r.live_bytes, r.tag),
        "count": lambda r: (-r.live, r.tag),
        "tag": lambda r: (r.tag,),
        "nonpaged": lambda r: (-r.counters["nonpaged_bytes"], r.tag),
        "paged": lambda r: (-r.counters["paged_bytes"], r.tag),
    }
    if sort not in keys:
        raise ValueError(f"unknown sort key {sort!r}; use one of {', '.join(TRACKER_SORTS)}")
    return sorted(rows, key=keys[sort])


@dataclass(frozen=True)
class Reconciliation:
    """One tag's carved blocks against the kernel's count."""

    tracker_live: int | None  # None: no tracker row for the tag (or its row was cut)
    carved_allocated: int  # blocks proven live (state allocated), page and big
    carved_live: int  # allocated plus undecided
    flag: str = ""

    @property
    def share(self) -> float | None:
        """Share of the kernel's outstanding allocations the carved blocks account for."""
        if not self.tracker_live:
            return None
        return self.carved_live / self.tracker_live

    def as_dict(self) -> dict[str, Any]:
        share = self.share
        return {
            "tracker_live": self.tracker_live,
            "tracked_share": None if share is None else round(share, 4),
            "tracker_flag": self.flag,
        }


def reconcile(
    carved: dict[str, tuple[int, int]], totals: TrackerTotals
) -> dict[str, Reconciliation]:
    """Per tag of `carved` ({tag: (allocated, allocated + undecided)}): the comparison.

    Nothing is flagged when no tracker table was found at all: absence of evidence.
    """
    if not totals.found:
        return {}
    live = {r.tag: r.live for r in totals.rows(sort="tag")}
    cut = totals.cut_tags()
    out = {}
    for tag, (allocated, maybe) in carved.items():
        count = live.get(tag)
        flag = ""
        if count is None:
            flag = FLAG_CUT if tag in cut else (FLAG_UNTRACKED if maybe else "")
        elif allocated > count:
            flag = FLAG_EXCEEDS
        out[tag] = Reconciliation(count, allocated, maybe, flag)
    return out


def attach(rows: list, totals: TrackerTotals) -> None:
    """Set `tracker` on stats rows (stats.TagRow) from the reconciliation; rows of tags
    the tracker holds but no block carries are not invented here."""
    carved = {r.tag: (r.counters["allocated_allocs"], r.counters["live_allocs"]) for r in rows}
    result = reconcile(carved, totals)
    for row in rows:
        found = result.get(row.tag)
        row.tracker = found.as_dict() if found is not None else None
