"""Renderers of the per-tag statistics view (`scan --stats`)."""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

from pooltagscan.render.table import format_table
from pooltagscan.stats import COLUMNS, TagRow

STATS_KIND = "pooltagscan-stats"
STATS_VERSION = 1


def stats_document(rows: list[TagRow], totals: dict[str, int], meta: dict[str, Any]) -> dict:
    """The JSON form; `diff` reads it back, so its keys are a contract too."""
    return {
        "kind": STATS_KIND,
        "version": STATS_VERSION,
        **meta,
        "totals": totals,
        "tags": [r.as_dict() for r in rows],
    }


def write_stats(
    fmt: str, out: TextIO, rows: list[TagRow], totals: dict[str, int], meta: dict[str, Any]
) -> None:
    if fmt == "json":
        json.dump(stats_document(rows, totals, meta), out, indent=1)
        out.write("\n")
    elif fmt == "jsonl":
        out.writelines(json.dumps(r.as_dict()) + "\n" for r in rows)
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["tag", *COLUMNS, "owner", "description"])
        writer.writerows([r.tag, *r.counters.values(), r.owner, r.description] for r in rows)
    else:
        out.write(stats_table(rows, totals) + "\n")


def stats_table(rows: list[TagRow], totals: dict[str, int]) -> str:
    headers = (
        "Tag",
        "NP Allocs",
        "NP Bytes",
        "P Allocs",
        "P Bytes",
        "Free",
        "Free Bytes",
        "Owner",
        "Description",
    )
    body = [
        (
            r.tag,
            c["nonpaged_allocs"],
            c["nonpaged_bytes"],
            c["paged_allocs"],
            c["paged_bytes"],
            c["free_allocs"],
            c["free_bytes"],
            r.owner,
            r.description,
        )
        for r in rows
        for c in (r.counters,)
    ]
    t = totals
    body.append(
        (
            "TOTAL",
            t["nonpaged_allocs"],
            t["nonpaged_bytes"],
            t["paged_allocs"],
            t["paged_bytes"],
            t["free_allocs"],
            t["free_bytes"],
            "",
            f"{len(rows)} tags",
        )
    )
    right = [False] + [True] * 6 + [False, False]
    return format_table(headers, body, right, max_width={7: 14, 8: 40})
