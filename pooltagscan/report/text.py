"""The report as text (fits a 100-column terminal), JSON and CSV."""

from __future__ import annotations

import csv
import json
from typing import TextIO

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


def text_report(report: Report, width: int = WIDTH) -> str:
    m = report.meta
    counts = {
        s: sum(r.status == s for r in report.rows)
        for s in (ATTRIBUTED, UNKNOWN, KNOWN, UNCONFIRMED)
    }
    head = [
        f"Dump     {m['dump']}",
        (
            f"         {m['format']}, {m.get('architecture') or 'architecture unknown'}, layout "
            f"{m['layout']}, {m['scanned_bytes'] / 2**20:.1f} MiB scanned in {m['scan_seconds']:.1f} s"
        ),
        f"sha256   {m['sha256']}",
        (
            f"Tags     {len(report.rows)}: {counts[ATTRIBUTED]} attributed to a scanned driver, "
            f"{counts[UNKNOWN]} unknown, {counts[KNOWN]} in the tag database,"
        ),
        f"         {counts[UNCONFIRMED]} unconfirmed (unknown, seen only in low-confidence records)",
        f"Drivers  {len(report.drivers)} analysed"
        + (f", {len(report.problems)} problem(s)" if report.problems else ""),
        "",
    ]
    growth = any(r.growth_allocs is not None for r in report.rows)
    cols = [
        ("Tag", 10, "<"),
        ("Status", 11, "<"),
        ("Allocs", 7, ">"),
        ("Bytes", 8, ">"),
        ("Pool", 4, "<"),
    ]
    if growth:
        cols.append(("Growth", 8, ">"))
    cols.append(("Owner/driver", 18, "<"))
    used = sum(w for _, w, _ in cols) + 2 * len(cols)
    cols.append(("Description", max(10, width - used), "<"))

    def line(cells: list[str]) -> str:
        out = []
        for text, (_, w, align) in zip(cells, cols):
            text = text if len(text) <= w else text[: w - 1] + "…"
            out.append(f"{text:{align}{w}}")
        return "  ".join(out).rstrip()

    body = [line([name for name, _, _ in cols]), line(["-" * w for _, w, _ in cols])]
    for r in report.rows:
        cells = [r.tag, r.status, str(r.allocs), _human(r.bytes), _pools(r)]
        if growth:
            cells.append(f"{r.growth_allocs:+d}")
        cells += [_who(r), r.description]
        body.append(line(cells))
    return "\n".join(head + body)


def write_report(fmt: str, out: TextIO, report: Report) -> None:
    if fmt == "json":
        json.dump(report.as_dict(), out, indent=1)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            [
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
            ]
        )
        for r in report.rows:
            c = r.counters
            writer.writerow(
                [
                    r.tag,
                    r.status,
                    r.allocs,
                    r.bytes,
                    c["nonpaged_allocs"],
                    c["paged_allocs"],
                    c["free_allocs"],
                    r.growth_allocs,
                    r.growth_bytes,
                    r.owner,
                    r.description,
                    ";".join(f"{x.driver}:{x.api}:{x.confidence}" for x in r.candidates),
                    c.get("undecided", 0),
                    c.get("low_confidence", 0),
                    c.get("small_bytes", 0),
                    c.get("big_bytes", 0),
                ]
            )
    else:
        out.write(text_report(report) + "\n")
