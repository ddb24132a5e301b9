"""Renderers of the per-tag statistics view (`scan --stats`)."""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

from pooltagscan.render.table import format_table
from pooltagscan.stats import COLUMNS, TagRow
from pooltagscan.summary import ScanSummary

STATS_KIND = "pooltagscan-stats"
# Version 1 still: later keys (the new counters, `summary`) were only added, and `diff`
# reads documents of every version by the original nine counters.
STATS_VERSION = 1

# Said above the table, not in a footer: a reader meets the columns before the rows.
TABLE_LEGEND = (
    (
        "Live = allocated + undecided. NP/P Allocs and Bytes count live blocks; "
        "Free counts freed blocks apart."
    ),
    (
        "Undecided: live blocks whose state the dump cannot tell (segment-heap LFH blocks, "
        "VS headers with no"
    ),
    (
        "proven predecessor). Big Bytes: live bytes of big-pool allocations "
        "(from the big-page table)."
    ),
)


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


def write_stats(
    fmt: str,
    out: TextIO,
    rows: list[TagRow],
    totals: dict[str, int],
    meta: dict[str, Any],
    summary: ScanSummary | None = None,
) -> None:
    if fmt == "json":
        json.dump(stats_document(rows, totals, meta, summary), out, indent=1)
        out.write("\n")
    elif fmt == "jsonl":
        out.writelines(json.dumps(r.as_dict()) + "\n" for r in rows)
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["tag", *COLUMNS, "owner", "description"])
        writer.writerows(
            [r.tag, *(r.counters[c] for c in COLUMNS), r.owner, r.description] for r in rows
        )
    else:
        out.write(stats_table(rows, totals) + "\n")


# (heading, counter) of the table; csv and json carry every counter.
TABLE_COLUMNS = (
    ("NP Allocs", "nonpaged_allocs"),
    ("NP Bytes", "nonpaged_bytes"),
    ("P Allocs", "paged_allocs"),
    ("P Bytes", "paged_bytes"),
    ("Free", "free_allocs"),
    ("Undecided", "undecided"),
    ("Big Bytes", "big_bytes"),
)


def stats_table(rows: list[TagRow], totals: dict[str, int]) -> str:
    """The `!poolused`-like table, under the legend that defines its words; fits about
    120 columns (owner and description are cut), so some counters are left to csv/json."""
    headers = ("Tag", *(h for h, _ in TABLE_COLUMNS), "Owner", "Description")
    body: list[tuple[Any, ...]] = [
        (r.tag, *(r.counters[k] for _, k in TABLE_COLUMNS), r.owner, r.description) for r in rows
    ]
    body.append(("TOTAL", *(totals[k] for _, k in TABLE_COLUMNS), "", f"{len(rows)} tags"))
    n = len(TABLE_COLUMNS)
    right = [False] + [True] * n + [False, False]
    table = format_table(headers, body, right, max_width={n + 1: 12, n + 2: 28})
    return "\n".join(TABLE_LEGEND) + "\n\n" + table


def summary_line(summary: ScanSummary) -> str:
    """The summary of `scan --stats` in one line (the CLI prints it on stderr)."""
    return (
        f"{summary.records:,} records, {summary.bytes:,} bytes in {summary.seconds:.2f} s; "
        f"pool pages {summary.pool_pages:,} of {summary.scanned_pages:,} scanned "
        f"({100 * summary.pool_page_share:.1f}%)"
    )
