"""`pooltagscan report`: the dump's tags joined with the tag database and driver scans."""

from __future__ import annotations

import collections
import csv
import io
import json

from conftest import DUMPS, SAMPLES, carved_truth, load_manifest
from test_cli import one_line_error, pooltagscan

DRIVERS = SAMPLES / "drivers"
GOOD_DRIVERS = [
    str(DRIVERS / name)
    for name in ("pooltags_x64.sys", "pooltags_x86.sys", "multiapi_x64.sys", "multiapi_x86.sys")
]
SAMPLE = DUMPS / "win10-1809-x64.raw"


def report_json(*args: str, dump=SAMPLE) -> dict:
    return json.loads(pooltagscan("report", str(dump), "--format", "json", *args).stdout)


def test_planted_driver_tags_are_attributed_to_their_drivers():
    truth = json.loads((DRIVERS / "ground_truth.json").read_text())["drivers"]
    driver_tags = {
        tag: name
        for name, entry in truth.items()
        if entry and entry.get("tags")
        for tag in entry["tags"]
    }
    planted = {a["tag"] for a in load_manifest("win10-1809-x64")["allocations"]}
    shared = planted & set(driver_tags)
    assert shared, "the sample dump should plant tags that the sample drivers allocate"
    doc = report_json("--drivers", *GOOD_DRIVERS)
    rows = {r["tag"]: r for r in doc["tags"]}
    for tag in shared:
        row = rows[tag]
        assert row["status"] == "attributed", tag
        # Files named on the command line are named by their path as given.
        drivers = {c["driver"] for c in row["candidates"]}
        assert str(DRIVERS / driver_tags[tag]) in drivers, (tag, drivers)
    # attributed rows come first, then unknown ones, then database-known ones
    order = [r["status"] for r in doc["tags"]]
    assert order == sorted(order, key=["attributed", "unknown", "known"].index)


def test_known_tags_show_their_description_and_counts():
    manifest = load_manifest("win10-1809-x64")
    live = collections.Counter(a["tag"] for a in carved_truth(manifest) if a["state"] != "free")
    doc = report_json()
    rows = {r["tag"]: r for r in doc["tags"]}
    assert rows["Proc"]["status"] == "known" and rows["Proc"]["owner"] == "nt!ps"
    assert "process" in rows["Proc"]["description"].lower()
    assert {t: r["allocs"] for t, r in rows.items()} == dict(live)
    assert doc["layout"] == "x64" and len(doc["sha256"]) == 64
    unknown = [r for r in doc["tags"] if r["status"] == "unknown"]
    assert unknown and all(r["samples"] and r["samples"][0]["preview"] for r in unknown)
    first = unknown[0]["samples"][0]
    raw = SAMPLE.read_bytes()[first["offset"] : first["offset"] + 64]
    assert bytes.fromhex(first["preview"]) == raw[: len(bytes.fromhex(first["preview"]))]


def test_text_report_fits_100_columns_and_csv_matches():
    text = pooltagscan(
        "report", str(SAMPLE), "--drivers", *GOOD_DRIVERS, "--baseline", str(DUMPS / "win7-x64.raw")
    ).stdout
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "Growth" in text and "sha256" in text
    rows = list(
        csv.DictReader(io.StringIO(pooltagscan("report", str(SAMPLE), "--format", "csv").stdout))
    )
    doc = report_json()
    assert [r["tag"] for r in rows] == [r["tag"] for r in doc["tags"]]


def test_baseline_growth_equals_diff():
    grown = report_json("--baseline", str(DUMPS / "win7-x64.raw"))
    diff = json.loads(
        pooltagscan("diff", str(DUMPS / "win7-x64.raw"), str(SAMPLE), "--format", "json").stdout
    )
    delta = {r["tag"]: (r["delta_allocs"], r["delta_bytes"]) for r in diff["tags"]}
    for row in grown["tags"]:
        assert (row["growth_allocs"], row["growth_bytes"]) == delta[row["tag"]], row["tag"]


