"""Per-tag counters (`scan --stats`), the scan summary and the forced-layout check.

Synthetic record arrays give hand-computed counters for every column, big-pool records
included; the sample dumps' manifests give the per-tag state counts of real scans.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DUMPS, carved_truth, load_manifest
from test_cli import pooltagscan, stderr_lines

from pooltagscan.inputs import open_image
from pooltagscan.layouts import Family
from pooltagscan.records import RECORD_DTYPE, SOURCE_BIGPOOL, SOURCE_PAGE
from pooltagscan.render.stats import TABLE_LEGEND, stats_table, summary_line
from pooltagscan.scan import contrary_family, prepare
from pooltagscan.stats import COLUMNS, LEGACY_COLUMNS, TRACKER_COLUMNS, TagStats
from pooltagscan.stats_document import stats_document
from pooltagscan.summary import ScanSummary, collect_stats
from pooltagscan.tags.database import TagDatabase
from pooltagscan.uniques import unique_inverse

NP, P, UNK_POOL = 0, 1, 2
ALLOC, FREE, UNDEC = 0, 1, 2
LOW, MED, HIGH = 0, 1, 2
PAGE, BIG = SOURCE_PAGE, SOURCE_BIGPOOL


def tag_value(text: str) -> int:
    return int.from_bytes(text.encode("latin-1"), "little")


def records(*rows: tuple) -> np.ndarray:
    """(offset, tag, size, pool, state, confidence, source) rows as a record array."""
    out = np.zeros(len(rows), RECORD_DTYPE)
    for i, (offset, tag, size, pool, state, conf, source) in enumerate(rows):
        out[i]["offset"] = offset
        out[i]["tag"] = tag_value(tag)
        out[i]["size"] = size
        out[i]["pool"] = pool
        out[i]["state"] = state
        out[i]["confidence"] = conf
        out[i]["source"] = source
        out[i]["entry"] = 0xFEED0000 + i if source == BIG else 0
    return out


# Two pages of header blocks, one undecided block, and big-pool allocations: a live
# nonpaged one, a live paged one, a free one and one of unknown pool.
SYNTH = records(
    (0x1000, "Proc", 0x100, NP, ALLOC, HIGH, PAGE),
    (0x1100, "Proc", 0x80, NP, FREE, HIGH, PAGE),
    (0x1180, "Proc", 0x40, P, UNDEC, MED, PAGE),
    (0x3010, "Thre", 0x60, P, ALLOC, LOW, PAGE),
    (0x3070, "Thre", 0x30, UNK_POOL, FREE, LOW, PAGE),
    (0xFFFF_A000_0000_0000, "Proc", 0x3000, NP, ALLOC, HIGH, BIG),
    (0xFFFF_A000_0001_0000, "Thre", 0x2000, P, ALLOC, HIGH, BIG),
    (0xFFFF_A000_0002_0000, "Thre", 0x1000, NP, FREE, HIGH, BIG),
    (0xFFFF_A000_0003_0000, "Bigx", 0x5000, UNK_POOL, ALLOC, MED, BIG),
)

EXPECTED = {
    "Proc": {
        "nonpaged_allocs": 2, "nonpaged_bytes": 0x100 + 0x3000,
        "paged_allocs": 1, "paged_bytes": 0x40,
        "free_allocs": 1, "free_bytes": 0x80,
        "undecided": 1, "undecided_bytes": 0x40,
        "total_allocs": 4, "total_bytes": 0x100 + 0x80 + 0x40 + 0x3000,
        "allocated_allocs": 2, "allocated_bytes": 0x100 + 0x3000,
        "live_allocs": 3, "live_bytes": 0x100 + 0x40 + 0x3000,
        "high_confidence": 3, "medium_confidence": 1, "low_confidence": 0,
        "small_allocs": 2, "small_bytes": 0x100 + 0x40,
        "big_allocs": 1, "big_bytes": 0x3000,
    },
    "Thre": {
        "nonpaged_allocs": 0, "nonpaged_bytes": 0,
        "paged_allocs": 2, "paged_bytes": 0x60 + 0x2000,
        "free_allocs": 2, "free_bytes": 0x30 + 0x1000,
        "undecided": 0, "undecided_bytes": 0,
        "total_allocs": 4, "total_bytes": 0x60 + 0x30 + 0x2000 + 0x1000,
        "allocated_allocs": 2, "allocated_bytes": 0x60 + 0x2000,
        "live_allocs": 2, "live_bytes": 0x60 + 0x2000,
        "high_confidence": 2, "medium_confidence": 0, "low_confidence": 2,
        "small_allocs": 1, "small_bytes": 0x60,
        "big_allocs": 1, "big_bytes": 0x2000,
    },
    "Bigx": {
        "nonpaged_allocs": 0, "nonpaged_bytes": 0,
        "paged_allocs": 0, "paged_bytes": 0,
        "free_allocs": 0, "free_bytes": 0,
        "undecided": 0, "undecided_bytes": 0,
        "total_allocs": 1, "total_bytes": 0x5000,
        "allocated_allocs": 1, "allocated_bytes": 0x5000,
        "live_allocs": 1, "live_bytes": 0x5000,
        "high_confidence": 0, "medium_confidence": 1, "low_confidence": 0,
        "small_allocs": 0, "small_bytes": 0,
        "big_allocs": 1, "big_bytes": 0x5000,
    },
}  # fmt: skip


def stats_of(*batches: np.ndarray) -> TagStats:
    stats = TagStats()
    for batch in batches:
        stats.add(batch)
    return stats


def test_columns_keep_the_original_nine_first():
    """Saved documents and csv readers rely on the first nine names and their order."""
    assert LEGACY_COLUMNS == (
        "nonpaged_allocs", "nonpaged_bytes", "paged_allocs", "paged_bytes",
        "free_allocs", "free_bytes", "undecided", "total_allocs", "total_bytes",
    )  # fmt: skip
    assert COLUMNS[:9] == LEGACY_COLUMNS and len(set(COLUMNS)) == len(COLUMNS) == 21
    assert set(EXPECTED["Proc"]) == set(COLUMNS)


def test_hand_computed_counters_on_synthetic_records():
    rows = {r.tag: r.counters for r in stats_of(SYNTH).rows(sort="tag")}
    assert rows == EXPECTED


def test_batches_add_up_whatever_the_split():
    whole = stats_of(SYNTH)
    split = stats_of(SYNTH[:2], SYNTH[2:2], SYNTH[2:6], SYNTH[6:])
    assert [r.as_dict() for r in split.rows()] == [r.as_dict() for r in whole.rows()]
    assert split.totals() == {c: sum(e[c] for e in EXPECTED.values()) for c in COLUMNS}


def test_big_pool_bytes_rank_the_rows():
    """Default order is by total bytes, big-pool allocations included."""
    assert [r.tag for r in stats_of(SYNTH).rows()] == ["Bigx", "Proc", "Thre"]
    assert [r.tag for r in stats_of(SYNTH).rows(sort="nonpaged")] == [
        "Proc",
        "Bigx",
        "Thre",
    ]  # ties by tag


def scan_stats(family: str, layout: str = "auto") -> tuple[TagStats, ScanSummary]:
    image = open_image(DUMPS / f"{family}.raw")
    summary = ScanSummary(image.scanned_bytes)
    prepared = prepare(image, layout, TagDatabase.builtin())
    return collect_stats(prepared, summary), summary


LEGACY_FAMILIES = ("xp-x86", "win7-x86", "win7-x64", "win10-1809-x64")


@pytest.mark.parametrize("family", LEGACY_FAMILIES)
def test_state_and_source_counts_equal_the_manifest(family):
    """Legacy headers always say allocated or free: the manifest's state counts per tag."""
    want: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for a in carved_truth(load_manifest(family)):
        c = want[a["tag"]]
        name = {"allocated": "allocated_allocs", "free": "free_allocs", "unknown": "undecided"}
        c[name[a["state"]]] += 1
        c["high_confidence"] += 1  # whole validated chains, big-page table pages of 8+ entries
        source = "big" if "entry" in a else "small"
        if a["state"] != "free":
            c[f"{source}_allocs"] += 1
            c[f"{source}_bytes"] += a["size"]
    stats, _ = scan_stats(family)
    keys = ("allocated_allocs", "free_allocs", "undecided", "high_confidence", "small_allocs",
            "small_bytes", "big_allocs", "big_bytes", "low_confidence")  # fmt: skip
    got = {r.tag: {k: r.counters[k] for k in keys} for r in stats.rows()}
    assert got == {tag: {k: want[tag][k] for k in keys} for tag in want}


