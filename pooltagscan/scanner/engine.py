"""Drive a scan over a whole image: windows in order, optionally by several threads.

Records come out window by window, in address order, so renderers can stream and
statistics can aggregate without ever holding a dump's worth of records. After the
last window the dump is checked against what it was when opened: a file that changed
under the scan is an error, not silently mixed results.
"""

from __future__ import annotations

import functools
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
from pooltagscan.threadmap import ordered_thread_map

WINDOW_BYTES = 32 << 20
# Below this, a second thread has too few windows to share.
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
    `reduce`, what it makes of each window's records instead, computed by the thread
    that scanned the window (a filter or the --stats counters, in C for the most part,
    so beside the scan rather than after it)."""
    windows = list(image.windows(window_bytes))
    total = sum(w.length for w in windows)
    done = 0
    # Large dumps are scanned by `jobs` threads: a window's scan runs in C without the
    # GIL (see threadmap for what processes cost instead). A small one stays in this
    # thread, and so does an image read through a Volatility layer (not ours to share).
    threads = image.parallel_ok and jobs > 1 and total >= PARALLEL_MIN_BYTES and len(windows) > 1
    scan = functools.partial(_scan_window, image, config, reduce=reduce)
    if threads:
        image.file  # noqa: B018 - opened here: one descriptor, not one per thread
        results = ordered_thread_map(scan, windows, jobs)
    else:
        results = map(scan, windows)
    try:
        for window, (records, rows) in zip(windows, results):
            done += window.length
            if progress is not None:
                progress(done, total)
            if tracker is not None and rows.size:
                tracker(rows)
            yield records
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the threads now if the consumer stopped early
        if threads:
            image.release_buffers()  # the threads' read buffers, where windows are read
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
