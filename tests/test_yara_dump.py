"""`scan --yara`: each hit is placed in the allocation that holds it."""

from __future__ import annotations

import csv
import io
import json

from conftest import DUMPS, REPO, load_manifest
from test_cli import one_line_error, pooltagscan

from pooltagscan.yarascan import printable_ascii, printable_utf16

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
    address = alloc["offset"] + inner
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
            "offset_in_allocation_hex": f"{inner:#x}",
            "length": 16,
            "ascii": printable_ascii(snippet),
            "utf16": printable_utf16(snippet),
            "before": data[address - 16 : address].hex(),
            "after": data[address + 16 : address + 32].hex(),
            "context": printable_ascii(data[address - 16 : address])
            + f"[{printable_ascii(snippet)}]"
            + printable_ascii(data[address + 16 : address + 32]),
            "virtual_address": None,
        }
    ]
    assert address // 4096 == (address - 16) // 4096 == (address + 31) // 4096
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
    manifest = load_manifest("win10-1809-x64")
    allocations = manifest["allocations"]
    # The loaded drivers' pages (gen_images) are PE images: that rule is right to hit them.
    images = [h for h in hits if manifest["pages"][h["address"] // 4096] == "pe-image"]
    assert {h["rule"] for h in images} == {"PE_Image_In_Pool"}
    hits = [h for h in hits if h not in images]
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


# A UTF-16 device path and an ASCII word the sample generator wrote into pool blocks.
CONTEXT_RULES = r"""
rule dev { strings: $s = "\\Device\\HarddiskVolume" wide condition: $s }
rule thr { strings: $t = "Thread" condition: $t }
"""
DEV_HIT = {
    "rule": "dev",
    "string": "$s",
    "address": 0x9CB0,
    "data": "\\Device\\HarddiskVolume".encode("utf-16-le").hex(),
    "tag": "Qx9p",
    "allocation": 0x91A0,
    "allocation_size": 3680,
    "offset_in_allocation": 0xB10,
    "offset_in_allocation_hex": "0xb10",
    "length": 44,
    "ascii": "\\.D.e.v.i.c.e.\\.H.a.r.d.d.i.s.k.V.o.l.u.m.e.",
    "utf16": "\\Device\\HarddiskVolume",
    "before": "00" * 16,
    "after": "32005c00550073006500720073005c00",
    "context": "........[\\Device\\HarddiskVolume]2\\Users\\",
    "virtual_address": None,
}
THR_HIT = {
    "rule": "thr",
    "string": "$t",
    "address": 25216,
    "data": "546872656164",
    "tag": "ZqX1",
    "allocation": 25072,
    "allocation_size": 448,
    "offset_in_allocation": 144,
    "offset_in_allocation_hex": "0x90",
    "length": 6,
    "ascii": "Thread",
    "utf16": None,
    "before": "2a000000000000006e2a000000000000",
    "after": "506f6f6c000000000000dc8300000000",
    "context": "*.......n*......[Thread]Pool............",
    "virtual_address": None,
}


def test_hits_show_the_matched_text_and_its_context(tmp_path):
    rule = tmp_path / "context.yar"
    rule.write_text(CONTEXT_RULES)
    data = SAMPLE.read_bytes()
    assert data[0x9CB0 - 16 : 0x9CB0 + 44 + 16].hex() == (
        DEV_HIT["before"] + DEV_HIT["data"] + DEV_HIT["after"]
    )
    assert data[25216 - 16 : 25216 + 6 + 16].hex() == (
        THR_HIT["before"] + THR_HIT["data"] + THR_HIT["after"]
    )
    args = ("scan", str(SAMPLE), "--yara", str(rule))
    rows = [
        json.loads(line) for line in pooltagscan(*args, "--format", "jsonl").stdout.splitlines()
    ]
    by_address = {r["address"]: r for r in rows}
    assert by_address[0x9CB0] == DEV_HIT and by_address[25216] == THR_HIT
    doc = json.loads(pooltagscan(*args, "--format", "json").stdout)
    assert doc["yara_hits"] == rows
    table = pooltagscan(*args).stdout.splitlines()
    assert table[0].endswith("  +Off  Context [match]")
    assert (
        "            0x9cb0  dev                          $s         Qx9p               0x91a0  +0xb10  "
        "........[\\Device\\HarddiskVolume]2\\Users\\"
    ) in table
    assert (
        "            0x6280  thr                          $t         ZqX1               0x61f0   +0x90  "
        "*.......n*......[Thread]Pool............"
    ) in table
    rows_csv = list(csv.DictReader(io.StringIO(pooltagscan(*args, "--format", "csv").stdout)))
    got = next(r for r in rows_csv if r["address"] == str(0x9CB0))
    assert got == {k: "" if v is None else str(v) for k, v in DEV_HIT.items()}


def test_context_stays_in_the_page_of_the_match(tmp_path):
    """Bytes of the neighbouring physical page are unrelated memory: never context."""
    data = SAMPLE.read_bytes()
    page = 0x9000  # the Qx9p block's page: find 8 unique bytes that start it
    snippet = data[page : page + 8]
    assert data.count(snippet) == 1
    rule = tmp_path / "edge.yar"
    rule.write_text("rule edge { strings: $e = { " + snippet.hex(" ") + " } condition: $e }")
    (row,) = [
        json.loads(line)
        for line in pooltagscan(
            "scan", str(SAMPLE), "--yara", str(rule), "--format", "jsonl"
        ).stdout.splitlines()
    ]
    assert (row["address"], row["before"], row["after"]) == (
        page,
        "",
        data[page + 8 : page + 24].hex(),
    )


def test_decoding_helpers():
    assert printable_ascii(b"A\x00z\x7f~") == "A.z.~"
    assert printable_utf16("Mup".encode("utf-16-le")) == "Mup"
    assert printable_utf16(b"Thread") is None  # U+6854 ...: ASCII read as UTF-16
    assert printable_utf16(b"abc") is None  # odd length