def test_bad_driver_is_reported_and_the_report_still_written(tmp_path):
    junk = tmp_path / "junk.sys"
    junk.write_bytes(b"not a driver at all")
    proc = pooltagscan(
        "report",
        str(SAMPLE),
        "--drivers",
        str(junk),
        GOOD_DRIVERS[0],
        "--format",
        "json",
        check_exit=2,
    )
    assert "junk.sys" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["drivers"][0]["driver"] == GOOD_DRIVERS[0]
    one_line_error(pooltagscan("report", str(tmp_path / "none.raw"), check_exit=None), "none.raw")


def forced_layout_truth() -> tuple[set[str], set[str]]:
    """(unconfirmed, unknown) tags of win7-x64 scanned as segment heap, from the records:
    the layout is wrong, so the records are header-shaped noise of every confidence."""
    import numpy as np

    from pooltagscan.inputs import open_image
    from pooltagscan.records import TagNames
    from pooltagscan.scan import prepare, run
    from pooltagscan.tags.database import TagDatabase

    db = TagDatabase.builtin()
    prepared = prepare(open_image(DUMPS / "win7-x64.raw"), "x64-segment-heap", db)
    records = np.concatenate(list(run(prepared)))
    names = TagNames()
    confidences: dict[str, set[int]] = collections.defaultdict(set)
    for tag, conf in zip(records["tag"].tolist(), records["confidence"].tolist()):
        confidences[names(tag)].add(conf)
    unexplained = {t: c for t, c in confidences.items() if not db.is_known(t)}
    unconfirmed = {t for t, c in unexplained.items() if c == {0}}
    return unconfirmed, set(unexplained) - unconfirmed


def test_low_confidence_only_tags_form_the_unconfirmed_group_last():
    unconfirmed, unknown = forced_layout_truth()
    assert unconfirmed  # (every unexplained tag of this run is low-confidence only)
    args = ("report", str(DUMPS / "win7-x64.raw"), "--layout", "x64-segment-heap", "-q")
    doc = json.loads(pooltagscan(*args, "--format", "json").stdout)
    status = {r["tag"]: r["status"] for r in doc["tags"]}
    assert {t for t, s in status.items() if s == "unconfirmed"} == unconfirmed
    assert {t for t, s in status.items() if s == "unknown"} == unknown
    order = [r["status"] for r in doc["tags"]]
    assert order == sorted(order, key=["attributed", "unknown", "known", "unconfirmed"].index)
    assert all(r["low_confidence"] == r["total_allocs"] for r in doc["tags"]
               if r["status"] == "unconfirmed")  # fmt: skip

    rows = list(csv.DictReader(io.StringIO(pooltagscan(*args, "--format", "csv").stdout)))
    assert [(r["tag"], r["status"]) for r in rows] == [(r["tag"], r["status"]) for r in doc["tags"]]
    assert [int(r["low_confidence"]) for r in rows] == [r["low_confidence"] for r in doc["tags"]]

    text = pooltagscan(*args).stdout.splitlines()
    assert text[3].endswith(f"{len(unknown)} unknown, {len(status) - len(unknown) - len(unconfirmed)}"
                            " in the tag database,")  # fmt: skip
    assert text[4].split()[0] == str(len(unconfirmed))
    body = text[text.index(next(line for line in text if line.startswith("Tag "))) + 2 :]
    assert [line[12:23].strip() for line in body] == order
    assert max(len(line) for line in text) <= 100


def test_report_csv_and_json_carry_big_and_small_bytes():
    manifest = load_manifest("win10-1809-x64")
    live, big = collections.Counter(), collections.Counter()
    for a in carved_truth(manifest):
        (big if "entry" in a else live)[a["tag"]] += a["size"] if a["state"] != "free" else 0
    doc = report_json()
    assert {r["tag"]: r["small_bytes"] for r in doc["tags"]} == {t: live[t] for t in live | big}
    assert {r["tag"]: r["big_bytes"] for r in doc["tags"]} == {t: big[t] for t in live | big}
    rows = list(
        csv.DictReader(io.StringIO(pooltagscan("report", str(SAMPLE), "--format", "csv").stdout))
    )
    assert {r["tag"]: int(r["small_bytes"]) for r in rows} == {t: live[t] for t in live | big}
    assert list(rows[0])[-4:] == ["undecided", "low_confidence", "small_bytes", "big_bytes"]


