"""The view of `pooltagscan drivers`: table, json, jsonl, csv and PoolMon's localtag.txt.

The four common formats are the shared writers of render.writers; localtag.txt is this
view's own format, a writer registered on the view.

One record per (driver, tag, API, call site). Machine formats carry RVAs as integers
(json, jsonl); the human ones (table, csv) as hex text. `tag` follows the `scan`
output contract - four characters, protected bit cleared, other bytes as `\\xNN` - so
the two commands' results join on it; `tag_hex` is the raw 32-bit value the driver
passes and `protected` says whether it sets the pre-Windows 8 protected bit.

`localtag` writes one `Tag - driver.sys - APIs` line per tag and driver: the format of
PoolMon's localtag.txt and WinDbg's pooltag.txt, which our own tag database reads back
(`--pooltag` of `scan`). Tag text is written so that the database parser gives back
the same four bytes: bytes that mean something to it (`\\`, `?`, `*`, a leading space,
a dash after a space, a leading `//`) are written as `\\xNN` escapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pooltagscan.errors import one_line
from pooltagscan.render.view import Column, Table, View
from pooltagscan.render.writers import Writer, formats
from pooltagscan.tags.patterns import is_printable_byte

if TYPE_CHECKING:
    # Types only: the command lists its formats without loading the analysis.
    from pooltagscan.drivers.attribution import DriverFailure, DriverReport, Finding

__all__ = [
    "FIELDS",
    "FORMATS",
    "DriversView",
    "LocaltagWriter",
    "finding_record",
    "localtag_tag",
]

FIELDS = (
    "driver",
    "path",
    "arch",
    "tag",
    "protected",
    "tag_hex",
    "api",
    "site",
    "api_site",
    "evidence",
    "confidence",
    "via",
    "source",
    "rule",
    "sha256",
)
_CONFIDENCE_ORDER = {"high": 0, "medium": 1, "low": 2}


def finding_record(report: DriverReport, finding: Finding) -> dict[str, Any]:
    """The JSON form of one finding (RVAs as integers)."""
    return {
        "driver": report.name,
        "path": report.path,
        "arch": report.arch,
        "tag": finding.tag,
        "protected": finding.protected,
        "tag_hex": f"{finding.value:#010x}",
        "api": finding.api,
        "site": finding.site,
        "api_site": finding.api_site,
        "evidence": finding.evidence,
        "confidence": finding.confidence,
        "via": list(finding.via),
        "source": finding.source,
        "rule": finding.rule,
        "sha256": report.info.sha256 if report.info else None,
    }


def _hex(value: int) -> str:
    return f"{value:#x}"


def _csv_cells(report: DriverReport, finding: Finding) -> list[Any]:
    """A finding's csv row: RVAs as hex text, the protected bit as `yes`."""
    record = finding_record(report, finding)
    record["site"] = _hex(finding.site)
    record["api_site"] = _hex(finding.api_site)
    record["source"] = _hex(finding.source)
    record["via"] = " ".join(_hex(v) for v in finding.via)
    record["protected"] = "yes" if finding.protected else ""
    record["rule"] = finding.rule or ""
    record["sha256"] = record["sha256"] or ""
    return [record[name] for name in FIELDS]


def _driver_document(report: DriverReport, findings: Sequence[Finding]) -> dict[str, Any]:
    """One analysed driver in the JSON document, with what stayed open."""
    return {
        "driver": report.name,
        "path": report.path,
        "arch": report.arch,
        **(report.info.as_dict() if report.info else {}),
        "pool_apis": list(report.pool_apis),
        # Pool APIs called without an import: resolved by name at run time or via KMDF.
        "indirect_apis": list(report.indirect_apis),
        "call_sites": report.call_sites,
        "untagged_frees": report.untagged_frees,
        "findings": [finding_record(report, f) for f in findings],
        "unresolved": [
            {"api": u.api, "site": u.site, "reasons": list(u.reasons), "partial": u.partial}
            for u in report.unresolved
        ],
        "notes": list(report.notes),
    }


TABLE_COLUMNS = (
    *(Column(h) for h in ("Tag", "P", "Driver", "Arch", "API", "Evidence", "Conf")),
    Column("Sites", width=40),
    Column("Via"),
)


