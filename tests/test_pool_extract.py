"""`pooltagscan pool` and `pooltagscan extract` against the samples' ground truth.

Every expected value comes from the sample manifests (planted headers, big-page table
entries) and the raw bytes of the samples, not from the scanner.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import defaultdict

import pytest
from conftest import DUMPS, SAMPLES, load_manifest

from pooltagscan import cli
from pooltagscan.extract import safe_tag
from pooltagscan.poolview import parse_address
from pooltagscan.tags.patterns import tag_to_u32

LEGACY = ("xp-x86", "win7-x86", "win7-x64", "win10-1809-x64")
PAGE = 4096


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def pool_json(capsys, dump, address, *extra: str) -> tuple[int, dict, str]:
    status, out, err = run_cli(
        capsys, "pool", str(dump), str(address), "--format", "json", "-q", *extra
    )
    return status, json.loads(out), err


def by_page(manifest: dict) -> dict[int, list[dict]]:
    pages = defaultdict(list)
    for alloc in manifest["allocations"]:
        pages[alloc["offset"] // PAGE].append(alloc)
    return {p: sorted(a, key=lambda a: a["offset"]) for p, a in pages.items()}


# ---------------------------------------------------------------- pool


@pytest.mark.parametrize("family", LEGACY)
def test_pool_lists_the_legacy_page_and_marks_the_holding_chunk(capsys, family):
    manifest = load_manifest(family)
    page, planted = next((p, a) for p, a in sorted(by_page(manifest).items()) if len(a) >= 5)
    target = planted[2]
    address = target["offset"] + target["size"] // 2
    status, doc, _ = pool_json(capsys, DUMPS / f"{family}.raw", hex(address), "--hexdump")
    assert status == 0
    assert doc["page"] == page * PAGE and doc["searched"] == ["page"]
    got = [(b["offset"], b["tag"], b["size"], b["state"], b["pool"]) for b in doc["blocks"]]
    want = [(a["offset"], a["tag"], a["size"], a["state"], a["pool"]) for a in planted]
    assert got == want
    # A complete chain: PreviousSize is the size of the block before, 0 for the first.
    assert [b["previous_size"] for b in doc["blocks"]] == [0] + [a["size"] for a in planted[:-1]]
    assert [b["holding"] for b in doc["blocks"]] == [a is target for a in planted]
    assert doc["holding"]["offset"] == target["offset"]
    assert doc["offset_in_block"] == target["size"] // 2
    raw = (DUMPS / f"{family}.raw").read_bytes()
    block = raw[target["offset"] : target["offset"] + target["size"]]
    assert bytes.fromhex(doc["hexdump"]["data"]) == block
    assert doc["hexdump"]["notes"] == []


def test_pool_table_view_in_windbg_style(capsys):
    planted = by_page(load_manifest("win7-x64"))[1]
    target = planted[2]
    dump = DUMPS / "win7-x64.raw"
    status, out, _ = run_cli(capsys, "pool", str(dump), str(target["offset"] + 4), "--hexdump")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == (
        f"{target['offset'] + 4:#x} is 0x4 bytes into the block at {target['offset']:#x} "
        f"({target['size']:#x} bytes); page 0x1000 of {dump} holds {len(planted)} block(s):"
    )
    rows = lines[3 : 3 + len(planted)]
    marked = [r for r in rows if r.startswith("*")]
    assert len(marked) == 1 and f"{target['offset']:#x}" in marked[0]
    assert f"{target['size']:#x}" in marked[0] and f"{planted[1]['size']:#x}" in marked[0]
    raw = dump.read_bytes()[target["offset"] : target["offset"] + 16]
    first = lines[3 + len(planted) + 2]
    assert first.startswith(f"{target['offset']:08x}  {raw[:8].hex(' ')}  {raw[8:].hex(' ')}")
    assert (
        first.endswith("|")
        and "|" + "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in raw) in first
    )


def test_pool_on_a_segment_heap_page(capsys):
    manifest = load_manifest("win11-segheap-x64")
    page, planted = next((p, a) for p, a in sorted(by_page(manifest).items()) if len(a) >= 5)
    target = planted[3]
    status, doc, _ = pool_json(capsys, DUMPS / "win11-segheap-x64.raw", target["offset"] + 8)
    assert status == 0
    assert doc["page"] == page * PAGE and doc["layout"] == "x64-segment-heap"
    got = [(b["offset"], b["tag"], b["size"], b["pool"]) for b in doc["blocks"]]
    assert got == [(a["offset"], a["tag"], a["size"], a["pool"]) for a in planted]
    assert all(b["previous_size"] is None for b in doc["blocks"])
    assert [b["offset"] for b in doc["blocks"] if b["holding"]] == [target["offset"]]
    status, out, _ = run_cli(
        capsys, "pool", str(DUMPS / "win11-segheap-x64.raw"), hex(target["offset"]), "-q"
    )
    marked = [line for line in out.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1:4] == [
        hex(target["offset"]),
        hex(target["size"]),
        "-",
    ]


def test_pool_finds_a_big_pool_address_of_a_physical_dump(capsys):
    manifest = load_manifest("win7-x64")
    entry = next(e for e in manifest["bigpool"] if not e["crosses"] and e["state"] == "allocated")
    address = entry["offset"] + entry["size"] - 1
    dump = DUMPS / "win7-x64.raw"
    status, doc, _ = pool_json(capsys, dump, hex(address), "--hexdump")
    assert status == 0
    assert doc["page"] is None and doc["searched"] == ["bigpool"]
    held = doc["holding"]
    assert (held["offset"], held["size"], held["tag"], held["entry"], held["source"]) == (
        entry["offset"],
        entry["size"],
        entry["tag"],
        entry["entry"],
        "bigpool",
    )
    assert held["previous_size"] is None and doc["offset_in_block"] == entry["size"] - 1
    assert doc["hexdump"]["data"] is None
    assert "virtual" in doc["hexdump"]["notes"][0]
    status, out, _ = run_cli(capsys, "pool", str(dump), str(address), "--hexdump", "-q")
    assert status == 0
    assert out.splitlines()[0].startswith(
        f"{address:#x} is {entry['size'] - 1:#x} bytes into the big-pool allocation at "
        f"{entry['offset']:#x} ({entry['size']:#x} bytes; big-page table entry at "
        f"{entry['entry']:#x}"
    )
    assert "no bytes shown" in out


def test_pool_in_a_kernel_minidump_works_on_virtual_addresses(capsys):
    files = json.loads((SAMPLES / "formats" / "formats.json").read_text())["files"]
    info = files["minidump-x64.dmp"]
    partial = {p["raw_page"] for p in info["partial"]}
    where = {raw: va for raw, va in info["pages"] if raw not in partial}
    pages = by_page(load_manifest(info["family"]))
    raw_page = next(p for p in sorted(pages) if p in where and len(pages[p]) >= 3)
    planted = pages[raw_page]
    target = planted[1]
    va = where[raw_page] + target["offset"] % PAGE
    dump = SAMPLES / "formats" / "minidump-x64.dmp"
    status, doc, _ = pool_json(capsys, dump, hex(va + 1), "--hexdump")
    assert status == 0
    assert doc["page"] == where[raw_page]
    assert [(b["offset"] % PAGE, b["tag"], b["size"]) for b in doc["blocks"]] == [
        (a["offset"] % PAGE, a["tag"], a["size"]) for a in planted
    ]
    assert doc["holding"]["offset"] == va
    raw = (DUMPS / f"{info['family']}.raw").read_bytes()
    assert (
        bytes.fromhex(doc["hexdump"]["data"])
        == raw[target["offset"] : target["offset"] + target["size"]]
    )


def test_pool_nothing_found_exits_1_with_a_message(capsys):
    manifest = load_manifest("win7-x64")
    text_page = manifest["pages"].index("text")
    dump = DUMPS / "win7-x64.raw"
    status, doc, err = pool_json(capsys, dump, text_page * PAGE + 0x10)
    assert status == 1
    assert doc["holding"] is None and doc["blocks"] == []
    assert err.strip() == (
        f"pooltagscan: {dump}: no pool allocation holds {text_page * PAGE + 0x10:#x}: page "
        f"{text_page * PAGE:#x} holds no pool header; not a kernel virtual address, so the "
        "big-page table was not searched"
    )
    # A kernel virtual address that no big-page entry spans: the table was searched.
    status, out, err = run_cli(capsys, "pool", str(dump), "0xfffff80000000123", "-q")
    assert status == 1 and out == ""
    assert err.strip().endswith("no big-page table entry spans it")


@pytest.mark.parametrize(
    "address, message",
    [
        ("zz", "ADDRESS: 'zz' is not an address (use 0x-hex or decimal)"),
        ("-5", "ADDRESS: '-5' is negative"),
        ("0x", "ADDRESS: '0x' is not an address (use 0x-hex or decimal)"),
        ("0x10000000000000000", "ADDRESS: '0x10000000000000000' is beyond 64 bits"),
        (
            "0x200000",
            (
                "{dump}: ADDRESS 0x200000 is beyond the dump's physical address space "
                "(0x0-0x1fffff) and not an x64 kernel virtual address"
            ),
        ),
    ],
)
def test_pool_bad_address_is_one_line_and_exit_2(capsys, address, message):
    dump = DUMPS / "win7-x64.raw"
    status, out, err = run_cli(capsys, "pool", str(dump), address, "-q")
    assert status == 2 and out == ""
    assert err.splitlines() == [f"pooltagscan: error: {message.format(dump=dump)}"]


def test_pool_x86_rejects_addresses_beyond_32_bits(capsys):
    status, _, err = run_cli(capsys, "pool", str(DUMPS / "win7-x86.raw"), "0x100000000", "-q")
    assert status == 2 and "beyond the x86 address space" in err


def test_parse_address_forms():
    assert parse_address("0x1F") == 31
    assert parse_address("4096") == 4096
    assert parse_address("0xfffff800`00001000") == 0xFFFFF80000001000
    assert parse_address("fffff800`00001000") == 0xFFFFF80000001000  # as WinDbg prints it
    assert parse_address("-0") == 0
    for bad in ("", "1f", "0x-1", "+5", "1.5", "0x1_0", "1_000", "\u0661"):
        with pytest.raises(ValueError):
            parse_address(bad)


# ---------------------------------------------------------------- extract


def read_manifest_csv(folder) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("family", ("win7-x64", "win11-segheap-x64"))
def test_extract_proc_writes_exactly_the_planted_proc_blocks(capsys, tmp_path, family):
    manifest = load_manifest(family)
    dump = DUMPS / f"{family}.raw"
    raw = dump.read_bytes()
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "extract", str(dump), "--tag", "Proc", "--out", str(out))
    assert status == 0
    planted = [a for a in manifest["allocations"] if a["tag"] == "Proc"]
    doc = json.loads((out / "manifest.json").read_text())
    rows = doc["files"]
    assert sorted((r["address"], r["size"]) for r in rows) == sorted(
        (a["offset"], a["size"]) for a in planted
    )
    clipped = 0
    for row in rows:
        # A physical dump's block stops at its page's end (the next page is unrelated).
        length = min(row["size"], PAGE - row["address"] % PAGE)
        clipped += length < row["size"]
        data = raw[row["address"] : row["address"] + length]
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["file"] == f"Proc/{row['address']:016x}.bin"
        assert (out / row["file"]).read_bytes() == data
        assert (row["tag"], row["source"], row["length"]) == ("Proc", "page", length)
    crossing = [a for a in planted if a["offset"] % PAGE + a["size"] > PAGE]
    assert doc["clipped"] == clipped == len(crossing)
    assert bool(crossing) == (family == "win11-segheap-x64")  # VS and LFH blocks may cross
    assert sorted(p.name for p in (out / "Proc").iterdir()) == sorted(
        f"{a['offset']:016x}.bin" for a in planted
    )
    big = sum(e["tag"] == "Proc" and not e["crosses"] for e in manifest["bigpool"])
    assert doc["extracted"] == len(planted) and doc["skipped_bigpool"] == big > 0
    assert doc["bytes"] == sum(r["length"] for r in rows)
    assert f"{big} big-pool allocation(s) skipped" in err
    csv_rows = read_manifest_csv(out)
    assert [(int(r["address"]), r["sha256"], r["file"]) for r in csv_rows] == [
        (r["address"], r["sha256"], r["file"]) for r in rows
    ]
    assert sorted(p.name for p in out.iterdir()) == ["Proc", "manifest.csv", "manifest.json"]


def test_extract_big_pool_from_a_minidump_by_virtual_address(capsys, tmp_path):
    dump = SAMPLES / "formats" / "minidump-x64.dmp"
    out = tmp_path / "out"
    status, _, _ = run_cli(
        capsys, "extract", str(dump), "--tag", "*", "--out", str(out), "--state", "allocated", "-q"
    )
    assert status == 0
    doc = json.loads((out / "manifest.json").read_text())
    big = [r for r in doc["files"] if r["source"] == "bigpool"]
    assert big and doc["skipped_bigpool"] == 0
    for row in big:
        assert (
            row["file"] == f"{safe_tag(tag_to_u32(row['tag']))}/{row['address']:016x}-bigpool.bin"
        )
        data = (out / row["file"]).read_bytes()
        assert len(data) == row["size"] == row["length"]
        assert hashlib.sha256(data).hexdigest() == row["sha256"]


def test_extract_refuses_a_non_empty_folder_unless_forced(capsys, tmp_path):
    dump = DUMPS / "win7-x64.raw"
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("analyst notes")
    status, _, err = run_cli(capsys, "extract", str(dump), "--tag", "Proc", "--out", str(out))
    assert status == 2 and len(err.splitlines()) == 1 and "is not empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    status, _, _ = run_cli(
        capsys, "extract", str(dump), "--tag", "Proc", "--out", str(out), "--force", "-q"
    )
    assert status == 0 and (out / "keep.txt").read_text() == "analyst notes"
    assert (out / "manifest.json").is_file()
    assert not [p for p in out.rglob("*") if p.name.endswith(".pooltagscan-partial")]


def test_extract_never_writes_on_or_among_the_evidence(capsys, tmp_path):
    evidence = tmp_path / "case"
    evidence.mkdir()
    dump = evidence / "memory.raw"
    shutil.copyfile(DUMPS / "win7-x64.raw", dump)
    before = dump.read_bytes()
    link = tmp_path / "link"
    link.symlink_to(evidence)
    for target, words in (
        (dump, "exists and is not a folder"),
        (evidence, "holds the dump"),
        (link, "holds the dump"),
    ):
        status, _, err = run_cli(
            capsys, "extract", str(dump), "--tag", "Proc", "--out", str(target), "--force"
        )
        assert status == 2 and len(err.splitlines()) == 1 and words in err, err
    assert sorted(p.name for p in evidence.iterdir()) == ["memory.raw"]
    assert dump.read_bytes() == before


def test_extract_bad_tag_pattern_is_a_usage_error(capsys, tmp_path):
    status, _, err = run_cli(
        capsys, "extract", str(DUMPS / "win7-x64.raw"), "--tag", "ABCDE", "--out", str(tmp_path)
    )
    assert status == 2 and err.startswith("pooltagscan: error: --tag:")


def test_safe_tag_names():
    assert safe_tag(tag_to_u32("Proc")) == "Proc"
    assert safe_tag(tag_to_u32("Irp ")) == "Irp%20"
    assert safe_tag(int.from_bytes(b"../\x00", "little")) == "%2E%2E%2F%00"
