"""Per-tag growth between two snapshots, for pool-leak hunting in the PoolMon manner.

A snapshot is the per-tag statistics of one dump, either computed by scanning it or read
back from a saved `scan --stats --format json` document, so a baseline taken once can be
compared with many later dumps without rescanning it. The tracker view compares the
kernel's own counters instead (PoolTrackTable, `scan --tracker`), as PoolMon does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pooltagscan.errors import InputError
from pooltagscan.inputs import open_image
from pooltagscan.inputs.base import open_checked
from pooltagscan.inputs.sniff import HEAD_BYTES, text_kind
from pooltagscan.scan import prepare, proves_nothing, run
from pooltagscan.scanner.engine import ProgressCallback
from pooltagscan.stats import TagStats
from pooltagscan.stats_document import (
    VIEW_STATS,
    VIEW_TRACKER,
    Snapshot,
    read_saved,
    snapshot_from_document,
)
from pooltagscan.tags.database import TagDatabase
from pooltagscan.tracking import TrackerTotals

__all__ = [
    "DIFF_SORTS",
    "NEITHER",
    "VIEW_STATS",
    "VIEW_TRACKER",
    "DiffRow",
    "Snapshot",
    "diff",
    "load_snapshot",
    "mismatch",
    "snapshot_from_document",
    "snapshot_from_stats",
    "snapshot_from_tracker",
]

# What `diff` takes on either side, said when a file is neither.
NEITHER = (
    "not a memory dump nor a saved `scan --stats --format json` "
    "or `scan --tracker --format json` view"
)


@dataclass
class DiffRow:
    tag: str
    old_allocs: int
    new_allocs: int
    old_bytes: int
    new_bytes: int
    owner: str = ""
    description: str = ""

    @property
    def delta_allocs(self) -> int:
        return self.new_allocs - self.old_allocs

    @property
    def delta_bytes(self) -> int:
        return self.new_bytes - self.old_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "old_allocs": self.old_allocs,
            "new_allocs": self.new_allocs,
            "delta_allocs": self.delta_allocs,
            "old_bytes": self.old_bytes,
            "new_bytes": self.new_bytes,
            "delta_bytes": self.delta_bytes,
            "owner": self.owner,
            "description": self.description,
        }


def snapshot_from_stats(source: str, meta: dict[str, Any], stats: TagStats) -> Snapshot:
    snap = Snapshot(source, meta)
    for row in stats.rows(sort="tag"):
        c = row.counters
        snap.allocs[row.tag] = c["total_allocs"] - c["free_allocs"]
        snap.bytes[row.tag] = c["total_bytes"] - c["free_bytes"]
    return snap


def snapshot_from_tracker(source: str, meta: dict[str, Any], totals: TrackerTotals) -> Snapshot:
    snap = Snapshot(source, meta, view=VIEW_TRACKER)
    for row in totals.rows(sort="tag"):
        snap.allocs[row.tag] = row.live
        snap.bytes[row.tag] = row.live_bytes
    return snap


def load_snapshot(
    path: str | os.PathLike[str],
    layout: str = "auto",
    db: TagDatabase | None = None,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
    view: str = VIEW_STATS,
) -> Snapshot:
    """Read a saved stats or tracker document, or scan a dump for the `view` asked;
    raises InputError for bad files. A saved document brings its own view."""
    with open_checked(path) as source:
        doc = read_saved(source)
        if doc is not None:
            return snapshot_from_document(source.path, doc)
        kind = text_kind(source.pread(0, HEAD_BYTES))
        if kind is not None:
            raise InputError(source.path, f"this is {kind}, {NEITHER}")
    image = open_image(path)
    try:
        prepared = prepare(image, layout, db)
        if image.format == "raw" and proves_nothing(prepared.detection.evidence):
            # A flat file proves it is memory only by its pool structure; without any,
            # every tag of the other side would read as growth (or as freed).
            counts = ", ".join(f"{k} {v}" for k, v in prepared.detection.evidence.items())
            raise InputError(
                image.path, f"no pool structure proven in the sampled pages ({counts}): {NEITHER}"
            )
        stats = TagStats()
        totals = TrackerTotals()
        for records in run(prepared, jobs=jobs, progress=progress, tracker=totals.add):
            stats.add(records)
        if view == VIEW_TRACKER:
            if not totals.found:
                raise InputError(image.path, "no pool tracker table found in this dump")
            snap = snapshot_from_tracker(image.path, prepared.metadata(), totals)
        else:
            snap = snapshot_from_stats(image.path, prepared.metadata(), stats)
        snap.warnings = prepared.warnings()
        return snap
    finally:
        image.close()


def mismatch(old: Snapshot, new: Snapshot) -> str | None:
    """A warning when the two sides come from different kinds of system, else None.

    Tags of an x86 and an x64 system, or of a legacy pool and a segment heap, differ in
    sizes and in which tags exist at all: their difference is not a leak. Compared only
    where both sides say (saved documents of every version carry `layout` and
    `architecture`, but a hand-made one may not).
    """
    differ = []
    for key in ("architecture", "layout"):
        a, b = old.meta.get(key), new.meta.get(key)
        if isinstance(a, str) and isinstance(b, str) and a != b:
            differ.append(f"{key} ({a} vs {b})")
    if not differ:
        return None
    return (
        f"{old.source} and {new.source} differ in {' and '.join(differ)}; "
        "their per-tag counts are not comparable like for like"
    )


DIFF_SORTS = ("bytes", "count", "tag")


def diff(
    old: Snapshot,
    new: Snapshot,
    describe: Callable[[str], Any] | None = None,
    sort: str = "bytes",
) -> list[DiffRow]:
    """Rows for every tag in either snapshot, largest growth first (or by tag)."""
    if old.view != new.view:
        raise InputError(
            new.source,
            f"a {new.view} view cannot be compared with the {old.view} view of {old.source}"
            + (
                "; --tracker compares the kernel's counters of a dump"
                if VIEW_TRACKER in (old.view, new.view)
                else ""
            ),
        )
    rows = []
    for tag in sorted(old.allocs.keys() | new.allocs.keys()):
        row = DiffRow(
            tag,
            old.allocs.get(tag, 0),
            new.allocs.get(tag, 0),
            old.bytes.get(tag, 0),
            new.bytes.get(tag, 0),
        )
        info = describe(tag) if describe else None
        if info is not None:
            row.owner, row.description = info.owner, info.description
        rows.append(row)
    keys = {
        "bytes": lambda r: (-r.delta_bytes, -r.delta_allocs, r.tag),
        "count": lambda r: (-r.delta_allocs, -r.delta_bytes, r.tag),
        "tag": lambda r: (r.tag,),
    }
    if sort not in keys:
        raise ValueError(f"unknown sort key {sort!r}; use one of {', '.join(DIFF_SORTS)}")
    return sorted(rows, key=keys[sort])
