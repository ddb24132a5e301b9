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
        drivers = {c["driver"] for c in row["candidates"]}
        assert driver_tags[tag] in drivers, (tag, drivers)
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
    assert json.loads(proc.stdout)["drivers"][0]["driver"] == "pooltags_x64.sys"
    one_line_error(pooltagscan("report", str(tmp_path / "none.raw"), check_exit=None), "none.raw")
