"""Big-page table and tracker table search against the samples' planted tables, plus
hand-made pages: exact entries, nothing on decoys, no page taken on weak evidence."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import DUMPS, load_manifest

from pooltagscan.inputs import open_image
from pooltagscan.layouts import BIG_X64, TRACK_X64, Family
from pooltagscan.records import SOURCE_BIGPOOL, TagNames, to_dicts
from pooltagscan.scan import prepare, run
from pooltagscan.scanner.bigpages import big_page_records
from pooltagscan.scanner.tracker import COUNTERS, tracker_entries
from pooltagscan.tags.database import TagDatabase
from pooltagscan.tracking import (
    FLAG_CUT,
    FLAG_EXCEEDS,
    FLAG_UNTRACKED,
    TrackerTotals,
    reconcile,
)

FAMILIES = ("xp-x86", "win7-x86", "win7-x64", "win10-1809-x64", "win11-segheap-x64")
BIG_FIELDS = ("offset", "tag", "protected", "size", "pool", "state")


@pytest.fixture(scope="module", params=FAMILIES)
def scanned(request):
    family = request.param
    prepared = prepare(open_image(DUMPS / f"{family}.raw"), "auto", TagDatabase.builtin())
    rows: list[np.ndarray] = []
    records = np.concatenate(list(run(prepared, tracker=rows.append)))
    return family, load_manifest(family), records, np.concatenate(rows)


def test_big_pool_entries_exact(scanned):
    family, manifest, records, _ = scanned
    big = {d["entry"]: d for d in to_dicts(records[records["source"] == SOURCE_BIGPOOL])}
    whole = {e["entry"]: e for e in manifest["bigpool"] if not e["crosses"]}
    # Every whole entry found with its exact fields, nothing else (recall and precision 1).
    assert big.keys() == whole.keys(), family
    for entry, want in whole.items():
        got = big[entry]
        assert {k: got[k] for k in BIG_FIELDS} == {k: want[k] for k in BIG_FIELDS}
        assert got["source"] == "bigpool" and got["layout"] == manifest["layout"]
    # Both states and, where the format has one, both pools are exercised.
    assert {e["state"] for e in whole.values()} == {"allocated", "free"}
    pools = {e["pool"] for e in whole.values()}
    assert pools == ({"unknown"} if family == "xp-x86" else {"paged", "nonpaged"})


def test_big_pool_entries_only_in_table_pages(scanned):
    _, manifest, records, rows = scanned
    big = records[records["source"] == SOURCE_BIGPOOL]
    kinds = {manifest["pages"][int(e) // 4096] for e in big["entry"]}
    assert kinds == {"bigpage-table"}
    kinds = {manifest["pages"][int(e) // 4096] for e in rows["entry"]}
    assert kinds == {"tracker-table"}


def test_tracker_rows_exact(scanned):
    _, manifest, _, rows = scanned
    names = TagNames()
    whole = rows[~rows["partial"]]
    got = {
        int(r["entry"]): {"tag": names(int(r["tag"])), **{c: int(r[c]) for c in COUNTERS}}
        for r in whole
    }
    want = {
        r["entry"]: {k: r[k] for k in ("tag", *COUNTERS)}
        for r in manifest["tracker"]
        if not r["crosses"]
    }
    assert got == want
    cut = {(int(r["entry"]), names(int(r["tag"]))) for r in rows[rows["partial"]]}
    assert cut == {(r["entry"], r["tag"]) for r in manifest["tracker"] if r["crosses"]}
    assert cut  # the generator plants one straddling entry


def test_reconcile_flags_exactly_the_planted_anomalies(scanned):
    _, manifest, records, rows = scanned
    totals = TrackerTotals()
    totals.add(rows)
    names = TagNames()
    carved: dict[str, list[int]] = {}
    for tag, state in zip(records["tag"].tolist(), records["state"].tolist()):
        slot = carved.setdefault(names(tag), [0, 0])
        slot[0] += state == 0
        slot[1] += state != 1
    result = reconcile({t: (a, m) for t, (a, m) in carved.items()}, totals)
    flagged = {t: r.flag for t, r in result.items() if r.flag}
    anomalies = manifest["tracker_anomalies"]
    want = {anomalies["untracked"]: FLAG_UNTRACKED, anomalies["exceeds"]: FLAG_EXCEEDS}
    cut = {r["tag"] for r in manifest["tracker"] if r["crosses"]}
    want.update({t: FLAG_CUT for t in cut if t in carved})
    assert flagged == want


def _x64_table_page(entries: list[tuple[int, bytes, int, int]], phase: int = 0) -> np.ndarray:
    """One page of 24-byte entries at `phase`; missing entries are never-used ones."""
    page = bytearray(4096)
    at, i = phase, 0
    while at + 24 <= 4096:
        va, key, pt, size = entries[i] if i < len(entries) else (1, b"\0\0\0\0", 0, 0)
        page[at : at + 24] = struct.pack("<Q4sIQ", va, key, pt, size)
        at, i = at + 24, i + 1
    return np.frombuffer(bytes(page), "<u4").reshape(1, 1024)


KERNEL = 0xFFFFA08F00000000


@pytest.mark.parametrize("phase", [0, 8, 16])
def test_hand_made_big_page_table_page(phase):
    entries = [(KERNEL + 0x1000 * i + (i == 1), b"Proc", 1, 0x2000) for i in range(3)]
    records, at = big_page_records(_x64_table_page(entries, phase), (BIG_X64,), 1)
    assert at.tolist() == [phase, phase + 24, phase + 48]
    assert records["offset"].tolist() == [KERNEL, KERNEL + 0x1000, KERNEL + 0x2000]
    assert records["state"].tolist() == [0, 1, 0]  # bit 0 of Va = freed
    assert records["pool"].tolist() == [1, 1, 1] and records["size"].tolist() == [0x2000] * 3
    assert records["confidence"].tolist() == [1, 1, 1]  # three entries: medium, not high


def test_weak_or_broken_big_page_tables_are_refused():
    one = [(KERNEL, b"Proc", 0, 0x2000)]
    assert big_page_records(_x64_table_page(one), (BIG_X64,), 1)[0].size == 0  # one entry
    assert big_page_records(_x64_table_page([]), (BIG_X64,), 1)[0].size == 0  # never used
    bad = [(KERNEL + 0x1000 * i, b"Proc", 0, 0x2000) for i in range(20)]
    bad[10] = (KERNEL + 0x10, b"Proc", 0, 0x2000)  # not page aligned: not a table page
    assert big_page_records(_x64_table_page(bad), (BIG_X64,), 1)[0].size == 0
    bad[10] = (KERNEL, b"Proc", 0x7000, 0x2000)  # a PoolType no Windows stores
    assert big_page_records(_x64_table_page(bad), (BIG_X64,), 1)[0].size == 0


def test_hand_made_tracker_page_and_inconsistent_counters():
    def page(rows):
        buf = bytearray(4096)
        for i, (key, na, nf, nb) in enumerate(rows):
            buf[i * 40 : i * 40 + 40] = key + struct.pack("<IIIQIIQ", na, nf, 0, nb, 0, 0, 0)
        return np.frombuffer(bytes(buf), "<u4").reshape(1, 1024)

    good = [(b"Proc", 10, 4, 6 * 0x100), (b"Thre", 5, 5, 0), (b"File", 3, 0, 3 * 0x60)] * 2
    rows = tracker_entries(page(good), (TRACK_X64,))
    assert rows["nonpaged_allocs"].tolist() == [10, 5, 3, 10, 5, 3]
    bad = list(good)
    bad[4] = (b"Thre", 5, 6, 0)  # more frees than allocations
    assert tracker_entries(page(bad), (TRACK_X64,)).size == 0
    bad[4] = (b"Thre", 5, 5, 64)  # bytes outstanding with nothing outstanding
    assert tracker_entries(page(bad), (TRACK_X64,)).size == 0


def test_tables_off_gives_page_records_only():
    image = open_image(DUMPS / "win7-x64.raw")
    prepared = prepare(image, "auto", TagDatabase.builtin(), tables=False)
    rows: list[np.ndarray] = []
    records = np.concatenate(list(run(prepared, tracker=rows.append)))
    assert not (records["source"] == SOURCE_BIGPOOL).any() and rows == []
    assert prepared.config.family is Family.X64


def test_zero_pages_and_sampled_zero_pages():
    """A page that starts with zeros is read whole only when its sample is not zero."""
    from pooltagscan.scanner.tableprobe import ZERO_STRIDE, probe

    pages = np.zeros((3, 1024), np.uint32)
    pages[1, (ZERO_STRIDE * 5) // 4] = 7  # a small value on a sampled word
    pages[2, (ZERO_STRIDE * 5 + 16) // 4] = 7  # between the samples: taken for zero
    assert probe(pages, (), wide=True).tracker.tolist() == [False, True, False]
