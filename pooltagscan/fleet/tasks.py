"""What a Dask worker runs: prepare a dump, scan a range of its windows, hash it.

These are plain functions of picklable arguments (Dask ships them to workers that may be
other machines seeing the same paths), built only from the library's own pieces, so a
dump scanned here gives exactly what `pooltagscan scan DUMP --stats` gives:

- `plan_dump` opens the dump, runs the layout detection (`scan.prepare`) once, and
  splits the dump's windows into ranges: one task per range, so a 64 GB image spreads
  over the cluster while each task holds one window at a time (bounded memory);
- `scan_range` scans its windows with `scanner.engine.window_results` and counts them
  with `summary.WindowCounts`, shipping per-tag counters (a few KiB), the summary's
  numbers and the tracker-table rows; with `records_dir` the window's records are also
  written to a Parquet file there (by the worker, never shipped);
- `digest_dump` computes the sha256 of the provenance, in a task of its own so that it
  runs beside the scan instead of after it.

Each task opens the dump itself from the plan (`MemoryImage` pickles by path and
identity, and refuses a different file behind the same name), so tasks never share a
descriptor or a read buffer between a worker's threads, and every task ends by checking
the dump is still what the plan saw: a dump that shrank, changed or disappeared fails
its task with an InputError naming it, which the client records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs import open_image
from pooltagscan.inputs.base import Window
from pooltagscan.scan import prepare
from pooltagscan.scanner.engine import WINDOW_BYTES, window_results
from pooltagscan.scanner.pages import ScanConfig
from pooltagscan.scanner.tracker import TRACKER_DTYPE
from pooltagscan.stats import COLUMNS
from pooltagscan.summary import BatchCounts, WindowCounts
from pooltagscan.tags.database import TagDatabase

# A task scans this much of a dump (8 windows): long enough that Dask's per-task cost
# (a few ms) is noise, short enough that a cancelled run stops within a second and that
# a 16 GB dump makes 64 tasks to spread.
TASK_BYTES = 256 << 20
DIGEST_CHUNK = 8 << 20


@dataclass(frozen=True)
class FileFacts:
    """What identifies a dump between runs (incremental reruns) and during one."""

    path: str
    size: int
    mtime_ns: int
    device: int
    inode: int

    @classmethod
    def of(cls, source: InputFile) -> FileFacts:
        info = source.info
        return cls(source.path, info.st_size, info.st_mtime_ns, info.st_dev, info.st_ino)


@dataclass
class DumpPlan:
    """A prepared dump: its detection's outcome, its windows, and how they are split.

    `image_state` is the pickled MemoryImage (not the object), so each task reopens the
    dump itself and the client can hold a plan without opening anything.
    """

    facts: FileFacts
    image_state: bytes
    config: ScanConfig
    windows: list[Window]
    ranges: list[tuple[int, int]]
    meta: dict[str, Any]  # PreparedScan.metadata() plus how, warnings, notes
    seconds: float = 0.0  # opening and detection

    @property
    def scanned_bytes(self) -> int:
        return int(self.meta["scanned_bytes"])


@dataclass
class RangeResult:
    """What one range task ships back: counters, never records."""

    start: int
    stop: int
    tags: np.ndarray  # uint32, sorted, distinct
    counts: np.ndarray  # (tags, COLUMNS) int64
    batch: BatchCounts
    tracker: np.ndarray  # TRACKER_DTYPE rows met in the range
    seconds: float = 0.0
    records_file: str | None = None
    scanned_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def split_ranges(windows: list[Window], task_bytes: int) -> list[tuple[int, int]]:
    """Consecutive window index ranges of about `task_bytes` each (at least one window)."""
    ranges: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, window in enumerate(windows):
        if i > start and size + window.length > task_bytes:
            ranges.append((start, i))
            start, size = i, 0
        size += window.length
    if start < len(windows):
        ranges.append((start, len(windows)))
    return ranges


def plan_dump(
    path: str,
    layout: str = "auto",
    known_tags: np.ndarray | None = None,
    tables: bool = True,
    task_bytes: int = TASK_BYTES,
    window_bytes: int = WINDOW_BYTES,
) -> DumpPlan:
    """Open `path`, detect its layout, and split it into range tasks.

    `known_tags` are the tag database's exact tags (`scan.known_tag_values`), computed
    once by the client: the only thing of the database the scan itself uses.
    """
    started = time.perf_counter()
    image = open_image(path)
    try:
        prepared = prepare(image, layout, None, tables=tables)
        if known_tags is not None:
            prepared.config = dataclasses.replace(prepared.config, known_tags=known_tags)
        windows = list(image.windows(window_bytes))
        meta = prepared.metadata()
        meta["how"] = "forced" if layout != "auto" else prepared.how
        meta["warnings"] = prepared.warnings()
        meta["notes"] = list(image.notes)
        meta["captured_bytes"] = image.captured_bytes
        facts = FileFacts.of(image.file)
        state = pickle.dumps(image)
    finally:
        image.close()
    return DumpPlan(
        facts,
        state,
        prepared.config,
        windows,
        split_ranges(windows, task_bytes),
        meta,
        time.perf_counter() - started,
    )


def _combine(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One (tags, counts) pair from several windows' pairs, summed by tag."""
    parts = [p for p in parts if p[0].size]
    if not parts:
        return np.empty(0, np.uint32), np.zeros((0, len(COLUMNS)), np.int64)
    tags = np.concatenate([t for t, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    uniq, inverse = np.unique(tags, return_inverse=True)
    summed = np.zeros((uniq.size, counts.shape[1]), np.int64)
    np.add.at(summed, inverse.reshape(-1), counts)
    return uniq, summed


def scan_range(
    plan: DumpPlan,
    start: int,
    stop: int,
    records_dir: str | None = None,
    db: TagDatabase | None = None,
) -> RangeResult:
    """Scan windows `start:stop` of a planned dump, one window in memory at a time.

    With `records_dir`, the records go to `records_dir/part-<start>.parquet` (a temporary
    file renamed into place when the range is done), with the owner and description `db`
    gives each tag, as in `scan --format jsonl`.
    """
    started = time.perf_counter()
    image = pickle.loads(plan.image_state)
    count = WindowCounts(None)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    rows: list[np.ndarray] = []
    records, nbytes, pool_pages, scanned = 0, 0, 0, 0
    writer = None
    try:
        if records_dir is not None:
            from pooltagscan.fleet.store import RecordsFile

            writer = RecordsFile(records_dir, start, db)
        for window in plan.windows[start:stop]:
            with image.words(window) as words:
                found, tracker = window_results(image, plan.config, window, words)
            (tags, counts), batch = count(found)
            parts.append((tags, counts))
            records += batch.records
            nbytes += batch.bytes
            pool_pages += batch.pool_pages
            scanned += window.length
            if tracker.size:
                rows.append(tracker)
            if writer is not None:
                writer.write(found)
            del found
        image.check_unchanged()
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    finally:
        image.close()
    tags, counts = _combine(parts)
    return RangeResult(
        start,
        stop,
        tags,
        counts,
        BatchCounts(records, nbytes, pool_pages),
        np.concatenate(rows) if rows else np.zeros(0, TRACKER_DTYPE),
        time.perf_counter() - started,
        writer.path if writer is not None else None,
        scanned,
    )


def digest_dump(facts: FileFacts) -> str:
    """sha256 of the dump the plan saw; InputError if it is no longer that file."""
    with InputFile.open(facts.path, "a memory dump") as source:
        if FileFacts.of(source) != facts:
            raise InputError(facts.path, "changed between its scan and its sha256")
        digest = hashlib.sha256()
        offset = 0
        while offset < facts.size:
            data = source.pread(offset, min(DIGEST_CHUNK, facts.size - offset))
            if not data:
                break
            digest.update(data)
            offset += len(data)
        problem = source.changed()
        if offset != facts.size or problem:
            raise InputError(
                facts.path, f"the file {problem or 'shrank'} while its sha256 was computed"
            )
    return digest.hexdigest()


def stat_facts(path: str) -> FileFacts | None:
    """The facts of `path` as the client sees it, None when it cannot (a path only the
    workers see, or a missing file, which its task will report)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return FileFacts(path, info.st_size, info.st_mtime_ns, info.st_dev, info.st_ino)
