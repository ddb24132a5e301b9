"""`scan --tracker` (PoolMon offline) and `diff --tracker`, against the samples' planted
tracker tables."""

from __future__ import annotations

import json

from conftest import DUMPS, load_manifest
from test_cli import jsonl, one_line_error, pooltagscan

from pooltagscan.scanner.tracker import COUNTERS

OLD, NEW = "win7-x64", "win10-1809-x64"


def planted(family: str) -> dict[str, dict[str, int]]:
    """Tracker rows a scan can read whole, by tag."""
    return {
        r["tag"]: {c: r[c] for c in COUNTERS}
        for r in load_manifest(family)["tracker"]
        if not r["crosses"]
    }


def live(row: dict[str, int]) -> int:
    return row["nonpaged_allocs"] - row["nonpaged_frees"] + row["paged_allocs"] - row["paged_frees"]


def test_tracker_jsonl_rows_are_the_kernel_counters():
    for family in ("xp-x86", "win11-segheap-x64"):
        rows = jsonl(pooltagscan("scan", str(DUMPS / f"{family}.raw"), "--tracker", "-q",
                                 "--format", "jsonl"))  # fmt: skip
        assert all(list(r) == ["tag", *COUNTERS] for r in rows)
        assert {r["tag"]: {c: r[c] for c in COUNTERS} for r in rows} == planted(family)


def test_tracker_table_is_poolmon_like():
    proc = pooltagscan("scan", str(DUMPS / f"{OLD}.raw"), "--tracker", "--sort", "tag")
    lines = proc.stdout.splitlines()
    cut = sorted(r["tag"] for r in load_manifest(OLD)["tracker"] if r["crosses"])
    assert lines[0].startswith("kernel pool tracker table: 5 page(s) found")
    assert lines[0].endswith(", ".join(cut))
    assert lines[1].split() == ["Tag", "Type", "Allocs", "Frees", "Diff", "Bytes", "Per", "Alloc",
                                "Owner"]  # fmt: skip
    want = planted(OLD)
    proc_np = next(line for line in lines[3:] if line.startswith("Proc") and " Nonp " in line)
    p = want["Proc"]
    diff = p["nonpaged_allocs"] - p["nonpaged_frees"]
    assert proc_np.split()[1:7] == [
        "Nonp",
        str(p["nonpaged_allocs"]),
        str(p["nonpaged_frees"]),
        str(diff),
        str(p["nonpaged_bytes"]),
        str(p["nonpaged_bytes"] // diff),
    ]


def test_diff_of_tracker_views(tmp_path):
    old, new = planted(OLD), planted(NEW)
    saved = tmp_path / "old-tracker.json"
    pooltagscan("scan", str(DUMPS / f"{OLD}.raw"), "--tracker", "--format", "json", "-q",
                "-o", str(saved))  # fmt: skip
    doc = json.loads(saved.read_text())
    assert doc["kind"] == "pooltagscan-tracker" and doc["tracker_pages"] == 5
    for baseline in (str(DUMPS / f"{OLD}.raw"), str(saved)):
        out = pooltagscan("diff", baseline, str(DUMPS / f"{NEW}.raw"), "--tracker", "--format",
                          "json", "-q").stdout  # fmt: skip
        result = json.loads(out)
        assert result["view"] == "tracker"
        rows = {r["tag"]: r for r in result["tags"]}
        assert rows.keys() == old.keys() | new.keys()
        for tag, row in rows.items():
            want = live(new.get(tag, dict.fromkeys(COUNTERS, 0))) - live(
                old.get(tag, dict.fromkeys(COUNTERS, 0))
            )
            assert row["delta_allocs"] == want, tag
    # A tracker view is not compared with carved statistics.
    one_line_error(
        pooltagscan("diff", str(saved), str(DUMPS / f"{NEW}.raw"), "-q", check_exit=None),
        "cannot be compared",
        "--tracker",
    )


def test_tracker_refuses_other_views():
    dump = str(DUMPS / f"{OLD}.raw")
    one_line_error(pooltagscan("scan", dump, "--tracker", "--stats", check_exit=None), "--tracker")
    one_line_error(
        pooltagscan("scan", dump, "--tracker", "--no-tables", check_exit=None), "--no-tables"
    )


def test_stats_show_the_kernel_count_and_flag_the_planted_anomalies():
    for family in ("win7-x86", "win11-segheap-x64"):
        manifest = load_manifest(family)
        doc = json.loads(pooltagscan("scan", str(DUMPS / f"{family}.raw"), "--stats", "-q",
                                     "--format", "json").stdout)  # fmt: skip
        assert doc["tracker_pages"] >= 3
        rows = {r["tag"]: r for r in doc["tags"]}
        anomalies = manifest["tracker_anomalies"]
        cut = {r["tag"] for r in manifest["tracker"] if r["crosses"]}
        flags = {t: r["tracker_flag"] for t, r in rows.items() if r["tracker_flag"]}
        assert flags == {
            anomalies["untracked"]: "untracked",
            anomalies["exceeds"]: "exceeds-tracker",
            **{t: "tracker-entry-cut" for t in cut if t in rows},
        }
        kernel = planted(family)
        for tag, row in rows.items():
            if tag in kernel:
                assert row["tracker_live"] == live(kernel[tag]), tag
                share = row["live_allocs"] / row["tracker_live"] if row["tracker_live"] else None
                assert row["tracked_share"] == (None if share is None else round(share, 4))
            else:
                assert row["tracker_live"] is None and row["tracked_share"] is None


def test_stats_without_a_tracker_table_say_nothing_of_it(tmp_path):
    data = (DUMPS / f"{OLD}.raw").read_bytes()
    pages = load_manifest(OLD)["pages"]
    wiped = bytearray(data)
    for i, kind in enumerate(pages):
        if kind == "tracker-table":
            wiped[i * 4096 : (i + 1) * 4096] = bytes(4096)
    dump = tmp_path / "no-tracker.raw"
    dump.write_bytes(bytes(wiped))
    doc = json.loads(pooltagscan("scan", str(dump), "--stats", "-q", "--format", "json").stdout)
    assert "tracker_pages" not in doc
    assert all(r["tracker_live"] is None and r["tracker_flag"] is None for r in doc["tags"])
    table = pooltagscan("scan", str(dump), "--stats", "-q").stdout
    assert "Kernel" not in table and "Description" in table
    proc = pooltagscan("scan", str(dump), "--tracker")
    assert proc.stdout == "no pool tracker table found in this dump\n"
    assert "no pool tracker table found" in proc.stderr
