"""Per-tag growth between two snapshots, for pool-leak hunting in the PoolMon manner.

A snapshot is the per-tag statistics of one dump, either computed by scanning it or read
back from a saved `scan --stats --format json` document, so a baseline taken once can be
compared with many later dumps without rescanning it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pooltagscan.errors import InputError
from pooltagscan.inputs import open_image
from pooltagscan.inputs.base import open_checked
from pooltagscan.render.stats import STATS_KIND
from pooltagscan.scan import prepare, run
from pooltagscan.scanner.engine import ProgressCallback
from pooltagscan.stats import TagStats
from pooltagscan.tags.database import TagDatabase


@dataclass
class Snapshot:
    """Per-tag counters of one dump (`allocs` excludes free blocks, as `!poolused` does)."""

    source: str
    meta: dict[str, Any]
    allocs: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)


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


def _saved_stats(path: str) -> dict[str, Any] | None:
    """The document if `path` is a saved stats JSON file, None if it looks like a dump."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if not head.startswith(b"{"):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a valid JSON statistics file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != STATS_KIND:
        raise InputError(path, "JSON file is not a `pooltagscan scan --stats --format json` output")
    return doc


def load_snapshot(
    path: str | os.PathLike[str],
    layout: str = "auto",
    db: TagDatabase | None = None,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
) -> Snapshot:
    """Read a saved stats document or scan a dump; raises InputError for bad files."""
    path, _ = open_checked(path)
    doc = _saved_stats(path)
    if doc is not None:
        snap = Snapshot(path, {k: v for k, v in doc.items() if k not in ("tags", "totals")})
        try:
            for row in doc["tags"]:
                snap.allocs[row["tag"]] = row["total_allocs"] - row["free_allocs"]
                snap.bytes[row["tag"]] = row["total_bytes"] - row["free_bytes"]
        except (KeyError, TypeError) as exc:
            raise InputError(path, f"statistics file lacks field {exc}") from None
        return snap
    image = open_image(path)
    prepared = prepare(image, layout, db)
    stats = TagStats()
    for records in run(prepared, jobs=jobs, progress=progress):
        stats.add(records)
    return snapshot_from_stats(image.path, prepared.metadata(), stats)


DIFF_SORTS = ("bytes", "count", "tag")


def diff(
    old: Snapshot,
    new: Snapshot,
    describe: Callable[[str], Any] | None = None,
    sort: str = "bytes",
) -> list[DiffRow]:
    """Rows for every tag in either snapshot, largest growth first (or by tag)."""
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