def test_segment_heap_live_blocks_equal_the_manifest():
    """The segment heap keeps no free flag: every planted block is live, and the LFH blocks
    (and stale VS headers) the manifest marks `unknown` are all undecided."""
    live: collections.Counter = collections.Counter()
    unknown: collections.Counter = collections.Counter()
    for a in load_manifest("win11-segheap-x64")["allocations"]:
        live[a["tag"]] += 1
        unknown[a["tag"]] += a["state"] == "unknown"
    big = [e for e in load_manifest("win11-segheap-x64")["bigpool"] if not e["crosses"]]
    freed = collections.Counter(e["tag"] for e in big if e["state"] == "free")
    live.update(e["tag"] for e in big if e["state"] == "allocated")
    stats, _ = scan_stats("win11-segheap-x64")
    rows = {r.tag: r.counters for r in stats.rows()}
    assert {t: c["live_allocs"] for t, c in rows.items()} == dict(live)
    # Only big-page table entries say freed; page headers of the segment heap never do.
    assert {t: c["free_allocs"] for t, c in rows.items() if c["free_allocs"]} == dict(freed)
    assert all(rows[t]["undecided"] >= unknown[t] for t in live)
    totals = stats.totals()
    assert totals["allocated_allocs"] + totals["undecided"] == sum(live.values())
    assert totals["high_confidence"] + totals["medium_confidence"] + totals["low_confidence"] == (
        sum(live.values()) + sum(freed.values())
    )


