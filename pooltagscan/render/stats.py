"""Renderers of the per-tag statistics view (`scan --stats`)."""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

from pooltagscan.render.table import format_table
from pooltagscan.stats import COLUMNS, TRACKER_COLUMNS, TagRow
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


class StatsWriter:
    """Writes the statistics of one dump after another to one output.

    With several dumps (`several`), every row says which dump it belongs to: a leading
    `dump` field in jsonl and csv (whose header is written once), a `== DUMP` line above
    each table; json writes one document per dump, which names its dump anyway.
    """

    def __init__(self, fmt: str, out: TextIO, several: bool = False):
        self.fmt, self.out, self.several = fmt, out, several
        self._csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        self._header = False

    def write(
        self,
        rows: list[TagRow],
        totals: dict[str, int],
        meta: dict[str, Any],
        summary: ScanSummary | None = None,
    ) -> None:
        lead = {"dump": meta.get("dump", "")} if self.several else {}
        if self.fmt == "json":
            json.dump(stats_document(rows, totals, meta, summary), self.out, indent=1)
            self.out.write("\n")
        elif self.fmt == "jsonl":
            self.out.writelines(json.dumps({**lead, **r.as_dict()}) + "\n" for r in rows)
        elif self._csv is not None:
            if not self._header:
                self._csv.writerow(
                    [*lead, "tag", *COLUMNS, *TRACKER_COLUMNS, "owner", "description"]
                )
                self._header = True
            self._csv.writerows(
                [
                    *lead.values(),
                    r.tag,
                    *(r.counters[c] for c in COLUMNS),
                    *_csv_tracker(r),
                    r.owner,
                    r.description,
                ]
                for r in rows
            )
        else:
            if self.several:
                self.out.write(f"== {meta.get('dump', '')}\n")
            self.out.write(stats_table(rows, totals) + "\n")

    def finish(self) -> None:
        """Called once after the last dump (nothing is held back)."""


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


def _csv_tracker(row: TagRow) -> list[Any]:
    t = row.tracker or {}
    return ["" if t.get(c) is None else t[c] for c in TRACKER_COLUMNS]


TRACKER_LEGEND = (
    (
        "Kernel: allocations outstanding by the kernel's own count (PoolTrackTable); "
        "Seen: live blocks / Kernel;"
    ),
    (
        "Flag: exceeds = more blocks proven allocated than the kernel counts, untracked = "
        "blocks of a tag it lacks."
    ),
)


def stats_table(rows: list[TagRow], totals: dict[str, int]) -> str:
    """The `!poolused`-like table, under the legend that defines its words; fits about
    120 columns (owner and description are cut), so some counters are left to csv/json.
    With a tracker table in the dump, the kernel's count of each tag stands beside it."""
    tracked = any(r.tracker for r in rows)
    headers = ("Tag", *(h for h, _ in TABLE_COLUMNS))
    body: list[tuple[Any, ...]] = [
        (r.tag, *(r.counters[k] for _, k in TABLE_COLUMNS)) for r in rows
    ]
    total: tuple[Any, ...] = ("TOTAL", *(totals[k] for _, k in TABLE_COLUMNS))
    if tracked:
        headers += ("Kernel", "Seen", "Flag")
        body = [row + _tracker_cells(r) for row, r in zip(body, rows)]
        total += ("", "", "")
        # The kernel's columns take the description's room (csv and json keep it).
        headers += ("Owner",)
        body = [row + (r.owner,) for row, r in zip(body, rows)]
        body.append(total + (f"{len(rows)} tags",))
        right = [False] + [True] * (len(headers) - 4) + [False, False, False]
        widths = {len(headers) - 1: 16}
    else:
        headers += ("Owner", "Description")
        body = [row + (r.owner, r.description) for row, r in zip(body, rows)]
        body.append(total + ("", f"{len(rows)} tags"))
        right = [False] + [True] * (len(headers) - 3) + [False, False]
        widths = {len(headers) - 2: 12, len(headers) - 1: 28}
    table = format_table(headers, body, right, max_width=widths)
    legend = TABLE_LEGEND + (TRACKER_LEGEND if tracked else ())
    return "\n".join(legend) + "\n\n" + table


def _tracker_cells(row: TagRow) -> tuple[str, str, str]:
    t = row.tracker
    if not t:
        return ("", "", "")
    live = "" if t["tracker_live"] is None else str(t["tracker_live"])
    share = "" if t["tracked_share"] is None else f"{100 * t['tracked_share']:.0f}%"
    flag = {"exceeds-tracker": "exceeds", "tracker-entry-cut": "cut"}.get(
        t["tracker_flag"], t["tracker_flag"]
    )
    return (live, share, flag)


def summary_line(summary: ScanSummary) -> str:
    """The summary of `scan --stats` in one line (the CLI prints it on stderr)."""
    return (
        f"{summary.records:,} records, {summary.bytes:,} bytes in {summary.seconds:.2f} s; "
        f"pool pages {summary.pool_pages:,} of {summary.scanned_pages:,} scanned "
        f"({100 * summary.pool_page_share:.1f}%)"
    )
