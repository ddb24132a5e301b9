"""The kernel page tables planted in the sample dumps (samples/gen_paging.py): the
root found, the translations and the big-pool bytes read through them, all against
the manifests' ground truth."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import DUMPS, SAMPLES, load_manifest, shared_file

from pooltagscan import cli
from pooltagscan.addressing import SEARCH, kernel_space
from pooltagscan.inputs import open_image

PAGE = 4096
PAGED = {"win10-1809-x64": ("x64", "x64"), "win7-x86": ("x86-pae", "x86"),
         "xp-x86": ("x86", "x86")}  # fmt: skip


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def physical_bytes(raw: bytes, pages: list[int | None], size: int) -> bytes:
    """An allocation's bytes from its pages' physical addresses (None, or beyond the
    image: zeros)."""
    out = bytearray()
    for i, phys in enumerate(pages):
        n = min(PAGE, size - i * PAGE)
        if n <= 0:
            break
        held = b"" if phys is None else raw[phys : phys + n]
        out += held + bytes(n - len(held))
    return bytes(out)


@pytest.mark.parametrize("family", sorted(PAGED))
def test_root_and_every_manifest_translation_are_exact(family):
    manifest = load_manifest(family)
    truth = manifest["kernel_space"]
    mode, arch = PAGED[family]
    image = open_image(DUMPS / f"{family}.raw")
    try:
        space = kernel_space(image, arch)
        assert (space.method, space.tables.mode) == (SEARCH, mode)
        assert space.dtb == truth["dtb"]
        assert space.root.index == truth["self_map_index"]
        if mode == "x86-pae":
            assert list(space.tables.pae_directories) == truth["page_directories"]
        rows = manifest["kernel_mappings"]
        assert {r["page_size"] for r in rows} >= {PAGE}
        assert any(None in r["pages"] for r in rows)  # prototype / paged-out PTEs
        for row in rows:
            got = [
                space.translate(row["offset"] + i * PAGE).physical for i in range(len(row["pages"]))
            ]
            assert got == row["pages"], hex(row["offset"])
        window = truth["pool_window"]
        for alloc in manifest["allocations"][::97]:
            va = window["va"] + alloc["offset"]
            assert space.translate(va).physical == alloc["offset"]
    finally:
        image.close()


def test_families_without_tables_have_none():
    image = open_image(DUMPS / "win7-x64.raw")
    try:
        space = kernel_space(image, "x64")
        assert not space.available and "kernel_space" not in load_manifest("win7-x64")
    finally:
        image.close()


def mapped_row(family: str) -> dict:
    """A 4 KiB-mapped allocation that no other big-pool entry overlaps (the random
    addresses of the sample tables may overlap), the one with absent pages if it can."""
    manifest = load_manifest(family)

    def alone(row: dict) -> bool:
        start, end = row["offset"], row["offset"] + row["size"]
        return not any(
            e["offset"] < end and start < e["offset"] + e["size"]
            for e in manifest["bigpool"]
            if e["entry"] != row["entry"]
        )

    rows = [r for r in manifest["kernel_mappings"] if r["page_size"] == PAGE and alone(r)]
    return min(rows, key=lambda r: None not in r["pages"])


@pytest.mark.parametrize("family", sorted(PAGED))
def test_pool_hexdump_shows_a_big_pool_allocations_bytes(capsys, family):
    row = mapped_row(family)
    raw = (DUMPS / f"{family}.raw").read_bytes()
    status, out, _ = run_cli(
        capsys, "pool", str(DUMPS / f"{family}.raw"), hex(row["offset"] + 5), "--hexdump",
        "--format", "json", "-q",
    )  # fmt: skip
    assert status == 0
    doc = json.loads(out)
    assert doc["holding"]["offset"] == row["offset"] and doc["holding"]["source"] == "bigpool"
    want = physical_bytes(raw, row["pages"], min(row["size"], 64 << 10))
    assert bytes.fromhex(doc["hexdump"]["data"]) == want
    notes = " ".join(doc["hexdump"]["notes"])
    assert "read through the kernel page tables" in notes
    if None in row["pages"][:16]:
        assert "read as 00" in notes  # the prototype and paged-out pages


def test_extract_writes_big_pool_allocations_with_missing_pages_noted(capsys, tmp_path):
    family = "win10-1809-x64"
    manifest = load_manifest(family)
    raw = (DUMPS / f"{family}.raw").read_bytes()
    rows = manifest["kernel_mappings"]
    tags = sorted({r["tag"] for r in rows})
    out = tmp_path / "out"
    args = ["extract", str(DUMPS / f"{family}.raw"), "--out", str(out), "--state", "allocated"]
    for tag in tags:
        args += ["--tag", tag]
    status, _, err = run_cli(capsys, *args)
    assert status == 0
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["kernel_space"]["dtb"] == manifest["kernel_space"]["dtb"]
    assert doc["skipped_bigpool"] == 0
    files = {(f["address"], f["entry"]): f for f in doc["files"] if f["source"] == "bigpool"}
    for row in rows:
        f = files[(row["offset"], row["entry"])]
        want = physical_bytes(raw, row["pages"], row["size"])
        data = (out / f["file"]).read_bytes()
        assert data == want and f["sha256"] == hashlib.sha256(want).hexdigest()
        held = sum(
            0 if p is None else max(0, min(PAGE, row["size"] - i * PAGE, len(raw) - p))
            for i, p in enumerate(row["pages"])
        )
        assert f["missing"] == row["size"] - held
    # An allocation the tables do not map: zeros, all missing.
    mapped = {r["offset"] for r in rows}
    other = [f for f in files.values() if f["address"] not in mapped]
    assert other and all(f["missing"] == f["length"] for f in other)
    assert doc["translated_bigpool"] == len(files)
    assert "read through the kernel page tables" in err


def test_scan_reports_the_kernel_space_in_json_and_verbose(capsys):
    dump = str(DUMPS / "win7-x86.raw")
    status, out, err = run_cli(capsys, "scan", dump, "--format", "json", "-v", "--tag", "Proc")
    assert status == 0
    meta = json.loads(out)["kernel_space"]
    truth = load_manifest("win7-x86")["kernel_space"]
    assert (meta["paging"], meta["dtb"], meta["method"]) == ("x86-pae", truth["dtb"], SEARCH)
    assert meta["candidates"] == 1 and meta["self_map_index"] == 3
    assert f"x86 PAE, DTB {truth['dtb']:#x}, found by the self-reference search" in err
    # --no-tables: no search, no key.
    status, out, _ = run_cli(capsys, "scan", dump, "--format", "json", "--no-tables", "-q")
    assert "kernel_space" not in json.loads(out)


def test_crash_dump_header_dtb_that_is_not_a_table_is_a_note():
    """The sample crash dumps carry an invented DirectoryTableBase and every 4th page
    only: the header's root is refused, the search finds nothing whole: notes only."""
    image = open_image(SAMPLES / "formats" / "crash-full-x64.dmp")
    try:
        assert image.page_table_root == 0x1AA000
        space = kernel_space(image, "x64")
        assert not space.available
        assert "DirectoryTableBase 0x1aa000 does not hold" in space.notes[0]
    finally:
        image.close()


