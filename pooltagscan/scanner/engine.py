"""Drive a scan over a whole image: windows in order, optionally across processes.

Records come out window by window, in address order, so renderers can stream and
statistics can aggregate without ever holding a dump's worth of records. After the
last window the dump is checked against what it was when opened: a file that changed
under the scan is an error, not silently mixed results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pooltagscan.inputs.base import MemoryImage, Window
from pooltagscan.layouts import LAYOUTS, PAGE_SIZE
from pooltagscan.records import CONFIDENCE_HIGH, FAMILY_INDEX, concat, take
from pooltagscan.scanner.bigpages import big_page_records
from pooltagscan.scanner.pages import ScanConfig, scan_words
from pooltagscan.scanner.tableprobe import fused_pass, probe
from pooltagscan.scanner.tracker import TRACKER_DTYPE, tracker_entries, wide
from pooltagscan.workers import WorkerError, can_start_workers, ordered_map

WINDOW_BYTES = 32 << 20
# Below this, starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 128 << 20

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)
# Receives the tracker-table rows each window holds (scanner/tracker.TRACKER_DTYPE, with
# `entry` an address of the scanned space).
TrackerSink = Callable[[np.ndarray], None]


def scan_image(
    image: MemoryImage,
    config: ScanConfig,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
    window_bytes: int = WINDOW_BYTES,
    tracker: TrackerSink | None = None,
    reduce: Callable[[np.ndarray], Any] | None = None,
) -> Iterator[Any]:
    """Yield one record array per window: its header-carrying blocks in address order,
    then the big-pool entries its big-page table pages hold, in entry order. With
    `reduce` (picklable), what it makes of each window's records instead, computed where
    the window is scanned: workers then ship a filtered batch or a few counters, not
    every record."""
    windows = list(image.windows(window_bytes))
    total = sum(w.length for w in windows)
    done = 0
    # Large dumps are scanned by this process and jobs - 1 worker processes (ordered_map's
    # `local`): this process is already warm, where a new worker's first windows cost 3-4
    # times the others (page faults on its heap, copy-on-write after the fork). With one
    # job the scan stays here: a worker would only add shipping every record through a
    # pipe, which costs more than the scan itself (2.7 M records a GiB). An image that
    # lives only in this process (read through a Volatility layer) cannot be handed to
    # workers.
    workers = (
        image.parallel_ok
        and jobs > 1
        and total >= PARALLEL_MIN_BYTES
        and len(windows) > 1
        and can_start_workers()
    )
    if workers:
        image.file  # noqa: B018 - opened before the fork: one descriptor, shared by all
        results = ordered_map(
            _worker, windows, jobs, _init_worker, (image, config, reduce),
            local=lambda window: _scan_window(image, config, window, reduce),
        )  # fmt: skip
    else:
        results = (_scan_window(image, config, w, reduce) for w in windows)
    try:
        for window, (records, rows) in zip(windows, results):
            done += window.length
            if progress is not None:
                progress(done, total)
            if tracker is not None and rows.size:
                tracker(rows)
            yield records
    except WorkerError:
        image.check_unchanged()  # a worker killed by SIGBUS: the dump shrank under it
        raise
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the workers now if the consumer stopped early
    image.check_unchanged()


def window_records(
    image: MemoryImage, config: ScanConfig, window: Window, words: np.ndarray
) -> np.ndarray:
    """Records of one window (see window_results), without its tracker rows."""
    return window_results(image, config, window, words)[0]


def window_results(
    image: MemoryImage, config: ScanConfig, window: Window, words: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(records, tracker rows) of one window, at their addresses, keeping only headers
    and table entries the dump really holds (a minidump pads its fragments with zeros
    that must not invent or complete one). Records: the header-carrying blocks in
    address order, then the big-pool entries of the window's big-page table pages."""
    base = window.address if window.pages is None else 0
    layout = LAYOUTS[config.family]
    formats = layout.big_page_formats(config.encoding)
    fused = fused_pass(words, base, config, formats, wide(layout.trackers))
    pages = fused.pages if fused is not None else None
    records = fused.records if fused is not None else scan_words(words, base, config)
    proven = _pool_pages(records, base, words.shape[0]) if pages is None else None
    if window.pages is not None:  # scattered pages: scanned at buffer offsets
        records["offset"] = window.addresses(records["offset"])
    records = image.captured_only(records)
    if not config.tables:
        return records, np.zeros(0, TRACKER_DTYPE)
    if pages is None:
        pages = probe(words, formats, wide(layout.trackers), skip=proven)
    big, at = big_page_records(words, formats, FAMILY_INDEX[config.family], pages)
    if big.size:
        big["entry"] = window.addresses(at)
        big = take(big, image.captured(big["entry"], max(f.entry_size for f in formats)))
        records = concat([records, big])
    rows = tracker_entries(words, layout.trackers, pages)
    if rows.size:
        rows["entry"] = window.addresses(rows["entry"])
        rows = rows[image.captured(rows["entry"], 4)]
    return records, rows


def _pool_pages(records: np.ndarray, base: int, pages: int) -> np.ndarray:
    """Pages the page scan proved to be pool pages (high confidence: a whole chain or
    linked headers): no kernel table lies there, so the table search skips them."""
    sure = records["offset"][records["confidence"] == CONFIDENCE_HIGH]
    proven = np.zeros(pages, bool)
    proven[((sure - np.uint64(base)) // np.uint64(PAGE_SIZE)).astype(np.int64)] = True
    return proven


def _scan_window(
    image: MemoryImage,
    config: ScanConfig,
    window: Window,
    reduce: Callable[[np.ndarray], Any] | None = None,
) -> tuple[Any, np.ndarray]:
    with image.words(window) as words:
        records, rows = window_results(image, config, window, words)
    return (records if reduce is None else reduce(records)), rows


_worker_state: tuple[MemoryImage, ScanConfig, Callable | None] | None = None


def _init_worker(image: MemoryImage, config: ScanConfig, reduce: Callable | None) -> None:
    global _worker_state
    image.use_mapping()
    _worker_state = (image, config, reduce)


def _worker(window: Window) -> tuple[Any, np.ndarray]:
    assert _worker_state is not None
    return _scan_window(*_worker_state[:2], window, _worker_state[2])
