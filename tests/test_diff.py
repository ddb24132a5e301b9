"""`pooltagscan diff`: growth per tag equals what the two manifests planted."""

from __future__ import annotations

import collections
import json
import random

from conftest import DUMPS, carved_truth, load_manifest
from test_cli import one_line_error, pooltagscan


def live_counts(family: str) -> tuple[collections.Counter, collections.Counter]:
    allocs: collections.Counter = collections.Counter()
    size: collections.Counter = collections.Counter()
    for a in carved_truth(load_manifest(family)):
        if a["state"] != "free":
            allocs[a["tag"]] += 1
            size[a["tag"]] += a["size"]
    return allocs, size


def test_diff_of_two_dumps_is_the_planted_growth(tmp_path):
    old_allocs, old_bytes = live_counts("win7-x64")
    new_allocs, new_bytes = live_counts("win10-1809-x64")
    saved = tmp_path / "baseline.json"
    pooltagscan(
        "scan", str(DUMPS / "win7-x64.raw"), "--stats", "--format", "json", "-o", str(saved)
    )
    for old in (str(DUMPS / "win7-x64.raw"), str(saved)):
        doc = json.loads(
            pooltagscan("diff", old, str(DUMPS / "win10-1809-x64.raw"), "--format", "json").stdout
        )
        rows = {r["tag"]: r for r in doc["tags"]}
        assert set(rows) == set(old_allocs) | set(new_allocs)
        for tag, row in rows.items():
            assert row["delta_allocs"] == new_allocs[tag] - old_allocs[tag], tag
            assert row["delta_bytes"] == new_bytes[tag] - old_bytes[tag], tag
        deltas = [r["delta_bytes"] for r in doc["tags"]]
        assert deltas == sorted(deltas, reverse=True)


def test_diff_of_a_dump_with_itself_is_empty_when_changed_only():
    dump = str(DUMPS / "win11-segheap-x64.raw")
    rows = pooltagscan("diff", dump, dump, "--changed", "--format", "jsonl").stdout
    assert rows == ""