def test_real_arm64_minidump_gets_the_clear_note(capsys):
    dump = shared_file("win11-arm64-triage.dmp")
    status, out, err = run_cli(capsys, "scan", str(dump), "--format", "json", "-v", "--tag", "Proc")
    assert status == 0
    meta = json.loads(out)["kernel_space"]
    assert meta["available"] is False
    assert "without page tables" in meta["notes"][0]
    assert "kernel address space: none" in err


def big_pool_probe(family: str) -> tuple[dict, int, int, bytes]:
    """(mapping row, page index, offset in that page, 16 bytes) inside a big-pool
    allocation: a virtual page of it that no other big-page entry's range covers, at a
    physical page that no other mapping aliases and that holds no planted pool page,
    the 16 bytes found once in the dump."""
    manifest = load_manifest(family)
    raw = (DUMPS / f"{family}.raw").read_bytes()
    rows = manifest["kernel_mappings"]
    uses: dict[int, int] = {}
    for row in rows:
        for phys in row["pages"]:
            if phys is not None:
                uses[phys] = uses.get(phys, 0) + 1
    pool = {a["offset"] // PAGE for a in manifest["allocations"]}

    def alone(row: dict, va: int) -> bool:
        return not any(
            e["offset"] < va + PAGE and va < e["offset"] + e["size"]
            for e in manifest["bigpool"]
            if e["entry"] != row["entry"]
        )

    for row in rows:
        for i, phys in enumerate(row["pages"]):
            if phys is None or uses[phys] != 1 or phys // PAGE in pool:
                continue
            if not alone(row, row["offset"] + i * PAGE):
                continue
            for inner in range(64, min(PAGE, row["size"] - i * PAGE) - 32, 8):
                snippet = raw[phys + inner : phys + inner + 16]
                if len(set(snippet)) > 8 and raw.count(snippet) == 1:
                    return row, i, inner, snippet
    raise AssertionError(f"no probe bytes in a mapped big-pool allocation of {family}")


@pytest.mark.parametrize("family", sorted(PAGED))
def test_yara_hit_in_a_big_pool_allocation_is_placed_through_the_page_tables(
    capsys, tmp_path, family
):
    row, page, inner, snippet = big_pool_probe(family)
    rule = tmp_path / "big.yar"
    rule.write_text("rule big { strings: $b = { " + snippet.hex(" ") + " } condition: $b }")
    dump = str(DUMPS / f"{family}.raw")
    status, out, err = run_cli(capsys, "scan", dump, "--yara", str(rule), "--format", "jsonl")
    assert status == 0, err
    (hit,) = [json.loads(line) for line in out.splitlines()]
    offset = page * PAGE + inner
    keys = ("address", "tag", "allocation", "allocation_size", "offset_in_allocation",
            "offset_in_allocation_hex", "virtual_address")  # fmt: skip
    assert {k: hit[k] for k in keys} == {
        "address": row["pages"][page] + inner,
        "tag": row["tag"],
        "allocation": row["offset"],
        "allocation_size": row["size"],
        "offset_in_allocation": offset,
        "offset_in_allocation_hex": f"{offset:#x}",
        "virtual_address": row["offset"] + offset,
    }
    # The table shows the allocation's virtual address and the offset in hex.
    status, out, _ = run_cli(capsys, "scan", dump, "--yara", str(rule), "-q")
    assert f"{row['tag']:<4}   {row['offset']:#18x} +{offset:#x}" in out


def test_yara_without_page_tables_says_big_pool_hits_are_not_placed(capsys, tmp_path):
    rule = tmp_path / "any.yar"
    rule.write_text('rule thread { strings: $s = "Thread" condition: $s }')
    dump = str(DUMPS / "win7-x64.raw")
    status, _, err = run_cli(capsys, "scan", dump, "--yara", str(rule), "--format", "jsonl")
    assert status == 0
    _, records, _ = run_cli(capsys, "scan", dump, "--source", "bigpool", "--format", "jsonl")
    bigpool = len(records.splitlines())
    assert bigpool > 500
    assert (
        f"{dump}: hits inside the {bigpool:,} big-pool allocations are not placed: no kernel "
        "page-table root found"
    ) in err
    # --no-tables: no big-pool records, so nothing to say.
    status, _, err = run_cli(capsys, "scan", dump, "--yara", str(rule), "--no-tables")
    assert status == 0 and "big-pool" not in err


def window_va(family: str, physical: int) -> int:
    """The kernel virtual address at which the sample's pool window maps `physical`."""
    return load_manifest(family)["kernel_space"]["pool_window"]["va"] + physical


@pytest.mark.parametrize("family", sorted(PAGED))
def test_pool_of_a_kernel_virtual_address_shows_its_translated_page(capsys, family):
    manifest = load_manifest(family)
    truth = manifest["kernel_space"]
    dump = str(DUMPS / f"{family}.raw")
    alloc = [a for a in manifest["allocations"] if a["state"] == "allocated"][3]
    va = window_va(family, alloc["offset"] + 0x18)
    status, out, _ = run_cli(capsys, "pool", dump, hex(va), "--format", "json", "-q")
    assert status == 0
    doc = json.loads(out)
    assert doc["holding"]["offset"] == alloc["offset"]
    assert doc["holding"]["tag"] == alloc["tag"] and doc["holding"]["source"] == "page"
    assert (doc["address"], doc["offset_in_block"]) == (va, 0x18)
    assert doc["page"] == alloc["offset"] - alloc["offset"] % PAGE
    assert doc["searched"] == ["page"]  # found in the page: no full scan for big pool
    translation = doc["translation"]
    assert translation["physical"] == alloc["offset"] + 0x18 and translation["why"] is None
    assert (translation["virtual"], translation["dtb"]) == (va, truth["dtb"])
    assert translation["method"] == SEARCH
    # The table's headline says the translation, then the holding block.
    status, out, _ = run_cli(capsys, "pool", dump, hex(va), "-q")
    size = translation["page_size"]
    unit = "" if size == PAGE else f" in a {size >> 20} MiB page"
    assert out.splitlines()[0] == (
        f"{va:#x} translates to physical {alloc['offset'] + 0x18:#x}{unit} (kernel page "
        f"tables: DTB {truth['dtb']:#x}, found by the self-reference search); {va:#x} is "
        f"0x18 bytes into the block at {alloc['offset']:#x} ({alloc['size']:#x} bytes); "
        f"page {doc['page']:#x} of {dump} holds {len(doc['blocks'])} block(s):"
    )


def test_pool_of_a_kernel_virtual_address_that_no_block_holds(capsys):
    family = "win10-1809-x64"
    manifest = load_manifest(family)
    dump = str(DUMPS / f"{family}.raw")
    zeros = manifest["pages"].index("zeros") * PAGE
    tables = f"kernel page tables: DTB {manifest['kernel_space']['dtb']:#x}, found by the "
    tables += "self-reference search"
    va = window_va(family, zeros + 0x100)
    status, out, err = run_cli(capsys, "pool", dump, hex(va), "--format", "json", "-q")
    assert status == 1
    doc = json.loads(out)
    assert doc["holding"] is None and doc["page"] == zeros and doc["blocks"] == []
    assert doc["searched"] == ["page", "bigpool"]
    assert doc["translation"]["physical"] == zeros + 0x100
    assert err == (
        f"pooltagscan: {dump}: no pool allocation holds {va:#x}: it translates to physical "
        f"{zeros + 0x100:#x} in a 2 MiB page ({tables}), where page {zeros:#x} holds no pool "
        "header; no big-page table entry spans it\n"
    )
    # An address the tables do not map.
    status, out, err = run_cli(capsys, "pool", dump, "0xfffff80000000000", "--format", "json")
    assert status == 1
    assert json.loads(out)["translation"]["why"] == "not present"
    assert err.endswith(
        f"{dump}: no pool allocation holds 0xfffff80000000000: maps no physical page "
        f"(not present; {tables}); no big-page table entry spans it\n"
    )
    # A dump without page tables: said, and the big-page table still searched.
    other = str(DUMPS / "win7-x64.raw")
    status, _, err = run_cli(capsys, "pool", other, "0xffff800000001000", "-q")
    assert status == 1
    assert err == (
        f"pooltagscan: {other}: no pool allocation holds 0xffff800000001000: not translated "
        "(no kernel page-table root found (5 self-referencing page(s), none valid): big-pool "
        "addresses cannot be translated); no big-page table entry spans it\n"
    )
    # Bad addresses are still exit code 2, on one line.
    status, _, err = run_cli(capsys, "pool", dump, "0x7fff00000000", "-q")
    assert status == 2 and err.count("\n") == 1 and "not an x64 kernel virtual address" in err
