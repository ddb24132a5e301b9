"""`scan --yara`: each hit is placed in the allocation that holds it."""

from __future__ import annotations

import json

from conftest import DUMPS, REPO, load_manifest
from test_cli import one_line_error, pooltagscan

SAMPLE = DUMPS / "win10-1809-x64.raw"


def unique_snippet(data: bytes, manifest: dict, tag: str) -> tuple[dict, int, bytes]:
    """An allocation of `tag` and 16 bytes inside its data that occur once in the dump."""
    for alloc in manifest["allocations"]:
        if alloc["tag"] != tag or alloc["state"] != "allocated" or alloc["size"] < 64:
            continue
        for inner in range(16, alloc["size"] - 16, 8):
            snippet = data[alloc["offset"] + inner : alloc["offset"] + inner + 16]
            if len(set(snippet)) > 8 and data.count(snippet) == 1:
                return alloc, inner, snippet
    raise AssertionError(f"no unique snippet in a {tag} allocation")


def test_hit_reports_its_allocation(tmp_path):
    data = SAMPLE.read_bytes()
    alloc, inner, snippet = unique_snippet(data, load_manifest("win10-1809-x64"), "WdRv")
    rule = tmp_path / "probe.yar"
    pattern = snippet.hex(" ")
    rule.write_text("rule probe { strings: $s = { " + pattern + " } condition: $s }")
    rows = [
        json.loads(line)
        for line in pooltagscan(
            "scan", str(SAMPLE), "--yara", str(rule), "--format", "jsonl"
        ).stdout.splitlines()
    ]
    assert rows == [
        {
            "rule": "probe",
            "string": "$s",
            "address": alloc["offset"] + inner,
            "data": snippet.hex(),
            "tag": "WdRv",
            "allocation": alloc["offset"],
            "allocation_size": alloc["size"],
            "offset_in_allocation": inner,
        }
    ]
    table = pooltagscan("scan", str(SAMPLE), "--yara", str(rule)).stdout
    assert f"{alloc['offset']:#x}" in table and "WdRv" in table


def test_tag_filter_and_hits_outside_pool(tmp_path):
    rule = tmp_path / "text.yar"
    rule.write_text('rule text { strings: $s = "Thread" condition: $s }')
    rows = [
        json.loads(line)
        for line in pooltagscan(
            "scan", str(SAMPLE), "--yara", str(rule), "--format", "jsonl"
        ).stdout.splitlines()
    ]
    manifest = load_manifest("win10-1809-x64")
    kinds = manifest["pages"]
    assert rows and all(r["tag"] is None for r in rows if kinds[r["address"] // 4096] == "text")
    only = pooltagscan(
        "scan", str(SAMPLE), "--yara", str(rule), "--format", "jsonl", "--tag", "Thre"
    ).stdout.splitlines()
    assert all(json.loads(line)["tag"] == "Thre" for line in only)


def test_shipped_example_rules_place_hits_like_the_manifest():
    proc = pooltagscan(
        "scan", str(SAMPLE), "--yara", str(REPO / "rules" / "memory"), "--format", "json"
    )
    hits = json.loads(proc.stdout)["yara_hits"]
    allocations = load_manifest("win10-1809-x64")["allocations"]
    assert {h["rule"] for h in hits} == {"Device_Path_In_Pool"}  # the paths the generator wrote
    inside = 0
    for hit in hits:
        owner = [
            a
            for a in allocations
            if a["offset"] <= hit["address"] < a["offset"] + a["size"]
            and a["offset"] // 4096 == hit["address"] // 4096
        ]
        if owner:
            inside += 1
            assert (hit["tag"], hit["allocation"]) == (owner[0]["tag"], owner[0]["offset"])
        else:
            assert hit["tag"] is None and hit["allocation"] is None
    assert inside and inside < len(hits)


def test_bad_rules(tmp_path):
    bad = tmp_path / "bad.yar"
    bad.write_text("rule broken { condition: }")
    one_line_error(
        pooltagscan("scan", str(SAMPLE), "--yara", str(bad), check_exit=None), "YARA rules"
    )
