"""Hostile kernel memory against the carving budgets: aliased page tables, import
directories whose descriptors all name the same IAT, memory full of exported addresses."""

from __future__ import annotations

import json
import shutil
import struct
import time

from conftest import DUMPS
from test_cli import pooltagscan

from pooltagscan.addressing.paging import X64, PageTables
from pooltagscan.carving import _find, carve
from pooltagscan.carving.images import MAX_ENTRIES, import_descriptors
from pooltagscan.carving.walk import WalkStats, kernel_mappings

PAGE = 4096


def _tables(pages: dict[int, bytes]):
    def read(address: int, length: int) -> bytes:
        page = pages.get(address - address % PAGE)
        return b"" if page is None else page[address % PAGE : address % PAGE + length]

    return read


def test_page_tables_aliased_at_every_level_are_walked_once():
    # PML4 kernel entries -> one PDPT; its 512 entries -> one PD; its 512 -> one PT;
    # its 512 -> one page: 256 * 512**3 mappings if every alias were followed.
    top, pdpt, pd, pt, frame = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000
    pages = {
        top: bytes(8 * 256) + struct.pack("<Q", pdpt | 3) * 256,
        pdpt: struct.pack("<Q", pd | 3) * 512,
        pd: struct.pack("<Q", pt | 3) * 512,
        pt: struct.pack("<Q", frame | 3) * 512,
        frame: bytes(PAGE),
    }
    read = _tables(pages)
    stats = WalkStats()
    start = time.perf_counter()
    mappings = list(kernel_mappings(PageTables(X64, top, read), read, 0x6000, None, stats))
    assert time.perf_counter() - start < 2
    assert len(mappings) == 512
    assert stats.tables == 4


class _Image:
    """Just what `_find` reads: a 64 KiB physical memory of one page repeated."""

    max_address = 0x10000

    def read(self, address: int, length: int) -> bytes:
        return bytes(max(0, min(length, self.max_address - address)))


def test_large_pages_over_the_same_memory_stop_at_the_page_budget():
    from pooltagscan.carving.walk import Mapping

    # Half a million 1 GiB pages over the same 64 KiB: each would be read whole.
    mappings = (Mapping(0xFFFF_8000_0000_0000 + (k << 30), 0, 1 << 30) for k in range(1 << 19))
    start = time.perf_counter()
    found, exhausted = _find(_Image(), mappings, "x64")
    assert exhausted and not found
    assert time.perf_counter() - start < 5


def test_import_descriptors_naming_the_same_iat_share_one_slot_budget():
    memory = bytearray(0x40000)
    table, iat = 0x1000, 0x10000
    for k in range(1024):
        struct.pack_into("<IIIII", memory, table + 20 * k, 0, 0, 0, 0, iat)
    memory[iat:] = struct.pack("<Q", 0xFFFFF80000001000) * ((len(memory) - iat) // 8)
    start = time.perf_counter()
    descriptors = import_descriptors(bytes(memory), (table, 20 * 1024), wide=True)
    assert sum(d.count for d in descriptors) <= MAX_ENTRIES
    assert time.perf_counter() - start < 5


def test_a_hostile_import_directory_gives_at_most_the_slot_budget(tmp_path):
    """A carved driver whose 1024 import descriptors all name 16 KiB of slots that hold
    an exported address: 2 M imports (10 s, 860 MB) before the budget."""
    family = "win10-1809-x64"
    manifest = json.loads((DUMPS / f"{family}.json").read_text())
    dump = tmp_path / "hostile.raw"
    shutil.copy(DUMPS / f"{family}.raw", dump)
    from pooltagscan.inputs import open_image
    from pooltagscan.scan import prepare
    from pooltagscan.tags.database import TagDatabase

    images = {i["name"]: i for i in manifest["kernel_images"]}
    victim, kernel = images["kmdf_x64.sys"], images["ntoskrnl.exe"]
    image = open_image(dump)
    try:
        tables = prepare(image, "auto", TagDatabase.builtin()).kernel_space().tables
        physical = [tables.translate(victim["base"] + k * PAGE).physical for k in range(10)]
    finally:
        image.close()
    with open(dump, "r+b") as f:
        f.seek(physical[0])
        head = f.read(PAGE)
        opt = struct.unpack_from("<I", head, 0x3C)[0] + 24
        f.seek(physical[0] + opt + 120)
        f.write(struct.pack("<II", 0x1000, 20 * 1024))
        table = b"".join(struct.pack("<IIIII", 0, 0, 0, 0x3000, 0x6000) for _ in range(1024))
        for k in range(5):
            f.seek(physical[1 + k])
            f.write(table[k * PAGE : (k + 1) * PAGE])
        for k in range(6, 10):
            f.seek(physical[k])
            f.write(struct.pack("<Q", kernel["base"] + 0x1000) * 512)
    image = open_image(dump)
    try:
        result = carve(image, prepare(image, "auto", TagDatabase.builtin()).kernel_space())
    finally:
        image.close()
    carved = next(c for c in result.images if c.base == victim["base"])
    assert carved.imports + carved.unresolved_slots <= MAX_ENTRIES
    cli = pooltagscan("report", str(dump), "--drivers-from-dump", "--format", "json")
    assert "Traceback" not in cli.stderr


def test_memory_full_of_loader_entries_that_fit_is_read_within_a_budget(tmp_path, monkeypatch):
    """Every word of the dump equal to an image base, so that every word starts a
    loader entry whose fixed fields fit (links, EntryPoint and SizeOfImage read the same
    base): the fields are tested in numpy, and at most _LOADER_CANDIDATES entries are
    read further in Python, not one per word (4 M here; the old loop took 5 s on 32 MiB,
    minutes on a GiB)."""
    from pooltagscan import carving
    from pooltagscan.inputs import open_image

    base = 0xFFFFF80000400000  # its low half, 0x400000, is the SizeOfImage read
    dump = tmp_path / "bases.raw"
    dump.write_bytes(struct.pack("<Q", base) * (4 << 20))  # 32 MiB
    entries = []
    real = carving._entry
    monkeypatch.setattr(carving, "_entry", lambda *a: entries.append(a[1]) or real(*a))
    image = open_image(dump)
    start = time.monotonic()
    try:
        found = carving.loader_names(image, None, "x64", {base: 0x400000})
    finally:
        image.close()
    assert found == {}  # an empty BaseDllName: no name
    assert len(entries) == carving._LOADER_CANDIDATES
    assert time.monotonic() - start < 10