@pytest.mark.parametrize("family", [*LEGACY_FAMILIES, "win11-segheap-x64"])
def test_summary_counts_pool_pages_of_the_manifest(family):
    manifest = load_manifest(family)
    stats, summary = scan_stats(family)
    pages = {a["offset"] // 4096 for a in manifest["allocations"]}
    assert summary.pool_pages == len(pages)
    # 512 pages, plus the loaded-driver pages gen_images appends to the paging families.
    assert summary.scanned_pages == manifest["size"] // 4096 == len(manifest["pages"])
    carved = carved_truth(manifest)  # headers and whole big-page table entries
    assert summary.records == len(carved) == stats.totals()["total_allocs"]
    assert summary.bytes == sum(a["size"] for a in carved)
    share = round(len(pages) / len(manifest["pages"]), 6)
    assert summary.as_dict()["pool_page_share"] == share


def test_summary_skips_big_pool_and_counts_what_the_filter_kept():
    ticks = iter([10.0, 12.5])
    summary = ScanSummary(16 * 4096, clock=lambda: next(ticks))
    summary.add(SYNTH[:4], SYNTH[:1])  # pages 1 and 3; one record kept
    summary.add(SYNTH[4:], SYNTH[4:6])  # page 3 again in another window; big pool skipped
    summary.finish()
    assert summary.as_dict() == {
        "records": 3,
        "bytes": 0x100 + 0x30 + 0x3000,
        "elapsed_seconds": 2.5,
        "pool_pages": 3,
        "scanned_pages": 16,
        "pool_page_share": 0.1875,
    }
    assert summary_line(summary) == (
        "3 records, 12,592 bytes in 2.50 s; pool pages 3 of 16 scanned (18.8%)"
    )


def test_table_defines_live_above_the_header_and_fits():
    stats, _ = scan_stats("win11-segheap-x64")
    lines = stats_table(stats.rows(), stats.totals()).splitlines()
    assert lines[: len(TABLE_LEGEND) + 1] == [*TABLE_LEGEND, ""]
    assert lines[0].startswith("Live = allocated + undecided.")
    header = lines[len(TABLE_LEGEND) + 1].split()
    assert header == ["Tag", "NP", "Allocs", "NP", "Bytes", "P", "Allocs", "P", "Bytes",
                      "Free", "Undecided", "Big", "Bytes", "Owner", "Description"]  # fmt: skip
    assert max(len(line) for line in lines) <= 120
    total = lines[-1].split()
    t = stats.totals()
    assert total[:8] == ["TOTAL", *map(str, (t["nonpaged_allocs"], t["nonpaged_bytes"],
                         t["paged_allocs"], t["paged_bytes"], t["free_allocs"], t["undecided"],
                         t["big_bytes"]))]  # fmt: skip


def test_document_carries_every_counter_and_the_summary():
    stats = stats_of(SYNTH)
    summary = ScanSummary(8192, clock=lambda: 1.0)
    doc = stats_document(stats.rows(), stats.totals(), {"layout": "x64"}, summary.finish())
    assert list(doc)[:3] == ["kind", "version", "layout"]
    assert doc["version"] == 1 and doc["summary"]["scanned_pages"] == 2
    assert list(doc["tags"][0]) == ["tag", *COLUMNS, *TRACKER_COLUMNS, "owner", "description"]
    assert {r["tag"]: {c: r[c] for c in COLUMNS} for r in doc["tags"]} == EXPECTED


def test_contrary_family():
    ev = {"x86 chains": 0, "x64 chains": 205, "segment-heap pages": 3, "vista votes": 900}
    assert contrary_family(Family.SEGMENT_HEAP, ev) is Family.X64
    assert contrary_family(Family.X86, ev) is Family.X64
    assert contrary_family(Family.X64, ev) is None
    tie = {"x86 chains": 7, "x64 chains": 7, "segment-heap pages": 0}
    assert contrary_family(Family.X86, tie) is None and contrary_family(Family.X64, tie) is None
    assert contrary_family(Family.X86, {}) is None  # no evidence is no contradiction


# ---------------------------------------------------------------- through the CLI

SUMMARY_RE = re.compile(
    r"^pooltagscan: (\S+): ([\d,]+) records, ([\d,]+) bytes in (\d+\.\d\d) s; "
    r"pool pages (\d+) of (\d+) scanned \((\d+\.\d)%\)$"
)


def test_cli_summary_line_and_json_summary():
    dump = DUMPS / "win7-x64.raw"
    manifest = load_manifest("win7-x64")
    proc = pooltagscan("scan", str(dump), "--stats", "--format", "json", "-v")
    lines = [m for line in proc.stderr.splitlines() if (m := SUMMARY_RE.match(line))]
    assert len(lines) == 1
    path, records, size, _, pages, scanned, share = lines[0].groups()
    total = sum(a["size"] for a in carved_truth(manifest))
    assert (path, records, size, pages, scanned, share) == (
        str(dump),
        f"{len(carved_truth(manifest)):,}",
        f"{total:,}",
        "205",
        "512",
        "40.0",
    )
    doc = json.loads(proc.stdout)
    summary = doc["summary"]
    assert set(summary) == {"records", "bytes", "elapsed_seconds", "pool_pages",
                            "scanned_pages", "pool_page_share"}  # fmt: skip
    carved = len(carved_truth(manifest))
    assert (summary["records"], summary["bytes"], summary["pool_pages"]) == (carved, total, 205)
    assert summary["pool_page_share"] == round(205 / 512, 6)
    assert summary["records"] == doc["totals"]["total_allocs"]
    quiet = pooltagscan("scan", str(dump), "--stats", "-q")
    assert quiet.stderr == ""
    quiet = pooltagscan("scan", str(dump), "--stats", "-q", "-v")
    assert quiet.stderr == ""


def test_cli_one_summary_line_per_dump():
    """Without -v, one line per dump: records, bytes, time, extent, layout, evidence."""
    dumps = [str(DUMPS / "win7-x64.raw"), str(DUMPS / "xp-x86.raw")]
    proc = pooltagscan("scan", *dumps, "--stats", "-o", "/dev/null")
    lines = stderr_lines(proc.stderr, *dumps)
    assert lines == [
        f"pooltagscan: {dumps[0]}: 5,935 records, 49 MiB in T s over 2.0 MiB; x64 (x64 205)",
        f"pooltagscan: {dumps[1]}: 5,999 records, 70 MiB in T s over 2.3 MiB; x86 (x86 205)",
    ]
    assert all(len(line.split(": ", 2)[2]) <= 85 for line in lines)
    assert all(len(line) <= 99 for line in proc.stderr.splitlines())


def test_cli_summary_with_a_filter_counts_kept_records_and_all_pool_pages():
    manifest = load_manifest("win7-x64")
    kept = [a for a in carved_truth(manifest) if a["tag"] == "Proc"]
    proc = pooltagscan("scan", str(DUMPS / "win7-x64.raw"), "--stats", "--format", "json",
                       "--tag", "Proc")  # fmt: skip
    summary = json.loads(proc.stdout)["summary"]
    assert (summary["records"], summary["bytes"], summary["pool_pages"]) == (
        len(kept),
        sum(a["size"] for a in kept),
        205,
    )


def test_cli_csv_carries_every_column():
    out = pooltagscan("scan", str(DUMPS / "win10-1809-x64.raw"), "--stats", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == ["tag", *COLUMNS, *TRACKER_COLUMNS, "owner", "description"]
    manifest = load_manifest("win10-1809-x64")
    free = collections.Counter(a["tag"] for a in carved_truth(manifest) if a["state"] == "free")
    by_tag = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert {t: int(r["free_allocs"]) for t, r in by_tag.items() if int(r["free_allocs"])} == dict(
        free
    )


WIN7_X86_EVIDENCE = (
    "x86 chains 205, x64 chains 0, segment-heap pages 0"  # segment heap: no encoding votes
)


@pytest.mark.parametrize(
    ("layout", "warning"),
    [
        (
            "x64-segment-heap",
            (
                "pooltagscan: {dump}: warning: --layout x64-segment-heap goes against the evidence, "
                f"which favours x86 ({WIN7_X86_EVIDENCE}); records are likely bogus"
            ),
        ),
        (
            "x64",
            (
                "pooltagscan: {dump}: warning: --layout x64 goes against the evidence, which favours "
                "x86 (x86 chains 205, x64 chains 0, segment-heap pages 0, xp votes 0, vista votes 0); "
                "records are likely bogus"
            ),
        ),
        ("x86", None),
        ("auto", None),
    ],
)
def test_forced_layout_against_the_evidence_warns(layout, warning):
    dump = DUMPS / "win7-x86.raw"
    proc = pooltagscan("scan", str(dump), "--stats", "--layout", layout, "-o", "/dev/null")
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == ([warning.format(dump=dump)] if warning else [])
    assert proc.returncode == 0


def test_forced_layout_warning_in_report_and_diff():
    dump = str(DUMPS / "win10-1809-x64.raw")
    want = (
        f"pooltagscan: {dump}: warning: --layout x86 goes against the evidence, which favours "
        "x64 (x86 chains 0, x64 chains 205, segment-heap pages 0, xp votes 0, vista votes 0); "
        "records are likely bogus"
    )
    report = pooltagscan("report", dump, "--layout", "x86", "-o", "/dev/null")
    assert [line for line in report.stderr.splitlines() if "warning" in line] == [want]
    diff = pooltagscan("diff", dump, dump, "--layout", "x86", "-o", "/dev/null")
    assert [line for line in diff.stderr.splitlines() if "warning" in line] == [want, want]


def test_distinct_pages_in_and_out_of_address_order():
    from pooltagscan.summary import distinct_pages

    ordered = np.array([0x10, 0xFF0, 0x1000, 0x1008, 0x5000, 0x5FFF], np.uint64)
    assert distinct_pages(ordered) == 3
    assert distinct_pages(ordered[::-1].copy()) == 3
    assert distinct_pages(np.array([0x5000, 0x10, 0x5008, 0x20], np.uint64)) == 2
    assert distinct_pages(np.empty(0, np.uint64)) == 0


def test_several_dumps_say_which_dump_each_stats_row_belongs_to():
    dumps = [str(DUMPS / "win7-x64.raw"), str(DUMPS / "xp-x86.raw")]
    text = pooltagscan("scan", *dumps, "--stats", "--format", "csv", "-q").stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:2] == ["dump", "tag"] and [r for r in rows[1:] if r[0] == "dump"] == []
    by_dump = collections.Counter(r[0] for r in rows[1:])
    for dump in dumps:
        manifest = load_manifest(Path(dump).stem)
        assert by_dump[dump] == len({a["tag"] for a in carved_truth(manifest)})
    lines = pooltagscan("scan", *dumps, "--stats", "--format", "jsonl", "-q").stdout
    got = [json.loads(line) for line in lines.splitlines()]
    assert [list(r)[:2] for r in got[:1]] == [["dump", "tag"]]
    assert collections.Counter(r["dump"] for r in got) == by_dump
    table = pooltagscan("scan", *dumps, "--stats", "-q").stdout.splitlines()
    assert [line for line in table if line.startswith("== ")] == [f"== {d}" for d in dumps]
    one = pooltagscan("scan", dumps[0], "--stats", "--format", "jsonl", "-q").stdout
    assert "dump" not in json.loads(one.splitlines()[0])  # one dump: rows as before


def test_json_outputs_carry_provenance():
    import hashlib

    from pooltagscan import __version__

    dump = DUMPS / "win7-x64.raw"
    want = {"path": str(dump), "size": dump.stat().st_size,
            "sha256": hashlib.sha256(dump.read_bytes()).hexdigest()}  # fmt: skip
    for view in ("--stats", "--tracker"):
        doc = json.loads(pooltagscan("scan", str(dump), view, "--format", "json", "-q").stdout)
        prov = doc["provenance"]
        assert prov["inputs"] == [want] and prov["version"] == __version__
        assert prov["command_line"] == f"pooltagscan scan {dump} {view} --format json -q"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", prov["time_utc"])
    records = json.loads(pooltagscan("scan", str(dump), "--format", "json", "-q").stdout)
    assert records["provenance"]["inputs"] == [want] and records["count"] > 5000
    report = json.loads(pooltagscan("report", str(dump), "--format", "json", "-q").stdout)
    assert report["provenance"]["inputs"] == [want] and report["sha256"] == want["sha256"]


def test_cli_garbage_says_defaulted_and_warns(tmp_path):
    """No evidence at all: the layout is a guess (the first family of a tie of zeros)."""
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"pool leak notes, not memory\n" * 300)  # 8,400 bytes: two pages
    proc = pooltagscan("scan", str(notes), "--stats", "-o", "/dev/null")
    lines = stderr_lines(proc.stderr, notes)
    assert lines == [
        (
            f"pooltagscan: {notes}: size 8400 is not a multiple of 4096; the last 208 bytes are "
            "not scanned"
        ),
        f"pooltagscan: {notes}: warning: this looks like a text file, not a memory dump",
        (
            f"pooltagscan: {notes}: warning: no pool structure proven in the sampled pages; "
            "results are unlikely"
        ),
        f"pooltagscan: {notes}: 0 records, 0 B in T s over 8.0 KiB; x64 defaulted (no evidence)",
    ]
    assert proc.returncode == 0
    assert pooltagscan("scan", str(notes), "--stats", "-q", "-o", "/dev/null").stderr == ""


