"""Fleet questions over a store: stacking, hunting, growth against a baseline.

Only dumps whose scan succeeded are counted, and each view says how many failed: a
tag absent from the fleet's answer may be on a host whose dump could not be read, and
an analyst must know that before concluding anything.

- stack: tags ranked by how few dumps hold them (the rare ones are the suspicious
  ones), with the live counts and bytes on each dump. A dump holds a tag when its scan
  found a block of it, free ones included (a freed block is a trace too);
  `min_confidence` counts only blocks of that confidence or better, which keeps the
  isolated low-confidence headers that random bytes produce out of the rare tags.
- hunt: every (dump, tag) whose tag matches the patterns of `scan --tag`.
- diff: every dump's live allocations and bytes per tag against one baseline dump, in
  the words and columns of `pooltagscan diff`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pooltagscan.diff import DiffRow
from pooltagscan.errors import InputError
from pooltagscan.fleet.store import STATUS_OK, FleetStore
from pooltagscan.tags.patterns import TagMatcher

CONFIDENCE_COLUMNS = {
    "low": ("high_confidence", "medium_confidence", "low_confidence"),
    "medium": ("high_confidence", "medium_confidence"),
    "high": ("high_confidence",),
}


@dataclass
class Fleet:
    """A store's successful dumps and their stats rows, read once."""

    path: str
    dumps: list[dict[str, Any]]  # provenance rows of every dump, failed ones too
    stats: list[dict[str, Any]]

    @classmethod
    def load(cls, path: str) -> Fleet:
        store = FleetStore(path)
        store.check_readable()
        dumps = store.dumps()
        return cls(path, dumps, store.stats(dumps))

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [d for d in self.dumps if d["status"] == STATUS_OK]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [d for d in self.dumps if d["status"] != STATUS_OK]

    def header(self) -> dict[str, Any]:
        """What every view's json says about the fleet it answers for."""
        return {
            "fleet": self.path,
            "dumps": len(self.ok),
            "failed": [{"path": d["path"], "error": d["error"]} for d in self.failed],
        }


@dataclass
class StackRow:
    tag: str
    dumps: int
    share: float
    live_allocs: int
    live_bytes: int
    free_allocs: int
    owner: str
    description: str
    per_dump: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "dumps": self.dumps,
            "share": self.share,
            "live_allocs": self.live_allocs,
            "live_bytes": self.live_bytes,
            "free_allocs": self.free_allocs,
            "owner": self.owner,
            "description": self.description,
            "per_dump": self.per_dump,
        }


def stack(
    fleet: Fleet, max_hosts: int | None = None, min_confidence: str = "low"
) -> list[StackRow]:
    """Tags by how few dumps hold them, then by tag; `max_hosts` keeps the rarer ones."""
    wanted = CONFIDENCE_COLUMNS[min_confidence]
    total = len(fleet.ok)
    by_tag: dict[str, StackRow] = {}
    for row in fleet.stats:
        if not any(row[c] for c in wanted):
            continue
        entry = by_tag.get(row["tag"])
        if entry is None:
            entry = by_tag[row["tag"]] = StackRow(
                row["tag"], 0, 0.0, 0, 0, 0, row["owner"], row["description"]
            )
        entry.dumps += 1
        entry.live_allocs += row["live_allocs"]
        entry.live_bytes += row["live_bytes"]
        entry.free_allocs += row["free_allocs"]
        entry.per_dump.append(
            {
                "dump": row["path"],
                "live_allocs": row["live_allocs"],
                "live_bytes": row["live_bytes"],
                "free_allocs": row["free_allocs"],
            }
        )
    rows = [r for r in by_tag.values() if max_hosts is None or r.dumps <= max_hosts]
    for r in rows:
        r.share = round(r.dumps / total, 6) if total else 0.0
        r.per_dump.sort(key=lambda d: (-d["live_bytes"], d["dump"]))
    return sorted(rows, key=lambda r: (r.dumps, r.tag))


HUNT_FIELDS = (
    "dump",
    "tag",
    "live_allocs",
    "live_bytes",
    "nonpaged_allocs",
    "paged_allocs",
    "free_allocs",
    "big_allocs",
    "high_confidence",
    "medium_confidence",
    "low_confidence",
    "owner",
    "description",
)


def hunt(fleet: Fleet, patterns: list[str]) -> list[dict[str, Any]]:
    """Rows of the dumps holding a tag that matches one of `patterns` (ValueError on a
    bad pattern), by dump then tag."""
    matcher = TagMatcher(patterns)
    found = [
        {"dump": r["path"], **{k: r[k] for k in HUNT_FIELDS[1:]}}
        for r in fleet.stats
        if matcher.matches(r["tag"])
    ]
    return sorted(found, key=lambda r: (r["dump"], r["tag"]))


def find_dump(fleet: Fleet, name: str) -> dict[str, Any]:
    """The successful dump `name` designates: its path (as given or absolute), its
    dump_id, or a file name only one dump has. InputError otherwise."""
    ok = fleet.ok
    absolute = os.path.abspath(name)
    for d in ok:
        if name in (d["path"], d["dump_id"]) or absolute == d["path"]:
            return d
    named = [d for d in ok if os.path.basename(d["path"]) == name]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise InputError(name, f"{len(named)} dumps of the fleet have this name; give its path")
    failed = [d for d in fleet.failed if absolute == d["path"] or d["path"].endswith(name)]
    if failed:
        raise InputError(name, f"this dump's scan failed ({failed[0]['error']}); no baseline")
    raise InputError(name, f"no dump of the fleet {fleet.path} is this one (see `fleet stack`)")


def diff(
    fleet: Fleet, baseline: str, changed_only: bool = True, top: int | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(baseline provenance, rows): each other dump's live allocations and bytes per tag
    against the baseline's (free blocks are not allocations, as in `pooltagscan diff`),
    by dump, then by growth in bytes; `top` keeps each dump's first rows."""
    base = find_dump(fleet, baseline)
    by_dump: dict[str, dict[str, dict[str, Any]]] = {}
    for row in fleet.stats:
        by_dump.setdefault(row["dump_id"], {})[row["tag"]] = row
    old = by_dump.get(base["dump_id"], {})
    rows: list[dict[str, Any]] = []
    for d in fleet.ok:
        if d["dump_id"] == base["dump_id"]:
            continue
        new = by_dump.get(d["dump_id"], {})
        mine = []
        for tag in sorted(set(old) | set(new)):
            a, b = old.get(tag), new.get(tag)
            about = b or a
            item = DiffRow(
                tag,
                a["live_allocs"] if a else 0,
                b["live_allocs"] if b else 0,
                a["live_bytes"] if a else 0,
                b["live_bytes"] if b else 0,
                about["owner"],
                about["description"],
            )
            if changed_only and not (item.delta_allocs or item.delta_bytes):
                continue
            mine.append(item)
        mine.sort(key=lambda r: (-r.delta_bytes, -r.delta_allocs, r.tag))
        rows.extend({"dump": d["path"], **r.as_dict()} for r in mine[:top])
    return base, rows