class DriversView(View):
    """The findings of a batch of drivers, driver by driver as the analysis ends.

    A row is (report, findings to show). jsonl and csv give one record per finding
    (call site); the JSON document one item per driver, then the files that could not
    be analysed; the table one row per driver, tag, API and kind of evidence, with the
    row's call sites together. `count` is how many findings went by.
    """

    fields = FIELDS
    rows_key = "drivers"
    stream_json = True

    def __init__(
        self,
        results: Iterable[tuple[DriverReport, Sequence[Finding]]],
        failures: Sequence[DriverFailure] = (),
    ) -> None:
        super().__init__(self._counted(results))
        self.failures = failures  # filled while the batch runs: read after the rows
        self.count = 0

    def _counted(
        self, results: Iterable[tuple[DriverReport, Sequence[Finding]]]
    ) -> Iterator[tuple[DriverReport, Sequence[Finding]]]:
        for report, findings in results:
            self.count += len(findings)
            yield report, findings

    def records(self, row: tuple[DriverReport, Sequence[Finding]]) -> Iterable[dict[str, Any]]:
        report, findings = row
        return [finding_record(report, f) for f in findings]

    def csv_rows(self, row: tuple[DriverReport, Sequence[Finding]]) -> Iterable[Sequence[Any]]:
        report, findings = row
        return [_csv_cells(report, f) for f in findings]

    def json_items(self, row: tuple[DriverReport, Sequence[Finding]]) -> Iterable[dict[str, Any]]:
        return (_driver_document(*row),)

    def trailer(self, count: int) -> dict[str, Any]:
        failures = [{"path": f.path, "problem": f.problem} for f in self.failures]
        return {"failures": failures, "count": self.count}

    def table(self) -> Table:
        return Table(TABLE_COLUMNS, self._table_rows(), empty="no pool tags found")

    def _table_rows(self) -> Iterator[tuple[str, ...]]:
        for report, findings in self.rows:
            groups: dict[tuple, tuple[list[int], list[int]]] = {}
            for f in findings:
                key = (f.raw, f.tag, f.protected, f.api, f.evidence, f.confidence)
                sites, via = groups.setdefault(key, ([], []))
                sites.append(f.site)
                via.extend(v for v in f.via if v not in via)
            for (_raw, tag, protected, api, evidence, confidence), (sites, via) in groups.items():
                yield (
                    tag,
                    "*" if protected else "",
                    report.name,
                    report.arch,
                    api,
                    evidence,
                    confidence,
                    " ".join(_hex(s) for s in sorted(set(sites))),
                    " ".join(_hex(v) for v in via),
                )


def localtag_tag(raw: bytes) -> str:
    """Tag text for a localtag/pooltag line that parses back to exactly `raw`.

    Trailing spaces are written as spaces (the parser pads short tags with them); a
    tag that starts with spaces has its first one escaped so the line keeps its tag.
    """
    out = []
    for position, byte in enumerate(raw):
        char = chr(byte)
        leading = byte == 0x20 and all(b == 0x20 for b in raw[:position])
        trailing = byte == 0x20 and all(b == 0x20 for b in raw[position:])
        special = (
            not is_printable_byte(byte)
            or char in "\\?*"
            or (leading and (position == 0 or not trailing))
            or (char == "-" and position > 0 and raw[position - 1] == 0x20)
            or (char == "/" and position == 0 and raw[1:2] == b"/")
        )
        out.append(f"\\x{byte:02x}" if special else char)
    return "".join(out)


class LocaltagWriter(Writer):
    """PoolMon localtag.txt: `Tag - driver.sys - APIs [confidence]`, sorted by tag; a
    format of the drivers view only.

    The driver is the file's base name (PoolMon's Driver column; a relative path could
    hold the ` - ` separator). PoolMon reads a tag as four literal characters, so a tag
    whose text needs an `\\xNN` escape (a non-printable byte, or one our own database
    parser reads specially) is written as a `//` comment line, never as an entry
    PoolMon would misread: the JSON output keeps its exact bytes.
    """

    def write(self, view: View) -> int:
        entries: dict[tuple[bytes, str], tuple[set[str], str]] = {}
        count = 0
        for count, (report, findings) in enumerate(view.rows, 1):
            self._add(entries, report, findings)
        self._write(entries)
        return count

    def _add(
        self,
        entries: dict[tuple[bytes, str], tuple[set[str], str]],
        report: DriverReport,
        findings: Sequence[Finding],
    ) -> None:
        for f in findings:
            # The protected bit is not part of the tag a database lists.
            raw = f.raw if not f.protected else f.raw[:3] + bytes([f.raw[3] & 0x7F])
            key = (raw, one_line(report.basename))  # a file name may hold a newline
            apis, best = entries.get(key, (set(), "low"))
            apis.add(f.api)
            if _CONFIDENCE_ORDER[f.confidence] < _CONFIDENCE_ORDER[best]:
                best = f.confidence
            entries[key] = (apis, best)

    def _write(self, entries: dict[tuple[bytes, str], tuple[set[str], str]]) -> None:
        lines = ["rem Pool tags attributed to drivers by `pooltagscan drivers`\n"]
        for (raw, driver), (apis, best) in sorted(entries.items()):
            tag = localtag_tag(raw)
            line = f"{tag:<4} - {driver} - {', '.join(sorted(apis))} [{best}]"
            if "\\x" in tag:  # a backslash is itself escaped, so this is an escape
                line = f"// {line} (tag not printable as text: PoolMon cannot read it)"
            lines.append(line + "\n")
        self.out.write("".join(lines))


DriversView.formats = {"localtag": LocaltagWriter}
FORMATS = formats("table", "json", "jsonl", "csv", "localtag", view=DriversView)
