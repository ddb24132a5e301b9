"""Renderers of the tracker view (`scan --tracker`): PoolMon's columns, offline."""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

from pooltagscan.render.table import format_table
from pooltagscan.scanner.tracker import COUNTERS
from pooltagscan.tracking import TrackerRow, TrackerTotals

POOL_TYPES = (("nonpaged", "Nonp"), ("paged", "Paged"))


def write_tracker(
    fmt: str,
    out: TextIO,
    totals: TrackerTotals,
    rows: list[TrackerRow],
    meta: dict[str, Any],
    dump: str | None = None,
) -> None:
    """`dump` names the dump on every row when a run scans several."""
    lead = {"dump": dump} if dump is not None else {}
    if fmt == "json":
        json.dump(totals.document(rows, meta), out, indent=1)
        out.write("\n")
    elif fmt == "jsonl":
        out.writelines(json.dumps({**lead, **r.as_dict()}) + "\n" for r in rows)
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*lead, "tag", *COUNTERS, "owner", "description"])
        writer.writerows(
            [*lead.values(), r.tag, *(r.counters[c] for c in COUNTERS), r.owner, r.description]
            for r in rows
        )
    else:
        if dump is not None:
            out.write(f"== {dump}\n")
        out.write(tracker_table(totals, rows) + "\n")


def tracker_table(totals: TrackerTotals, rows: list[TrackerRow]) -> str:
    """One line per tag and pool type in use, as PoolMon prints them."""
    if not totals.found:
        return "no pool tracker table found in this dump"
    body = []
    for r in rows:
        for pool, name in POOL_TYPES:
            allocs, frees = r.counters[f"{pool}_allocs"], r.counters[f"{pool}_frees"]
            if not allocs and not frees:
                continue
            live, nbytes = allocs - frees, r.counters[f"{pool}_bytes"]
            per = nbytes // live if live else 0
            body.append((r.tag, name, allocs, frees, live, nbytes, per, r.owner))
    headers = ("Tag", "Type", "Allocs", "Frees", "Diff", "Bytes", "Per Alloc", "Owner")
    right = [False, False, True, True, True, True, True, False]
    note = (
        f"kernel pool tracker table: {totals.pages} page(s) found; Diff = allocations "
        "outstanding when the dump was taken"
    )
    cut = totals.cut_tags()
    if cut:
        note += f"; {len(cut)} tag(s) cut by a page boundary, counts unknown: " + ", ".join(
            sorted(cut)
        )
    return note + "\n" + format_table(headers, body, right, max_width={7: 24})