def test_cli_summary_counts_hits_and_tracked_tags(tmp_path):
    dump = str(DUMPS / "win10-1809-x64.raw")
    rule = tmp_path / "r.yar"
    rule.write_text('rule thr { strings: $t = "Thread" condition: $t }')
    hits = len(pooltagscan("scan", dump, "--yara", str(rule), "--format", "jsonl", "-q")
               .stdout.splitlines())  # fmt: skip
    proc = pooltagscan("scan", dump, "--yara", str(rule), "-o", "/dev/null")
    assert "\n".join(stderr_lines(proc.stderr, dump)) + "\n" == (
        f"pooltagscan: {dump}: {hits:,} YARA hits in T s over 2.4 MiB; x64 (x64 205)\n"
    )
    doc = json.loads(pooltagscan("scan", dump, "--tracker", "--format", "json", "-q").stdout)
    proc = pooltagscan("scan", dump, "--tracker", "-o", "/dev/null")
    assert "\n".join(stderr_lines(proc.stderr, dump)) + "\n" == (
        f"pooltagscan: {dump}: {len(doc['tags'])} tracked tags, {doc['tracker_pages']} table "
        "pages in T s over 2.4 MiB; x64 (x64 205)\n"
    )


def test_cli_verbose_keeps_the_detail_lines():
    dump = str(DUMPS / "win11-segheap-x64.raw")
    proc = pooltagscan("scan", dump, "--stats", "-v", "-o", "/dev/null")
    lines = stderr_lines(proc.stderr, dump)
    assert lines == [
        (
            f"pooltagscan: {dump}: raw image; 2.0 MiB scanned; layout detected: x64-segment-heap "
            "(segment-heap PoolType encoding; evidence: x86 chains 0, x64 chains 0, segment-heap "
            "pages 139)"
        ),
        (
            f"pooltagscan: {dump}: 2,514 records, 25 MiB in T s over 2.0 MiB; x64-segment-heap "
            "(seg 139)"
        ),
        (
            f"pooltagscan: {dump}: 2,514 records, 26,495,398 bytes in T s; pool pages 193 of 512 "
            "scanned (37.7%)"
        ),
        f"pooltagscan: {dump}: kernel tracker table found (7 pages); 3 tag(s) disagree with it",
        # This sample has no page tables (see samples/gen_paging.py): said, not an error.
        (
            f"pooltagscan: {dump}: kernel address space: none (no kernel page-table root found "
            "(3 self-referencing page(s), none valid): big-pool addresses cannot be translated)"
        ),
    ]


