"""The saved statistics: the `scan --stats --format json` document and its reader.

`diff` and `report --baseline` take a dump or a saved view on either side, so a baseline
taken once is compared with many later dumps without rescanning it. The document is a
contract between the run that wrote it and the runs that read it, maybe another
version's: its schema lives here, next to the statistics it carries, and not in a
renderer. The reader treats a file as someone else's until proven ours: every field is
checked and a bad one is an InputError naming the row. Saved tracker views
(`scan --tracker --format json`, written by tracking.TrackerTotals.document) are read here
too, since `diff` takes them the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.scanner.tracker import COUNTERS
from pooltagscan.stats import TagRow
from pooltagscan.summary import ScanSummary
from pooltagscan.tags.patterns import tag_from_bytes, tag_to_bytes
from pooltagscan.tracking import TRACKER_KIND

STATS_KIND = "pooltagscan-stats"
# Version 1 still: later keys (the new counters, `summary`) were only added, and `diff`
# reads documents of every version by the original nine counters.
STATS_VERSION = 1

VIEW_STATS, VIEW_TRACKER = "stats", "tracker"


def stats_document(
    rows: list[TagRow],
    totals: dict[str, int],
    meta: dict[str, Any],
    summary: ScanSummary | None = None,
) -> dict:
    """The JSON form; `diff` reads it back, so its keys are a contract too."""
    doc = {
        "kind": STATS_KIND,
        "version": STATS_VERSION,
        **meta,
    }
    if summary is not None:
        doc["summary"] = summary.as_dict()
    doc["totals"] = totals
    doc["tags"] = [r.as_dict() for r in rows]
    return doc


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


# A saved statistics document of 10,000 tags is about 3 MiB; anything far larger is not one.
MAX_STATS_BYTES = 64 << 20
_COUNT_FIELDS = ("total_allocs", "free_allocs", "total_bytes", "free_bytes")
_MAX_COUNT = (1 << 63) - 1
_MAX_TAG_TEXT = 16  # four bytes, each at most `\xNN`
_BOM = b"\xef\xbb\xbf"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a count")


def read_saved(source: InputFile) -> dict[str, Any] | None:
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