def test_diff_rejects_foreign_json(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    one_line_error(
        pooltagscan("diff", str(other), str(DUMPS / "win7-x64.raw"), check_exit=None),
        "other.json",
        "not a `pooltagscan scan --stats",
    )


def test_saved_documents_old_and_new_give_the_same_diff(tmp_path):
    """A document written before the new counters and the summary existed still diffs."""
    from pooltagscan.stats import LEGACY_COLUMNS

    saved = tmp_path / "new.json"
    pooltagscan(
        "scan", str(DUMPS / "win7-x64.raw"), "--stats", "--format", "json", "-o", str(saved)
    )
    doc = json.loads(saved.read_text())
    assert "summary" in doc and "live_allocs" in doc["tags"][0]
    old = {k: v for k, v in doc.items() if k != "summary"}
    old["totals"] = {k: doc["totals"][k] for k in LEGACY_COLUMNS}
    old["tags"] = [
        {k: row[k] for k in ("tag", *LEGACY_COLUMNS, "owner", "description")} for row in doc["tags"]
    ]
    legacy = tmp_path / "old.json"
    legacy.write_text(json.dumps(old))
    new_dump = str(DUMPS / "win10-1809-x64.raw")
    diffs = [
        json.loads(pooltagscan("diff", str(p), new_dump, "--format", "json").stdout)["tags"]
        for p in (saved, legacy, DUMPS / "win7-x64.raw")
    ]
    assert diffs[0] == diffs[1] == diffs[2]
    old_allocs, old_bytes = live_counts("win7-x64")
    assert {r["tag"]: r["old_allocs"] for r in diffs[1]} == {
        t: old_allocs[t] for t in {r["tag"] for r in diffs[1]}
    }
    assert {r["tag"]: r["old_bytes"] for r in diffs[1]} == {
        t: old_bytes[t] for t in {r["tag"] for r in diffs[1]}
    }


def test_free_blocks_are_not_allocations_and_big_pool_ones_are():
    """Live = allocated + undecided, whatever the source; free blocks of either source
    are left out (hand-counted on synthetic records)."""
    from test_stats import SYNTH

    from pooltagscan.diff import snapshot_from_stats
    from pooltagscan.stats import TagStats

    stats = TagStats()
    stats.add(SYNTH)
    snap = snapshot_from_stats("synthetic", {}, stats)
    assert snap.allocs == {"Bigx": 1, "Proc": 3, "Thre": 2}
    assert snap.bytes == {"Bigx": 0x5000, "Proc": 0x100 + 0x40 + 0x3000, "Thre": 0x60 + 0x2000}


NEITHER = (
    "not a memory dump nor a saved `scan --stats --format json` or `scan --tracker --format "
    "json` view"
)


def test_diff_refuses_documents_that_are_not_dumps(tmp_path):
    """An HTML report, notes or a JSON array once read as a dump of no tags: every tag of
    the other side was growth. They are refused by what their first bytes are."""
    dump = str(DUMPS / "win7-x64.raw")
    sides = {
        "report.html": (b"<!DOCTYPE html>\n<html><body>pool report</body></html>\n" * 100,
                        "an HTML document"),
        "notes.txt": (b"leak hunt notes: Proc grows, Thre too\n" * 300, "a text file"),
        "rows.json": (b"[" + b'{"tag": "Proc"},' * 300 + b"{}]", "a JSON document"),
        "utf16.txt": (("\ufeff" + "pool notes\r\n" * 400).encode("utf-16-le"), "a text file"),
    }  # fmt: skip
    for name, (data, what) in sides.items():
        path = tmp_path / name
        path.write_bytes(data)
        proc = pooltagscan("diff", str(path), dump, check_exit=None)
        one_line_error(proc)
        assert proc.stderr == f"pooltagscan: error: {path}: this is {what}, {NEITHER}\n"
        later = pooltagscan("diff", dump, str(path), "-q", check_exit=2)
        assert later.stderr == proc.stderr
    archive = tmp_path / "saved.zip"
    archive.write_bytes(b"PK\x03\x04" + bytes(8192))
    one_line_error(
        pooltagscan("diff", str(archive), dump, check_exit=None),
        f"{archive}: this is a zip archive, not a memory dump",
    )


def test_diff_refuses_a_raw_file_without_pool_structure(tmp_path):
    """A flat file proves it is memory only by its pool pages: zeros and noise prove none."""
    dump = str(DUMPS / "win7-x64.raw")
    rng = random.Random(10)
    for name, data in {
        "zeros.raw": bytes(65536),
        "noise.raw": bytes(rng.getrandbits(8) for _ in range(65536)),
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        proc = pooltagscan("diff", str(path), dump, check_exit=None)
        one_line_error(proc)
        assert proc.stderr == (
            f"pooltagscan: error: {path}: no pool structure proven in the sampled pages "
            "(x86 chains 0, x64 chains 0, segment-heap pages 0, xp votes 0, vista votes 0): "
            f"{NEITHER}\n"
        )


def test_diff_warns_when_the_sides_are_different_systems(tmp_path):
    x86, x64 = str(DUMPS / "win7-x86.raw"), str(DUMPS / "win7-x64.raw")
    proc = pooltagscan("diff", x86, x64, "-o", "/dev/null")
    assert proc.returncode == 0
    assert proc.stderr.splitlines()[-1] == (
        f"pooltagscan: warning: {x86} and {x64} differ in architecture (x86 vs x64) and layout "
        "(x86 vs x64); their per-tag counts are not comparable like for like"
    )
    saved = tmp_path / "seg.json"
    pooltagscan("scan", str(DUMPS / "win11-segheap-x64.raw"), "--stats", "--format", "json",
                "-o", str(saved))  # fmt: skip
    proc = pooltagscan("diff", str(saved), x64, "-o", "/dev/null")
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == [
        (
            f"pooltagscan: warning: {saved} and {x64} differ in layout (x64-segment-heap vs x64); "
            "their per-tag counts are not comparable like for like"
        )
    ]
    same = pooltagscan("diff", x64, str(DUMPS / "win10-1809-x64.raw"), "-o", "/dev/null")
    assert "warning" not in same.stderr
    assert pooltagscan("diff", x86, x64, "-q", "-o", "/dev/null").stderr == ""
