"""The one-line summary of a `scan --stats` run: how much was found, how fast, and how
much of the dump held pool pages.

The pool-page share tells an analyst whether a scan found the pool at all: a kernel
dump whose pages hold almost no headers was probably scanned with the wrong layout, or
is not the memory they think it is. It is counted from every record the scan yields,
before `--tag`/`--pool`/`--state`/`--min-confidence` filters, because it describes the
dump, not the view; the record and byte counts describe the view. Only header-carrying
blocks (source page) count: a big-pool record's offset is a virtual address, not a page
of the dump.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pooltagscan.filters import RecordFilter
from pooltagscan.layouts import PAGE_SIZE
from pooltagscan.records import SOURCE_PAGE
from pooltagscan.scan import PreparedScan
from pooltagscan.scanner.engine import ProgressCallback, TrackerSink, scan_image
from pooltagscan.stats import ClassSums, TagStats


@dataclass
class ScanSummary:
    """Counters of one scan, fed batch by batch like TagStats (memory stays flat).

    The clock starts when the summary is made, so a shell that makes it before `prepare`
    includes layout detection in the elapsed time, as a user timing the run would.
    """

    scanned_bytes: int
    records: int = 0
    bytes: int = 0
    pool_pages: int = 0
    seconds: float = 0.0
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False, compare=False)
    _start: float = field(default=0.0, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._start = self.clock()

    def add(self, records: np.ndarray, kept: np.ndarray | None = None) -> None:
        """Count one batch: `records` as scanned, `kept` what the filters let through."""
        self.merge(BatchCounts.of(records, kept))

    def merge(self, counts: BatchCounts) -> None:
        """Add a batch counted elsewhere (by the thread that scanned it)."""
        self.records += counts.records
        self.bytes += counts.bytes
        self.pool_pages += counts.pool_pages

    def finish(self) -> ScanSummary:
        """Stop the clock; returns self for chaining."""
        self.seconds = self.clock() - self._start
        return self

    @property
    def scanned_pages(self) -> int:
        # Minidumps rebuild every page a fragment touches: scanned_bytes counts them whole.
        return self.scanned_bytes // PAGE_SIZE

    @property
    def pool_page_share(self) -> float:
        return self.pool_pages / self.scanned_pages if self.scanned_pages else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The `summary` object of `scan --stats --format json`."""
        return {
            "records": self.records,
            "bytes": self.bytes,
            "elapsed_seconds": round(self.seconds, 3),
            "pool_pages": self.pool_pages,
            "scanned_pages": self.scanned_pages,
            "pool_page_share": round(self.pool_page_share, 6),
        }


def distinct_pages(offsets: np.ndarray) -> int:
    """Distinct 4 KiB pages of `offsets`. Scans yield them in address order, where
    counting page changes is several times cheaper than sorting; any order stays exact."""
    if not offsets.size:
        return 0
    pages = offsets // np.uint64(PAGE_SIZE)
    steps = pages[1:] != pages[:-1]
    if not (pages[1:] >= pages[:-1]).all():
        return int(np.unique(pages).size)
    return 1 + int(np.count_nonzero(steps))


def collect_stats(
    prepared: PreparedScan,
    summary: ScanSummary,
    record_filter: RecordFilter | None = None,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
    tracker: TrackerSink | None = None,
) -> TagStats:
    """Per-tag statistics of the filtered records, feeding `summary` on the way (it sees
    the unfiltered batches too, for the pool-page share); `summary` is finished here.
    `tracker` receives the tracker-table rows met on the way."""
    stats = TagStats()
    reduce = WindowCounts(record_filter)
    for tags, counts in scan_image(
        prepared.image, prepared.config, jobs, progress, tracker=tracker, reduce=reduce
    ):
        stats.merge(*tags)
        summary.merge(counts)
    summary.finish()
    return stats


def _no_records(records: np.ndarray) -> None:
    """What a scan thread hands over when only the tracker rows are wanted: no records."""
    return


def collect_tracker(
    prepared: PreparedScan,
    tracker: TrackerSink,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
) -> None:
    """Scan only for the tracker-table rows `tracker` receives (the `--tracker` view):
    scan threads hand over those rows and nothing of the records."""
    for _ in scan_image(
        prepared.image, prepared.config, jobs, progress, tracker=tracker, reduce=_no_records
    ):
        pass


@dataclass(frozen=True)
class BatchCounts:
    """The summary's numbers of one batch: records and bytes the filters kept, and the
    distinct pool pages of all its records. Windows come in address order and never
    share a page, so the pool pages of batches can simply be summed."""

    records: int
    bytes: int
    pool_pages: int

    @classmethod
    def of(
        cls, records: np.ndarray, kept: np.ndarray | None = None, sums: ClassSums | None = None
    ) -> BatchCounts:
        """`sums`: the C pass's counts of `kept`, which hold its totals and, when nothing
        was filtered and the records came in address order, its pages."""
        kept = records if kept is None else kept
        if sums is not None and kept is records and sums.pool_pages >= 0:
            pages = sums.pool_pages
        else:
            pages = distinct_pages(records["offset"][records["source"] == SOURCE_PAGE])
        if sums is not None:
            return cls(sums.records, sums.bytes, pages)
        return cls(int(kept.size), int(kept["size"].sum(dtype=np.int64)), pages)


@dataclass
class WindowCounts:
    """What a scan thread hands over for `--stats`: a window's per-tag counters and
    summary numbers, counted beside the scan, not its records."""

    record_filter: RecordFilter | None = None

    def __call__(self, records: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], BatchCounts]:
        kept = self.record_filter.apply(records) if self.record_filter else records
        sums = ClassSums.of(kept)  # one C pass for the counters and the totals
        counters = TagStats.count(kept) if sums is None else sums.counters()
        return counters, BatchCounts.of(records, kept, sums)


@dataclass
class KeptRecords:
    """What a scan thread hands over for the record views: the records the filters keep
    and the summary's numbers of the window."""

    record_filter: RecordFilter | None = None

    def __call__(self, records: np.ndarray) -> tuple[np.ndarray, BatchCounts]:
        kept = self.record_filter.apply(records) if self.record_filter else records
        return kept, BatchCounts.of(records, kept)


def collect_records(
    prepared: PreparedScan,
    summary: ScanSummary,
    record_filter: RecordFilter | None = None,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
) -> Iterator[np.ndarray]:
    """The filtered record batches, feeding `summary` on the way; the filter runs in the
    thread that scanned each window. `summary` is finished when the batches are."""
    for kept, counts in scan_image(
        prepared.image, prepared.config, jobs, progress, reduce=KeptRecords(record_filter)
    ):
        summary.merge(counts)
        yield kept
    summary.finish()
