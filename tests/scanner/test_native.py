"""The C loops of _tables.c against their numpy twins: the same records, byte for byte.

The C module is optional (built by `pip install` where a compiler is at hand); without
it the numpy code runs. Both must give identical results on every sample, on random
pages and under both PoolType encodings.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DUMPS

from pooltagscan.inputs import open_image
from pooltagscan.layouts import LAYOUTS, Encoding, Family
from pooltagscan.scan import prepare, run
from pooltagscan.scanner import detect, native, pages, tableprobe, tracker
from pooltagscan.scanner.pages import ScanConfig, scan_words

FAMILIES = ("xp-x86", "win7-x86", "win7-x64", "win10-1809-x64", "win11-segheap-x64")

pytestmark = pytest.mark.skipif(native.native is None, reason="the C module is not built here")


def numpy_only(monkeypatch) -> None:
    """Every user of the C module falls back to its numpy twin."""
    monkeypatch.setattr(pages, "native", None)
    monkeypatch.setattr(tableprobe, "native", None)
    monkeypatch.setattr(tracker, "_native", None)
    monkeypatch.setattr(detect, "native", None)


def full_scan(family: str) -> tuple[bytes, bytes]:
    prepared = prepare(open_image(DUMPS / f"{family}.raw"), "auto", None)
    rows: list[np.ndarray] = []
    records = np.concatenate(list(run(prepared, tracker=rows.append)))
    return records.tobytes(), np.concatenate(rows).tobytes()


def test_whole_scans_agree(monkeypatch):
    fast = {family: full_scan(family) for family in FAMILIES}
    numpy_only(monkeypatch)
    for family in FAMILIES:
        assert full_scan(family) == fast[family], family
        assert len(fast[family][1]) > 200 * 57  # tracker rows were found


def _windows():
    rng = np.random.default_rng(7)
    for family in FAMILIES:
        yield family, np.fromfile(DUMPS / f"{family}.raw", dtype="<u4").reshape(-1, 1024)
    yield "random", rng.integers(0, 1 << 32, (64, 1024), dtype=np.uint32)


@pytest.mark.parametrize("family", [Family.X86, Family.X64])
@pytest.mark.parametrize("encoding", [Encoding.XP, Encoding.VISTA])
def test_legacy_records_agree_on_any_page(monkeypatch, family, encoding):
    """Every family read under every legacy layout and encoding, garbage included."""
    config = ScanConfig(family, encoding)
    for name, words in _windows():
        fast = scan_words(words, 0x7000_0000, config)
        with monkeypatch.context() as patch:
            numpy_only(patch)
            slow = scan_words(words, 0x7000_0000, config)
        assert fast.tobytes() == slow.tobytes(), name


@pytest.mark.parametrize("encoding", [Encoding.SEGMENT_HEAP, Encoding.XP, Encoding.VISTA])
def test_segment_records_agree_on_any_page(monkeypatch, encoding):
    """Every sample read as segment-heap pages (links, states and confidence), with a
    tag database that knows a few of the tags, garbage included."""
    known = np.array(sorted({0x636F7250, 0x65726854, 0x656C6946, 0x20207249}), np.uint32)
    config = ScanConfig(Family.SEGMENT_HEAP, encoding, known)
    for name, words in _windows():
        fast = scan_words(words, 0x7000_0000, config)
        with monkeypatch.context() as patch:
            numpy_only(patch)
            slow = scan_words(words, 0x7000_0000, config)
        assert fast.tobytes() == slow.tobytes(), name
        if name == "win11-segheap-x64":
            confidence = np.bincount(fast["confidence"], minlength=3)
            assert fast.size > 1000 and confidence.min() > 0, confidence


def test_detection_evidence_agrees(monkeypatch):
    """Detection's counts (proving pages, XP and Vista votes) from the C evidence loops
    and from the numpy walks, for every family read from every sample and from garbage."""
    windows = list(_windows())
    fast = [[detect._evidence(words, layout) for layout in LAYOUTS.values()]
            for _, words in windows]  # fmt: skip
    numpy_only(monkeypatch)
    slow = [[detect._evidence(words, layout) for layout in LAYOUTS.values()]
            for _, words in windows]  # fmt: skip
    assert fast == slow
    # The samples' own evidence, as `scan -v` reports it (pages, XP votes, Vista votes).
    by_name = {name: dict(zip(LAYOUTS, row)) for (name, _), row in zip(windows, fast)}
    assert by_name["xp-x86"][Family.X86] == (205, 87, 0)
    assert by_name["win7-x86"][Family.X86] == (205, 0, 111)
    assert by_name["win7-x64"][Family.X64] == (205, 0, 114)
    assert by_name["win11-segheap-x64"][Family.SEGMENT_HEAP] == (139, 0, 0)


def test_join_rows_writes_offsets_as_python_does():
    """The C join of record lines: decimal and right-aligned hex offsets exactly as
    str() and format() write them, the last fragment trimmed, None for non-ASCII text."""
    rng = np.random.default_rng(3)
    offsets = np.concatenate(
        [np.array([0, 9, 10, 99, 100, 2**64 - 1], np.uint64),
         rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True)]
    )  # fmt: skip
    rows = [f",{i}\n" for i in range(offsets.size)]
    decimal = native.native.join_rows(offsets, rows, False, 0, "L", 2)
    assert decimal == ("L" + "".join(f"{int(o)}{r}" for o, r in zip(offsets, rows)))[:-2]
    hexed = native.native.join_rows(offsets, rows, True, 14, "", 0)
    assert hexed == "".join(f"{int(o):>#14x}{r}" for o, r in zip(offsets, rows))
    assert native.native.join_rows(offsets[:2], ["a", "caf\u00e9"], False, 0, "", 0) is None
    assert native.native.join_rows(offsets[:0], [], False, 0, "head", 0) == "head"
    with pytest.raises(ValueError):
        native.native.join_rows(offsets[:3], rows[:2], False, 0, "", 0)
