"""Build the attribution report: for every tag in a dump, who is likely to own it.

The report joins three sources that each answer part of the question: the dump's
per-tag statistics (what is there), the tag database (what Microsoft or the user says a
tag is) and the driver scan (which binary passes the tag to a pool API). Tags that no
database knows but a scanned driver uses come first, because that is the answer an
analyst cannot get anywhere else; tags nobody can explain follow, as the suspicious
remainder; tags the database explains come next. Unexplained tags seen only in
low-confidence records (an isolated header, a broken chain's prefix) close the list as
`unconfirmed`: on a real dump random bytes pass those checks often enough that ranking
them with the proven unknown tags would bury the interesting ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pooltagscan.diff import Snapshot
from pooltagscan.drivers.attribution import DriverReport
from pooltagscan.records import CONFIDENCE_NAMES, POOL_NAMES, SOURCE_BIGPOOL, STATE_NAMES, TagNames
from pooltagscan.stats import TagStats
from pooltagscan.tags.database import TagDatabase

ATTRIBUTED, UNKNOWN, KNOWN, UNCONFIRMED = "attributed", "unknown", "known", "unconfirmed"
STATUS_ORDER = {ATTRIBUTED: 0, UNKNOWN: 1, KNOWN: 2, UNCONFIRMED: 3}
_CONFIDENCE_RANK = {"high": 0, "medium": 1, "low": 2}
SAMPLES_PER_TAG = 64  # allocation addresses kept per unexplained tag
PREVIEWS_PER_TAG = 4  # of which this many get a hex preview
PREVIEW_BYTES = 64


@dataclass(frozen=True)
class Candidate:
    """A driver seen passing the tag to a pool API."""

    driver: str
    path: str
    arch: str
    api: str
    site: int  # RVA of the call carrying the tag
    evidence: str
    confidence: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "path": self.path,
            "arch": self.arch,
            "api": self.api,
            "site": self.site,
            "evidence": self.evidence,
            "confidence": self.confidence,
        }


@dataclass
class Sample:
    """One allocation of a tag, for the per-tag pages of the HTML report."""

    offset: int
    size: int
    pool: str
    state: str
    confidence: str
    preview: bytes = b""
    # A big-pool allocation: the address of its big-page table entry; its `offset` is
    # then a kernel virtual address.
    entry: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "offset": self.offset,
            "size": self.size,
            "pool": self.pool,
            "state": self.state,
            "confidence": self.confidence,
            "preview": self.preview.hex(),
        }
        if self.entry is not None:
            out.update(source="bigpool", entry=self.entry)
        return out


@dataclass
class ReportRow:
    tag: str
    counters: dict[str, int]
    status: str
    owner: str = ""
    description: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    growth_allocs: int | None = None
    growth_bytes: int | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def allocs(self) -> int:
        return self.counters["total_allocs"] - self.counters["free_allocs"]

    @property
    def bytes(self) -> int:
        return self.counters["total_bytes"] - self.counters["free_bytes"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "status": self.status,
            "allocs": self.allocs,
            "bytes": self.bytes,
            **self.counters,
            "owner": self.owner,
            "description": self.description,
            "candidates": [c.as_dict() for c in self.candidates],
            "growth_allocs": self.growth_allocs,
            "growth_bytes": self.growth_bytes,
            "samples": [s.as_dict() for s in self.samples],
        }


@dataclass
class Report:
    meta: dict[str, Any]
    rows: list[ReportRow]
    totals: dict[str, int]
    drivers: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    # What the driver folders' walks passed over (user-mode images) or found empty: for
    # stderr, not the document.
    notes: list[str] = field(default_factory=list)
    # report --objects: processes and drivers found only in freed or unlinked blocks
    # (objects.hidden_objects); None without the option.
    hidden: dict[str, list[dict[str, Any]]] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "kind": "pooltagscan-report",
            "version": 1,
            **self.meta,
            "totals": self.totals,
            "drivers": self.drivers,
            "problems": self.problems,
            "tags": [r.as_dict() for r in self.rows],
        }
        if self.hidden is not None:
            out["hidden_objects"] = self.hidden
        return out


class SampleCollector:
    """Keeps the first allocations of every tag the database does not explain.

    Fed batch by batch during the scan, so the report never holds a dump's records.
    """

    def __init__(self, db: TagDatabase, limit: int = SAMPLES_PER_TAG):
        self.db = db
        self.limit = limit
        self.names = TagNames()
        self.samples: dict[str, list[Sample]] = {}
        self._unknown: dict[int, bool] = {}

    def add(self, records: np.ndarray) -> None:
        if not records.size:
            return
        values = np.unique(records["tag"])
        for value in values.tolist():
            if value not in self._unknown:
                self._unknown[value] = not self.db.is_known(self.names(value))
        wanted = np.array([self._unknown[v] for v in values.tolist()])
        if not wanted.any():
            return
        keep = np.isin(records["tag"], values[wanted])
        for rec in records[keep]:
            tag = self.names(int(rec["tag"]))
            bucket = self.samples.setdefault(tag, [])
            if len(bucket) < self.limit:
                bucket.append(
                    Sample(
                        int(rec["offset"]),
                        int(rec["size"]),
                        POOL_NAMES[rec["pool"]],
                        STATE_NAMES[rec["state"]],
                        CONFIDENCE_NAMES[rec["confidence"]],
                        entry=int(rec["entry"]) if rec["source"] == SOURCE_BIGPOOL else None,
                    )
                )

    def fill_previews(self, read, virtual: bool = False) -> None:
        """Read the first bytes of the first samples (`read(address, length) -> bytes`).

        A big-pool allocation's address is virtual: its bytes are read only when the
        dump's address space is virtual too (`virtual`, kernel minidumps); in a physical
        dump that address means another page altogether (no translation yet).
        """
        for bucket in self.samples.values():
            for sample in bucket[:PREVIEWS_PER_TAG]:
                if sample.entry is None or virtual:
                    sample.preview = read(sample.offset, min(sample.size, PREVIEW_BYTES))


def candidates_by_tag(reports: Iterable[DriverReport]) -> dict[str, list[Candidate]]:
    """Every (driver, API) pair per tag, best evidence first."""
    best: dict[tuple[str, str, str], Candidate] = {}
    for report in reports:
        for finding in report.findings:
            cand = Candidate(
                report.name,
                report.path,
                report.arch,
                finding.api,
                finding.site,
                finding.evidence,
                finding.confidence,
            )
            key = (finding.tag, report.path, finding.api)
            old = best.get(key)
            if old is None or _CONFIDENCE_RANK[cand.confidence] < _CONFIDENCE_RANK[old.confidence]:
                best[key] = cand
    out: dict[str, list[Candidate]] = {}
    for (tag, _, _), cand in best.items():
        out.setdefault(tag, []).append(cand)
    for cands in out.values():
        cands.sort(key=lambda c: (_CONFIDENCE_RANK[c.confidence], c.driver, c.api))
    return out


def low_confidence_only(counters: dict[str, int]) -> bool:
    """Every record of the tag is of low confidence (none medium or high)."""
    total = counters.get("total_allocs", 0)
    return total > 0 and counters.get("low_confidence", 0) == total


def tag_status(known: bool, candidates: list[Candidate], counters: dict[str, int]) -> str:
    """The group of a tag: a database or a scanned driver explains it, or the evidence
    for its records decides between `unknown` and `unconfirmed`."""
    if known:
        return KNOWN
    if candidates:
        return ATTRIBUTED  # a driver passing the tag to a pool API is evidence enough
    return UNCONFIRMED if low_confidence_only(counters) else UNKNOWN


def build_rows(
    stats: TagStats,
    db: TagDatabase,
    drivers: Iterable[DriverReport],
    baseline: Snapshot | None = None,
    samples: SampleCollector | None = None,
) -> list[ReportRow]:
    """One row per tag of the dump, in report order (see the module docstring)."""
    by_tag = candidates_by_tag(drivers)
    rows = []
    for tag_row in stats.rows(db.describe, sort="tag"):
        known = db.is_known(tag_row.tag)
        cands = by_tag.get(tag_row.tag, [])
        status = tag_status(known, cands, tag_row.counters)
        row = ReportRow(
            tag_row.tag, tag_row.counters, status, tag_row.owner, tag_row.description, cands
        )
        if baseline is not None:
            row.growth_allocs = row.allocs - baseline.allocs.get(row.tag, 0)
            row.growth_bytes = row.bytes - baseline.bytes.get(row.tag, 0)
        if samples is not None:
            row.samples = samples.samples.get(row.tag, [])
        rows.append(row)
    rows.sort(key=lambda r: (STATUS_ORDER[r.status], -r.bytes, -r.allocs, r.tag))
    return rows


def driver_summaries(reports: Iterable[DriverReport]) -> list[dict[str, Any]]:
    return [
        {
            "driver": r.name,
            "path": r.path,
            "arch": r.arch,
            "tags": sorted({f.tag for f in r.findings}),
        }
        for r in reports
    ]
