"""Drive a scan over a whole image: windows in order, optionally across processes.

Records come out window by window, in address order, so renderers can stream and
statistics can aggregate without ever holding a dump's worth of records.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator

import numpy as np

from pooltagscan.inputs.base import MemoryImage, Window
from pooltagscan.scanner.pages import ScanConfig, scan_words

WINDOW_BYTES = 32 << 20
# Below this, starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 128 << 20

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)


def scan_image(
    image: MemoryImage,
    config: ScanConfig,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
    window_bytes: int = WINDOW_BYTES,
) -> Iterator[np.ndarray]:
    """Yield one record array per window, in address order."""
    windows = list(image.windows(window_bytes))
    total = sum(w.length for w in windows)
    done = 0
    # An image that lives only in this process (read through a Volatility layer) cannot
    # be handed to workers.
    parallel = jobs > 1 and image.parallel_ok
    if parallel and total >= PARALLEL_MIN_BYTES and len(windows) > 1:
        results = _parallel(image, config, windows, jobs)
    else:
        results = (_scan_window(image, config, w) for w in windows)
    for window, records in zip(windows, results):
        done += window.length
        if progress is not None:
            progress(done, total)
        yield records


def window_records(
    image: MemoryImage, config: ScanConfig, window: Window, words: np.ndarray
) -> np.ndarray:
    """Records of one mapped window, keeping only headers the dump really holds (a
    minidump pads its fragments with zeros that must not invent or complete one)."""
    return image.captured_only(scan_words(words, window.address, config))


def _scan_window(image: MemoryImage, config: ScanConfig, window: Window) -> np.ndarray:
    with image.words(window) as words:
        return window_records(image, config, window, words)


_worker_state: tuple[MemoryImage, ScanConfig] | None = None


def _init_worker(image: MemoryImage, config: ScanConfig) -> None:
    global _worker_state
    _worker_state = (image, config)


def _worker(window: Window) -> np.ndarray:
    assert _worker_state is not None
    return _scan_window(_worker_state[0], _worker_state[1], window)


def _parallel(
    image: MemoryImage, config: ScanConfig, windows: list[Window], jobs: int
) -> Iterator[np.ndarray]:
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(min(jobs, len(windows)), _init_worker, (image, config)) as pool:
        yield from pool.imap(_worker, windows, chunksize=1)
