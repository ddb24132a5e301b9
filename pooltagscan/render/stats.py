"""The per-tag statistics view (`scan --stats`): its records, its table and legend.

The JSON document is the saved-statistics schema that `diff` and `report --baseline`
read back: it lives with the statistics (pooltagscan.stats_document), and this view only
hands it to the json writer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pooltagscan.render.view import Column, Table, View
from pooltagscan.render.writers import render_table
from pooltagscan.stats import COLUMNS, TRACKER_COLUMNS, TagRow
from pooltagscan.stats_document import stats_document
from pooltagscan.summary import ScanSummary

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


class StatsView(View):
    """The per-tag statistics of one dump: the document `diff` reads back, one record
    per tag, and the `!poolused`-like table."""

    fields = ("tag", *COLUMNS, *TRACKER_COLUMNS, "owner", "description")

    def __init__(
        self,
        rows: list[TagRow],
        totals: dict[str, int],
        meta: dict[str, Any],
        summary: ScanSummary | None = None,
        dump: str | None = None,
    ) -> None:
        """`dump` names the dump on every record (and above the table) when a run
        scans several; the JSON document names its dump anyway."""
        super().__init__(rows, {"dump": dump} if dump is not None else None, dump)
        self.totals, self.meta, self.summary = totals, meta, summary

    def records(self, row: TagRow) -> Iterable[dict[str, Any]]:
        return (row.as_dict(),)

    def document(self) -> dict[str, Any]:
        return stats_document(list(self.rows), self.totals, self.meta, self.summary)

    def table(self) -> Table:
        return _stats_table(list(self.rows), self.totals)


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
    """The table of `scan --stats` as text (without its last newline)."""
    return render_table(_stats_table(rows, totals))[:-1]


def _stats_table(rows: list[TagRow], totals: dict[str, int]) -> Table:
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
    columns = [Column(h, r, widths.get(i)) for i, (h, r) in enumerate(zip(headers, right))]
    legend = TABLE_LEGEND + (TRACKER_LEGEND if tracked else ())
    return Table(columns, body, preamble=(*legend, ""))


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