def test_human_sizes():
    from pooltagscan.render.summary import human_size

    assert [human_size(n) for n in (0, 1023, 1024, 34160, 574245, 2 << 20, 26495398, 5 << 40)] == [
        "0 B", "1023 B", "1.0 KiB", "33 KiB", "561 KiB", "2.0 MiB", "25 MiB", "5.0 TiB"
    ]  # fmt: skip


@pytest.mark.parametrize("distinct", [1, 7, 60, 3000, 200_000])
@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_unique_inverse_equals_numpy_unique(distinct, dtype):
    """The hashed inverse of the counters and the record writers is np.unique's, also
    when the hashes collide (random full-width values) or the table would be too large
    (the fallback)."""
    rng = np.random.default_rng(distinct)
    pool = rng.integers(0, np.iinfo(dtype).max, distinct, dtype=dtype, endpoint=True)
    values = pool[rng.integers(0, distinct, 300_000)]
    uniq, inverse = unique_inverse(values)
    want_uniq, want_inverse = np.unique(values, return_inverse=True)
    assert uniq.tolist() == want_uniq.tolist()
    assert inverse.tolist() == want_inverse.tolist()


def test_summary_line_elides_long_folders_to_fit_100_columns():
    from pooltagscan.render.summary import LINE_COLUMNS, fit_path

    line = "5,382 records, 820 KiB in 0.42 s over 2.0 MiB; x64 (x64 205)"
    short = "/cases/host7.raw"
    assert fit_path(short, line) == short
    long = "/evidence/2026-12-06/incident-4711/collected/workstations/finance/host7.raw"
    fitted = fit_path(long, line)
    assert fitted == "/evidence/…/host7.raw"
    # Whole folders are kept while they fit: one more would go past the limit.
    assert len(f"pooltagscan: {fitted}: {line}") <= LINE_COLUMNS
    assert len(f"pooltagscan: /evidence/2026-12-06/…/host7.raw: {line}") > LINE_COLUMNS
    assert fit_path("x" * 200 + ".raw", line) == "x" * 200 + ".raw"  # no folder to elide
    assert fit_path("/a/" + "y" * 120 + ".raw", line) == "…/" + "y" * 120 + ".raw"


