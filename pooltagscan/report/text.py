"""The view of the attribution report: text (fits a 100-column terminal), JSON and CSV."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pooltagscan.render.view import Column, Table, View
from pooltagscan.render.writers import render_table
from pooltagscan.report.model import (
    ATTRIBUTED,
    KNOWN,
    UNCONFIRMED,
    UNKNOWN,
    Report,
    ReportRow,
)

WIDTH = 100


def _pools(row: ReportRow) -> str:
    c = row.counters
    parts = [name for name, key in (("NP", "nonpaged_allocs"), ("P", "paged_allocs")) if c[key]]
    return "+".join(parts) or "free"


def _who(row: ReportRow) -> str:
    if row.candidates:
        first = row.candidates[0].driver
        more = len({c.driver for c in row.candidates}) - 1
        return first + (f" +{more}" if more else "")
    return row.owner or "?"


def _human(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


CSV_FIELDS = (
    "tag",
    "status",
    "allocs",
    "bytes",
    "nonpaged_allocs",
    "paged_allocs",
    "free_allocs",
    "growth_allocs",
    "growth_bytes",
    "owner",
    "description",
    "candidate_drivers",
    "undecided",
    "low_confidence",
    "small_bytes",
    "big_bytes",
)


class ReportView(View):
    """Every tag of the dump with its likely owner: the whole report as JSON, one csv row
    per tag, or a text of fixed columns under the dump's particulars."""

    fields = CSV_FIELDS

    def __init__(self, report: Report, width: int = WIDTH) -> None:
        super().__init__(report.rows)
        self.report, self.width = report, width

    def document(self) -> dict[str, Any]:
        return self.report.as_dict()

    def csv_rows(self, row: ReportRow) -> Iterable[Sequence[Any]]:
        c = row.counters
        return (
            [
                row.tag,
                row.status,
                row.allocs,
                row.bytes,
                c["nonpaged_allocs"],
                c["paged_allocs"],
                c["free_allocs"],
                row.growth_allocs,
                row.growth_bytes,
                row.owner,
                row.description,
                ";".join(f"{x.driver}:{x.api}:{x.confidence}" for x in row.candidates),
                c.get("undecided", 0),
                c.get("low_confidence", 0),
                c.get("small_bytes", 0),
                c.get("big_bytes", 0),
            ],
        )

    def table(self) -> Table:
        """Fits `width` columns: the description takes what the others leave."""
        report, m = self.report, self.report.meta
        counts = {
            s: sum(r.status == s for r in report.rows)
            for s in (ATTRIBUTED, UNKNOWN, KNOWN, UNCONFIRMED)
        }
        head = [
            f"Dump     {m['dump']}",
            (
                f"         {m['format']}, {m.get('architecture') or 'architecture unknown'}, "
                f"layout {m['layout']}, {m['scanned_bytes'] / 2**20:.1f} MiB scanned in "
                f"{m['scan_seconds']:.1f} s"
            ),
            f"sha256   {m['sha256']}",
            (
                f"Tags     {len(report.rows)}: {counts[ATTRIBUTED]} attributed to a scanned "
                f"driver, {counts[UNKNOWN]} unknown, {counts[KNOWN]} in the tag database,"
            ),
            (
                f"         {counts[UNCONFIRMED]} unconfirmed (unknown, seen only in "
                "low-confidence records)"
            ),
            f"Drivers  {len(report.drivers)} analysed"
            + (f", {len(report.problems)} problem(s)" if report.problems else ""),
            "",
        ]
        growth = any(r.growth_allocs is not None for r in report.rows)
        cols = [
            Column("Tag", width=10),
            Column("Status", width=11),
            Column("Allocs", right=True, width=7),
            Column("Bytes", right=True, width=8),
            Column("Pool", width=4),
        ]
        if growth:
            cols.append(Column("Growth", right=True, width=8))
        cols.append(Column("Owner/driver", width=18))
        used = sum(c.width or 0 for c in cols) + 2 * len(cols)
        cols.append(Column("Description", width=max(10, self.width - used)))
        body = []
        for r in report.rows:
            cells = [r.tag, r.status, str(r.allocs), _human(r.bytes), _pools(r)]
            if growth:
                cells.append(f"{r.growth_allocs:+d}")
            cells += [_who(r), r.description]
            body.append(cells)
        return Table(cols, body, preamble=head, postscript=hidden_lines(report), fixed=True)


def hidden_lines(report: Report) -> list[str]:
    """The report --objects section: processes and drivers found only in freed or
    unlinked blocks, one line each."""
    if report.hidden is None:
        return []
    from pooltagscan.render.records import object_summary

    lines = ["", "Processes and drivers found only in freed or unlinked blocks"]
    for kind, label in (("processes", "process"), ("drivers", "driver")):
        for row in report.hidden[kind]:
            where = ", ".join(f"{o:#x}" for o in row["offsets"])
            text = object_summary({"object": label, **row})
            lines.append(f"  {'/'.join(row['found_in']):<9} {text} at {where}")
    if len(lines) == 2:
        lines.append("  none")
    return lines


def text_report(report: Report, width: int = WIDTH) -> str:
    """The report as text (without its last newline)."""
    return render_table(ReportView(report, width).table())[:-1]