def test_tag_status_rules():
    from pooltagscan.report.model import Candidate, tag_status

    cand = [Candidate("d.sys", "/d.sys", "x64", "ExAllocatePool2", 0x10, "direct", "high")]
    low_only = {"total_allocs": 3, "low_confidence": 3}
    mixed = {"total_allocs": 3, "low_confidence": 2}
    assert tag_status(False, [], low_only) == "unconfirmed"
    assert tag_status(False, [], mixed) == "unknown"
    assert tag_status(False, cand, low_only) == "attributed"  # a driver is evidence
    assert tag_status(True, [], low_only) == "known"


def test_unconfirmed_rows_sort_below_known_ones_whatever_their_bytes():
    import numpy as np

    from pooltagscan.records import RECORD_DTYPE
    from pooltagscan.report.model import build_rows
    from pooltagscan.stats import TagStats
    from pooltagscan.tags.database import TagDatabase

    recs = np.zeros(5, RECORD_DTYPE)
    recs["tag"] = [int.from_bytes(t.encode(), "little") for t in
                   ("Qq1a", "Qq2b", "Qq2b", "Proc", "Qq3c")]  # fmt: skip
    recs["size"] = [0x40, 0x4000, 0x4000, 0x80, 0x20]
    recs["confidence"] = [2, 0, 0, 0, 0]  # Qq1a high; the rest low
    recs["source"] = [0, 1, 0, 0, 0]  # one of Qq2b's is a big-pool allocation
    stats = TagStats()
    stats.add(recs)
    rows = build_rows(stats, TagDatabase.builtin(), [])
    assert [(r.tag, r.status) for r in rows] == [
        ("Qq1a", "unknown"),
        ("Proc", "known"),
        ("Qq2b", "unconfirmed"),
        ("Qq3c", "unconfirmed"),
    ]
    assert (rows[2].bytes, rows[2].counters["big_bytes"]) == (0x8000, 0x4000)


def test_big_pool_samples_are_not_read_at_their_virtual_address_in_a_physical_dump():
    import numpy as np

    from pooltagscan.records import RECORD_DTYPE, SOURCE_BIGPOOL
    from pooltagscan.report.model import SampleCollector
    from pooltagscan.tags.database import TagDatabase

    records = np.zeros(2, RECORD_DTYPE)
    records["tag"] = int.from_bytes(b"Zq9x", "little")  # a tag no database knows
    records["offset"] = [0x1000, 0xFFFFA08F12340000]
    records["size"] = [0x40, 0x3000]
    records["source"] = [0, SOURCE_BIGPOOL]
    records["entry"] = [0, 0x5018]
    for virtual, want in (
        (False, [(0x1000, 0x40)]),
        (True, [(0x1000, 0x40), (0xFFFFA08F12340000, 64)]),
    ):
        collector = SampleCollector(TagDatabase.builtin())
        collector.add(records)
        reads: list[tuple[int, int]] = []

        def read(address: int, length: int, reads=reads) -> bytes:
            reads.append((address, length))
            return b"\x01" * length

        collector.fill_previews(read, virtual)
        assert reads == want
        page, big = (s.as_dict() for s in collector.samples["Zq9x"])
        assert "entry" not in page and (big["source"], big["entry"]) == ("bigpool", 0x5018)
        assert big["preview"] == ("01" * 64 if virtual else "")


def test_driver_folder_walk_passes_over_user_mode_images(tmp_path):
    """As `drivers` does: a user-mode DLL found in a folder is counted on stderr, not a
    problem; the folder's drivers are named by their path under it."""
    proc = pooltagscan("report", str(SAMPLE), "--drivers", str(DRIVERS), "--format", "json")
    assert proc.returncode == 0
    assert (
        f"pooltagscan: {DRIVERS}: 1 file(s) that are not kernel drivers skipped "
        "(user-mode, EFI or native user-mode images)"
    ) in proc.stderr.splitlines()
    doc = json.loads(proc.stdout)
    assert doc["problems"] == []
    names = {d["driver"] for d in doc["drivers"]}
    assert {"pooltags_x64.sys", "version/versioned_x64.sys"} <= names
