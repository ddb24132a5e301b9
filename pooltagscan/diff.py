"""Per-tag growth between two snapshots, for pool-leak hunting in the PoolMon manner.

A snapshot is the per-tag statistics of one dump, either computed by scanning it or read
back from a saved `scan --stats --format json` document, so a baseline taken once can be
compared with many later dumps without rescanning it. The tracker view compares the
kernel's own counters instead (PoolTrackTable, `scan --tracker`), as PoolMon does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs import open_image
from pooltagscan.inputs.base import open_checked
from pooltagscan.inputs.sniff import HEAD_BYTES, text_kind
from pooltagscan.render.stats import STATS_KIND
from pooltagscan.scan import prepare, proves_nothing, run
from pooltagscan.scanner.engine import ProgressCallback
from pooltagscan.scanner.tracker import COUNTERS
from pooltagscan.stats import TagStats
from pooltagscan.tags.database import TagDatabase
from pooltagscan.tags.patterns import tag_from_bytes, tag_to_bytes
from pooltagscan.tracking import TRACKER_KIND, TrackerTotals

VIEW_STATS, VIEW_TRACKER = "stats", "tracker"
# What `diff` takes on either side, said when a file is neither.
NEITHER = (
    "not a memory dump nor a saved `scan --stats --format json` "
    "or `scan --tracker --format json` view"
)


@dataclass
class Snapshot:
    """Per-tag counters of one dump (`allocs` excludes free blocks, as `!poolused` does;
    in the tracker view, allocations outstanding by the kernel's count)."""

    source: str
    meta: dict[str, Any]
    allocs: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    view: str = VIEW_STATS
    # What the shells should warn about this side (the scan's own warnings, shared words).
    warnings: list[str] = field(default_factory=list)


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


# A saved statistics document of 10,000 tags is about 3 MiB; anything far larger is not one.
MAX_STATS_BYTES = 64 << 20
_COUNT_FIELDS = ("total_allocs", "free_allocs", "total_bytes", "free_bytes")
_MAX_COUNT = (1 << 63) - 1
_MAX_TAG_TEXT = 16  # four bytes, each at most `\xNN`
_BOM = b"\xef\xbb\xbf"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a count")


def _saved_stats(source: InputFile) -> dict[str, Any] | None:
    """The document if the file is a saved stats JSON file, None if it looks like a dump.

    The file is someone else's until proven ours: its size is bounded, it must be strict
    UTF-8 JSON (a UTF-8 byte-order mark, as PowerShell writes, is accepted), NaN and
    Infinity are refused, and nesting too deep for the parser is an error like any other.
    """
    path = source.path
    head = source.pread(0, 64)
    head = head.removeprefix(_BOM)
    if not head.lstrip().startswith(b"{"):
        return None
    if source.size > MAX_STATS_BYTES:
        raise InputError(path, f"{source.size} bytes is too large for a saved statistics file")
    data = source.pread(0, source.size)
    try:
        text = data.decode("utf-8-sig")
        doc = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a UTF-8 JSON statistics file (byte {exc.start})") from None
    except RecursionError:
        raise InputError(path, "not a valid JSON statistics file: it nests too deeply") from None
    except ValueError as exc:
        raise InputError(path, f"not a valid JSON statistics file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") not in (STATS_KIND, TRACKER_KIND):
        raise InputError(
            path,
            "JSON file is not a `pooltagscan scan --stats --format json` "
            "or `scan --tracker --format json` output",
        )
    return doc


def _count(path: str, row: int, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        shown = json.dumps(value)[:40] if not isinstance(value, float) else repr(value)
        raise InputError(path, f"statistics row {row}: {name} is {shown}, not a whole number")
    if not 0 <= value <= _MAX_COUNT:
        raise InputError(path, f"statistics row {row}: {name} {value} is out of range")
    return value


def _tag(path: str, row: int, value: Any) -> str:
    """The row's tag in the canonical text `scan` prints, or InputError."""
    if not isinstance(value, str):
        raise InputError(path, f"statistics row {row}: the tag is {type(value).__name__}, not text")
    if len(value) > _MAX_TAG_TEXT:
        raise InputError(path, f"statistics row {row}: a tag of {len(value)} characters")
    try:
        value.encode("utf-8")
        return tag_from_bytes(tag_to_bytes(value))[0]
    except (UnicodeEncodeError, ValueError):
        shown = value.encode("ascii", "backslashreplace").decode()
        raise InputError(path, f"statistics row {row}: {shown!r} is not a pool tag") from None


def snapshot_from_tracker_document(path: str, doc: dict[str, Any]) -> Snapshot:
    """Outstanding counts of a saved tracker view, every field checked."""
    rows = doc.get("tags")
    if not isinstance(rows, list):
        raise InputError(path, "tracker file lacks its list of tags")
    meta = {
        k: v for k, v in doc.items() if k not in ("tags", "cut_tags") and isinstance(v, (str, int))
    }
    snap = Snapshot(path, meta, view=VIEW_TRACKER)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise InputError(path, f"tracker row {number} is not an object")
        missing = [f for f in ("tag", *COUNTERS) if f not in row]
        if missing:
            raise InputError(path, f"tracker row {number} lacks field {missing[0]!r}")
        tag = _tag(path, number, row["tag"])
        c = {f: _count(path, number, f, row[f]) for f in COUNTERS}
        if c["nonpaged_frees"] > c["nonpaged_allocs"] or c["paged_frees"] > c["paged_allocs"]:
            raise InputError(path, f"tracker row {number}: more frees than allocations")
        if tag in snap.allocs:
            raise InputError(path, f"tracker row {number}: tag {tag!r} appears twice")
        snap.allocs[tag] = (
            c["nonpaged_allocs"] - c["nonpaged_frees"] + c["paged_allocs"] - c["paged_frees"]
        )
        snap.bytes[tag] = c["nonpaged_bytes"] + c["paged_bytes"]
    return snap


def snapshot_from_tracker(source: str, meta: dict[str, Any], totals: TrackerTotals) -> Snapshot:
    snap = Snapshot(source, meta, view=VIEW_TRACKER)
    for row in totals.rows(sort="tag"):
        snap.allocs[row.tag] = row.live
        snap.bytes[row.tag] = row.live_bytes
    return snap


def snapshot_from_document(path: str, doc: dict[str, Any]) -> Snapshot:
    """Per-tag counters of a saved statistics (or tracker) document, every field checked."""
    if doc.get("kind") == TRACKER_KIND:
        return snapshot_from_tracker_document(path, doc)
    rows = doc.get("tags")
    if not isinstance(rows, list):
        raise InputError(path, "statistics file lacks its list of tags")
    meta = {
        k: v for k, v in doc.items() if k not in ("tags", "totals") and isinstance(v, (str, int))
    }
    snap = Snapshot(path, meta)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise InputError(path, f"statistics row {number} is not an object")
        missing = [f for f in ("tag", *_COUNT_FIELDS) if f not in row]
        if missing:
            raise InputError(path, f"statistics row {number} lacks field {missing[0]!r}")
        tag = _tag(path, number, row["tag"])
        total, free, total_bytes, free_bytes = (
            _count(path, number, f, row[f]) for f in _COUNT_FIELDS
        )
        if free > total or free_bytes > total_bytes:
            raise InputError(path, f"statistics row {number}: more free blocks than blocks")
        if tag in snap.allocs:
            raise InputError(path, f"statistics row {number}: tag {tag!r} appears twice")
        snap.allocs[tag] = total - free
        snap.bytes[tag] = total_bytes - free_bytes
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
        doc = _saved_stats(source)
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
