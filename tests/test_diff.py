"""`pooltagscan diff`: growth per tag equals what the two manifests planted."""

from __future__ import annotations

import collections
import json

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
