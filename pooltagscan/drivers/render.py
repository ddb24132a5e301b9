"""Output of `pooltagscan drivers`: table, json, jsonl, csv and PoolMon's localtag.txt.

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

import csv
import json
from collections.abc import Sequence
from typing import Any, TextIO

from pooltagscan.drivers import FORMATS
from pooltagscan.drivers.attribution import DriverFailure, DriverReport, Finding
from pooltagscan.errors import one_line
from pooltagscan.render.table import format_table
from pooltagscan.tags.patterns import is_printable_byte

__all__ = ["FIELDS", "FORMATS", "DriverWriter", "finding_record", "localtag_tag", "make_writer"]

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


class DriverWriter:
    """`driver()` once per analysed driver with the findings to show, `end()` once."""

    def __init__(self, out: TextIO):
        self.out = out
        self.count = 0

    def driver(self, report: DriverReport, findings: Sequence[Finding]) -> None:
        raise NotImplementedError

    def failure(self, failure: DriverFailure) -> None:
        """A file that could not be analysed (already reported on stderr)."""

    def end(self) -> None:
        pass


class JsonlWriter(DriverWriter):
    def driver(self, report: DriverReport, findings: Sequence[Finding]) -> None:
        self.out.write("".join(json.dumps(finding_record(report, f)) + "\n" for f in findings))
        self.count += len(findings)


class CsvWriter(DriverWriter):
    def __init__(self, out: TextIO):
        super().__init__(out)
        self._csv = csv.writer(out, lineterminator="\n")
        self._csv.writerow(FIELDS)

    def driver(self, report: DriverReport, findings: Sequence[Finding]) -> None:
        for finding in findings:
            record = finding_record(report, finding)
            record["site"] = _hex(finding.site)
            record["api_site"] = _hex(finding.api_site)
            record["source"] = _hex(finding.source)
            record["via"] = " ".join(_hex(v) for v in finding.via)
            record["protected"] = "yes" if finding.protected else ""
            record["rule"] = finding.rule or ""
            record["sha256"] = record["sha256"] or ""
            self._csv.writerow(record[name] for name in FIELDS)
        self.count += len(findings)


class JsonWriter(DriverWriter):
    """One document: every analysed driver with its findings and what stayed open."""

    def __init__(self, out: TextIO):
        super().__init__(out)
        self._first = True
        self._failures: list[DriverFailure] = []
        self.out.write('{"drivers": [')

    def driver(self, report: DriverReport, findings: Sequence[Finding]) -> None:
        document = {
            "driver": report.name,
            "path": report.path,
            "arch": report.arch,
            **(report.info.as_dict() if report.info else {}),
            "pool_apis": list(report.pool_apis),
            "call_sites": report.call_sites,
            "untagged_frees": report.untagged_frees,
            "findings": [finding_record(report, f) for f in findings],
            "unresolved": [
                {"api": u.api, "site": u.site, "reasons": list(u.reasons), "partial": u.partial}
                for u in report.unresolved
            ],
            "notes": list(report.notes),
        }
        self.out.write(("\n  " if self._first else ",\n  ") + json.dumps(document))
        self._first = False
        self.count += len(findings)

    def failure(self, failure: DriverFailure) -> None:
        self._failures.append(failure)

    def end(self) -> None:
        failures = [{"path": f.path, "problem": f.problem} for f in self._failures]
        self.out.write(f'\n], "failures": {json.dumps(failures)}, "count": {self.count}}}\n')


class TableWriter(DriverWriter):
    """Aligned columns, one row per driver, tag, API and kind of evidence; the call
    sites of the row are listed together (json/jsonl/csv give one record per site)."""

    HEADERS = ("Tag", "P", "Driver", "Arch", "API", "Evidence", "Conf", "Sites", "Via")
    SITES_WIDTH = 40

    def __init__(self, out: TextIO):
        super().__init__(out)
        self._rows: list[tuple[str, ...]] = []

    def driver(self, report: DriverReport, findings: Sequence[Finding]) -> None:
        groups: dict[tuple, tuple[list[int], list[int]]] = {}
        for f in findings:
            key = (f.raw, f.tag, f.protected, f.api, f.evidence, f.confidence)
            sites, via = groups.setdefault(key, ([], []))
            sites.append(f.site)
            via.extend(v for v in f.via if v not in via)
        for (_raw, tag, protected, api, evidence, confidence), (sites, via) in groups.items():
            self._rows.append(
                (
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
            )
        self.count += len(findings)

    def end(self) -> None:
        if not self._rows:
            self.out.write("no pool tags found\n")
            return
        widths = {7: self.SITES_WIDTH}
        self.out.write(format_table(self.HEADERS, self._rows, max_width=widths) + "\n")


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


class LocaltagWriter(DriverWriter):
    """PoolMon localtag.txt: `Tag - driver.sys - APIs [confidence]`, sorted by tag.

    The driver is the file's base name (PoolMon's Driver column; a relative path could
    hold the ` - ` separator). PoolMon reads a tag as four literal characters, so a tag
    whose text needs an `\\xNN` escape (a non-printable byte, or one our own database
    parser reads specially) is written as a `//` comment line, never as an entry
    PoolMon would misread: the JSON output keeps its exact bytes.
    """

    def __init__(self, out: TextIO):
        super().__init__(out)
        self._entries: dict[tuple[bytes, str], tuple[set[str], str]] = {}

    def driver(self, report: DriverReport, findings: Sequence[Finding]) -> None:
        for f in findings:
            # The protected bit is not part of the tag a database lists.
            raw = f.raw if not f.protected else f.raw[:3] + bytes([f.raw[3] & 0x7F])
            key = (raw, one_line(report.basename))  # a file name may hold a newline
            apis, best = self._entries.get(key, (set(), "low"))
            apis.add(f.api)
            if _CONFIDENCE_ORDER[f.confidence] < _CONFIDENCE_ORDER[best]:
                best = f.confidence
            self._entries[key] = (apis, best)
        self.count += len(findings)

    def end(self) -> None:
        lines = ["rem Pool tags attributed to drivers by `pooltagscan drivers`\n"]
        for (raw, driver), (apis, best) in sorted(self._entries.items()):
            tag = localtag_tag(raw)
            line = f"{tag:<4} - {driver} - {', '.join(sorted(apis))} [{best}]"
            if "\\x" in tag:  # a backslash is itself escaped, so this is an escape
                line = f"// {line} (tag not printable as text: PoolMon cannot read it)"
            lines.append(line + "\n")
        self.out.write("".join(lines))


def make_writer(fmt: str, out: TextIO) -> DriverWriter:
    writers = {
        "table": TableWriter,
        "json": JsonWriter,
        "jsonl": JsonlWriter,
        "csv": CsvWriter,
        "localtag": LocaltagWriter,
    }
    return writers[fmt](out)
