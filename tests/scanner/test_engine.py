"""scanner/engine.py: a window's records land at their addresses (contiguous and
scattered windows), tables add nothing on pool pages, and window size does not matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from handmade import blank, legacy_chain, put, words_of, x64_header

from pooltagscan.inputs import open_image
from pooltagscan.inputs.base import MemoryImage, Window
from pooltagscan.layouts import Encoding, Family
from pooltagscan.records import CONFIDENCE_HIGH, CONFIDENCE_LOW
from pooltagscan.scanner.engine import _pool_pages, scan_image, window_results
from pooltagscan.scanner.pages import ScanConfig, scan_words

X64_BLOCKS = (0x20, 0x40, 0x10, 0x30, 0x08, 0x08, 0x18, 0x28, 0x10)
X64_OFFSETS = [0x000, 0x200, 0x600, 0x700, 0xA00, 0xA80, 0xB00, 0xC80, 0xF00]
TAGS = (b"Proc", b"Thre", b"File", b"Irp ", b"Io  ", b"MmSt", b"Even", b"Key ", b"Toke")
VISTA = (3, 1, 3, 3, 1, 3, 3, 3, 1)
CONFIG = ScanConfig(Family.X64, Encoding.VISTA)


def _image(tmp_path: Path, buf: bytearray) -> MemoryImage:
    path = tmp_path / "pages.raw"
    path.write_bytes(bytes(buf))
    return open_image(path)


def _four_pages() -> bytearray:
    """Pages 1 and 3 carry complete x64 chains; 0 and 2 are zeros."""
    buf = blank(4)
    legacy_chain(buf, 1, X64_BLOCKS, VISTA, TAGS, unit=16)
    legacy_chain(buf, 3, X64_BLOCKS, VISTA, TAGS, unit=16)
    return buf


@pytest.mark.parametrize("tables", [False, True])
def test_window_results_contiguous(tmp_path: Path, tables: bool) -> None:
    """Records at window address + page + offset; no table entry or tracker row comes
    out of pool and zero pages."""
    buf = _four_pages()
    image = _image(tmp_path, buf)
    (window,) = image.windows(1 << 20)
    config = ScanConfig(Family.X64, Encoding.VISTA, tables=tables)
    with image.words(window) as words:
        records, rows = window_results(image, config, window, words)
    want = [p * 4096 + o for p in (1, 3) for o in X64_OFFSETS]
    assert records["offset"].tolist() == want
    assert (records["confidence"] == CONFIDENCE_HIGH).all()
    assert rows.size == 0
    assert (records == scan_words(words_of(buf), 0, config)).all()


def test_window_results_scattered_pages(tmp_path: Path) -> None:
    """A gathered window (minidump style): buffer pages map to their own addresses."""
    buf = _four_pages()
    image = _image(tmp_path, buf)
    pages = np.array([0x5000, 0x9000, 0xFFFF800000001000, 0xFFFF800000007000], np.uint64)
    window = Window(int(pages[0]), 0, 4 * 4096, pages=pages)
    with image.words(window) as words:
        records, _ = window_results(image, CONFIG, window, words)
    want = [0x9000 + o for o in X64_OFFSETS] + [0xFFFF800000007000 + o for o in X64_OFFSETS]
    assert records["offset"].tolist() == want


def test_window_results_offset_window(tmp_path: Path) -> None:
    """A window starting at page 2 of the file reports addresses from there."""
    image = _image(tmp_path, _four_pages())
    windows = list(image.windows(2 * 4096))
    assert [(w.address, w.length) for w in windows] == [(0, 8192), (8192, 8192)]
    with image.words(windows[1]) as words:
        records, _ = window_results(image, CONFIG, windows[1], words)
    assert records["offset"].tolist() == [3 * 4096 + o for o in X64_OFFSETS]


@pytest.mark.parametrize("window_bytes", [4096, 3 * 4096, 1 << 20])
def test_scan_image_independent_of_window_size(tmp_path: Path, window_bytes: int) -> None:
    """Every check stays inside one page: any window split yields the same records."""
    buf = _four_pages()
    put(buf, 2 * 4096, x64_header(0, 0, 0x10, 3, b"Prfx"))
    put(buf, 2 * 4096 + 0x100, x64_header(0x10, 0, 0x10, 3, b"Prfy"))
    put(buf, 2 * 4096 + 0x200, x64_header(0x10, 0, 0x10, 3, b"Prfz"))
    image = _image(tmp_path, buf)
    seen: list[tuple[int, int]] = []
    chunks = list(
        scan_image(
            image, CONFIG, window_bytes=window_bytes, progress=lambda d, t: seen.append((d, t))
        )
    )
    assert len(chunks) == -(-4 * 4096 // window_bytes)
    records = np.concatenate(chunks)
    want = [4096 + o for o in X64_OFFSETS] + [0x2000, 0x2100, 0x2200]
    want += [3 * 4096 + o for o in X64_OFFSETS]
    assert records["offset"].tolist() == want
    low = records["offset"][records["confidence"] == CONFIDENCE_LOW].tolist()
    assert low == [0x2000, 0x2100, 0x2200]
    assert seen[-1] == (4 * 4096, 4 * 4096)


def test_pool_pages_only_from_high_confidence() -> None:
    """Only pages with a high-confidence record are skipped by the table search."""
    records = scan_words(words_of(_four_pages()), 0x100000, CONFIG)
    assert _pool_pages(records, 0x100000, 4).tolist() == [False, True, False, True]
    records["confidence"][:9] = CONFIDENCE_LOW
    assert _pool_pages(records, 0x100000, 4).tolist() == [False, False, False, True]