def _hostile_records(n: int, seed: int) -> np.ndarray:
    """Records as no scan makes them: many distinct tags (the C table grows many times),
    class fields beyond their range (clamped, as the numpy twin clamps them), offsets
    out of address order, sizes near 2**32."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n, RECORD_DTYPE)
    out["offset"] = rng.integers(0, 1 << 40, n, dtype=np.uint64)
    out["tag"] = rng.integers(0, 1 << 32, n, dtype=np.uint32)
    out["tag"][: n // 2] = rng.choice(out["tag"][n // 2 :], n // 2)  # repeats as well
    out["size"] = rng.integers(0, 1 << 32, n, dtype=np.uint32)
    for name in ("pool", "state", "confidence", "source"):
        out[name] = rng.integers(0, 256, n, dtype=np.uint8)
    out["state"][::3] = rng.integers(0, 3, out["state"][::3].size, dtype=np.uint8)
    out["source"][::2] = SOURCE_PAGE
    return out


def _both_ways(batch: np.ndarray, monkeypatch) -> tuple:
    """(C counters, numpy counters) of one batch."""
    from pooltagscan import stats

    assert stats.native is not None, "the C module is built by the test setup"
    native = TagStats.count(batch)
    with monkeypatch.context() as m:
        m.setattr(stats, "native", None)
        numpy_way = TagStats.count(batch)
    return native, numpy_way


@pytest.mark.parametrize("family", [*LEGACY_FAMILIES, "win11-segheap-x64"])
def test_c_counters_equal_the_numpy_twin_on_the_samples(family, monkeypatch):
    from pooltagscan.scan import run

    image = open_image(DUMPS / f"{family}.raw")
    batch = np.concatenate(list(run(prepare(image))))
    (tags, counts), (want_tags, want_counts) = _both_ways(batch, monkeypatch)
    assert tags.tolist() == want_tags.tolist() and counts.tolist() == want_counts.tolist()
    assert counts.sum(axis=0)[COLUMNS.index("total_allocs")] == batch.size


@pytest.mark.parametrize("n", [0, 1, 700, 50_000])
def test_c_counters_equal_the_numpy_twin_on_hostile_records(n, monkeypatch):
    from pooltagscan.stats import ClassSums
    from pooltagscan.summary import distinct_pages

    batch = _hostile_records(n, seed=n)
    (tags, counts), (want_tags, want_counts) = _both_ways(batch, monkeypatch)
    assert tags.tolist() == want_tags.tolist() and counts.tolist() == want_counts.tolist()
    sums = ClassSums.of(batch)
    assert (sums.records, sums.bytes) == (n, int(batch["size"].sum(dtype=np.int64)))
    on_pages = batch["offset"][batch["source"] == SOURCE_PAGE]
    pages = on_pages // np.uint64(4096)
    in_order = bool(np.all(pages[1:] >= pages[:-1]))
    # Out of address order the C pass says so (-1); in order it counts the pages.
    assert sums.pool_pages == (distinct_pages(on_pages) if in_order else -1)
    assert in_order == (n <= 1)
    ordered = batch[np.argsort(batch["offset"], kind="stable")]
    assert ClassSums.of(ordered).pool_pages == distinct_pages(on_pages)


def test_window_counts_equal_the_numpy_twin_with_and_without_a_filter(monkeypatch):
    from pooltagscan import stats
    from pooltagscan.filters import RecordFilter
    from pooltagscan.summary import WindowCounts

    batch = _hostile_records(20_000, seed=7)
    batch = batch[np.argsort(batch["offset"], kind="stable")]
    for record_filter in (None, RecordFilter.from_names(["P*", "?h*"], states=["free"])):
        got = WindowCounts(record_filter)(batch)
        with monkeypatch.context() as m:
            m.setattr(stats, "native", None)
            want = WindowCounts(record_filter)(batch)
        assert got[1] == want[1]
        assert got[0][0].tolist() == want[0][0].tolist()
        assert got[0][1].tolist() == want[0][1].tolist()
