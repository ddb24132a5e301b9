"""Kernel address translation and the page-table root search, on hand-built page tables.

Each test builds physical memory page by page (a bytearray written as a raw dump), so
every expected address below is known by construction.
"""

from __future__ import annotations

import itertools
import struct
import time

import pytest

from pooltagscan.addressing import HEADER, SEARCH, kernel_space, read_virtual
from pooltagscan.addressing.paging import (
    NON_CANONICAL,
    NOT_PRESENT,
    OUT_OF_RANGE,
    PAE,
    PROTOTYPE_PTE,
    TABLE_MISSING,
    X64,
    X86,
    PageTables,
)
from pooltagscan.inputs import open_image

P = 4096
PRESENT_RW = 0x63  # present, writable, accessed, dirty
LARGE = 0x80


class Memory:
    """Physical memory of `pages` pages with helpers to write table entries."""

    def __init__(self, pages: int):
        self.data = bytearray(pages * P)

    def q(self, table_page: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.data, table_page * P + index * 8, value)

    def d(self, table_page: int, index: int, value: int) -> None:
        struct.pack_into("<I", self.data, table_page * P + index * 4, value)

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.data[address : address + length])

    def fill(self, page: int, byte: int) -> None:
        self.data[page * P : (page + 1) * P] = bytes([byte]) * P

    def write(self, tmp_path, name: str = "mem.raw"):
        path = tmp_path / name
        path.write_bytes(self.data)
        return path


def idx(va: int) -> tuple[int, int, int, int]:
    return (va >> 39) & 0x1FF, (va >> 30) & 0x1FF, (va >> 21) & 0x1FF, (va >> 12) & 0x1FF


# ------------------------------------------------------------------ x64

PML4, PDPT, PD, PT, PT2 = 5, 6, 7, 8, 9
SELF = 0x1A3
VA4K = 0xFFFF_8B0C_1234_5000
VA2M = 0xFFFF_8B0C_1260_0000  # same PDPT/PD, its own PDE
VA1G = 0xFFFF_8B0D_4000_0000  # PDPTE with PS
VA_TRANS = VA4K + P
VA_PROTO = VA4K + 2 * P
VA_GONE = VA4K + 3 * P  # paged out: nothing but a page-file offset
VA_NOTABLE = 0xFFFF_8B0C_1280_0000  # PDE pointing past the dump


def x64_memory(pages: int = 64) -> Memory:
    m = Memory(pages)
    m.q(PML4, SELF, PML4 * P | PRESENT_RW)
    a, b, c, d = idx(VA4K)
    m.q(PML4, a, PDPT * P | PRESENT_RW)
    m.q(PDPT, b, PD * P | PRESENT_RW)
    m.q(PD, c, PT * P | PRESENT_RW)
    m.q(PT, d, 1 << 63 | 20 * P | PRESENT_RW)  # NX set: still the frame of page 20
    m.q(PT, d + 1, 21 * P | 0x800)  # transition, frame held
    m.q(PT, d + 2, 22 * P | 0x400 | 0x800)  # prototype: not data
    m.q(PT, d + 3, 0x1234 << 32 | 0x80)  # software PTE (page file)
    m.q(PD, idx(VA2M)[2], 0x20_0000 | PRESENT_RW | LARGE)
    m.q(PDPT, idx(VA1G)[1], 0x4000_0000 | PRESENT_RW | LARGE)
    m.q(PD, idx(VA_NOTABLE)[2], 0x7000_0000 | PRESENT_RW)
    m.q(PML4, 0x1F0, PT2 * P | PRESENT_RW)  # a second kernel-half entry
    m.q(PML4, 0x010, 30 * P | PRESENT_RW)  # one user-half entry
    m.fill(20, 0xAA)
    m.fill(21, 0xBB)
    return m


def test_x64_translations_of_every_page_size():
    m = x64_memory()
    t = PageTables(X64, PML4 * P, m.read)
    assert t.translate(VA4K + 0x123).physical == 20 * P + 0x123
    assert t.translate(VA2M + 0x1_2345).physical == 0x20_0000 + 0x1_2345
    assert t.translate(VA2M).page_size == 1 << 21
    one_gib = t.translate(VA1G + 0x1234_5678)
    assert (one_gib.physical, one_gib.page_size) == (0x4000_0000 + 0x1234_5678, 1 << 30)


def test_x64_transition_prototype_and_missing_pages():
    m = x64_memory()
    t = PageTables(X64, PML4 * P, m.read)
    trans = t.translate(VA_TRANS + 8)
    assert (trans.physical, trans.transition) == (21 * P + 8, True)
    assert t.translate(VA_PROTO).why == PROTOTYPE_PTE
    assert t.translate(VA_GONE).why == NOT_PRESENT
    assert t.translate(VA_NOTABLE).why == TABLE_MISSING
    assert t.translate(0xFFFF_0000_0000_0000).why == NON_CANONICAL
    assert t.translate(1 << 64).why == OUT_OF_RANGE
    # A transition PTE whose frame lies outside the dump is not trusted.
    m.q(PT, idx(VA_TRANS)[3], 0x9999 * P | 0x800)
    assert PageTables(X64, PML4 * P, m.read).translate(VA_TRANS).why == NOT_PRESENT


def test_x64_self_map_translates_to_the_tables():
    m = x64_memory()
    t = PageTables(X64, PML4 * P, m.read)
    assert t.translate(t.self_map_address(SELF)).physical == PML4 * P
    # The PTE of VA4K through the self-map is the PT's entry for it.
    pte_base = t.self_map_address(SELF) & ~((1 << 39) - 1) & ~(0x1FF << 30) & ~(0x1FF << 21)
    pte_base = (SELF << 39) | (0xFFFF << 48)
    pte_va = pte_base + ((VA4K & ((1 << 48) - 1)) >> 12) * 8
    assert t.translate(pte_va).physical == PT * P + idx(VA4K)[3] * 8


def test_read_virtual_zero_fills_and_counts_missing():
    m = x64_memory()
    t = PageTables(X64, PML4 * P, m.read)
    data, missing = t.read(VA4K + P - 16, 16 + P + P)
    assert data == b"\xaa" * 16 + b"\xbb" * P + bytes(P)
    assert missing == P


def test_pieces_are_lazy_whatever_the_length():
    t = PageTables(X64, PML4 * P, x64_memory().read)
    start = time.perf_counter()
    first = list(itertools.islice(t.pieces(VA4K, 1 << 40), 5))
    assert time.perf_counter() - start < 1
    assert [p.physical for p in first[:2]] == [20 * P, 21 * P]
    assert first[2].physical is None and first[2].why == PROTOTYPE_PTE


def test_x64_search_finds_the_pml4_and_reports_candidates(tmp_path):
    m = x64_memory()
    # A process's PML4: same kernel half, more user entries: the System one should win.
    proc = 40
    m.data[proc * P : (proc + 1) * P] = m.data[PML4 * P : (PML4 + 1) * P]
    m.q(proc, SELF, proc * P | PRESENT_RW)
    m.q(proc, 0x011, 31 * P | PRESENT_RW)
    # A page that references itself but maps nothing else: a candidate, not valid.
    m.q(50, 0x120, 50 * P | PRESENT_RW)
    image = open_image(m.write(tmp_path))
    try:
        space = kernel_space(image, "x64")
        assert space.method == SEARCH
        assert space.dtb == PML4 * P
        assert (space.candidates, space.valid) == (3, 2)
        assert space.root.index == SELF
        assert space.translate(VA4K).physical == 20 * P
        assert "self-reference search (3 candidate(s), 2 valid" in space.describe()
        doc = space.as_dict()
        assert doc["dtb"] == PML4 * P and doc["paging"] == "x64" and doc["candidates"] == 3
        # Unknown architecture: every mode is tried, x64 first.
        assert kernel_space(image, None).dtb == PML4 * P
    finally:
        image.close()


def test_search_rejects_hostile_tables(tmp_path):
    m = Memory(16)
    # Every entry points at the page itself: more than one self reference.
    for i in range(512):
        m.q(3, i, 3 * P | PRESENT_RW)
    # Self-map plus kernel entries pointing beyond the dump.
    m.q(4, 0x1ED, 4 * P | PRESENT_RW)
    m.q(4, 0x1F0, (1 << 40) | PRESENT_RW)
    m.q(4, 0x1F1, (1 << 41) | PRESENT_RW)
    # Self-map with a PS bit in a PML4 entry (reserved there).
    m.q(5, 0x1ED, 5 * P | PRESENT_RW)
    m.q(5, 0x1F0, 6 * P | PRESENT_RW | LARGE)
    m.q(5, 0x1F1, 7 * P | PRESENT_RW)
    image = open_image(m.write(tmp_path))
    try:
        space = kernel_space(image, "x64")
        assert not space.available
        assert space.candidates == 3
        assert "no kernel page-table root found" in space.describe()
        assert space.as_dict() == {"available": False, "notes": space.notes}
    finally:
        image.close()


# ------------------------------------------------------------------ x86 PAE

PDPT_PAGE, PDPT_AT = 20, 0x40  # after PD3: PD3's first entries name the same directories
PDS = (3, 4, 9, 12)  # not consecutive: the search must not rely on Windows' layout
PAE_VA = 0x8123_4000
PAE_LARGE = 0xC480_0000


def pae_memory() -> Memory:
    m = Memory(48)
    for i, pd in enumerate(PDS):
        m.q(PDPT_PAGE, PDPT_AT // 8 + i, pd * P | 1)
        m.q(PDS[3], i, pd * P | PRESENT_RW)  # PD3[0..3]: the self-map
    m.q(PDS[2], (PAE_VA >> 21) & 0x1FF, 11 * P | PRESENT_RW)
    m.q(11, (PAE_VA >> 12) & 0x1FF, 30 * P | PRESENT_RW)
    m.q(PDS[3], (PAE_LARGE >> 21) & 0x1FF, 0x40_0000 | PRESENT_RW | LARGE)
    m.q(PDS[3], 0x1FF, 13 * P | PRESENT_RW)
    return m


def test_pae_translation_from_the_pdpt():
    m = pae_memory()
    t = PageTables(PAE, PDPT_PAGE * P + PDPT_AT, m.read)
    assert t.pae_directories == tuple(pd * P for pd in PDS)
    assert t.translate(PAE_VA + 0x10).physical == 30 * P + 0x10
    big = t.translate(PAE_LARGE + 0x1234)
    assert (big.physical, big.page_size) == (0x40_0000 + 0x1234, 1 << 21)
    # 0xC0600000: the page directories through the self-map.
    assert [t.translate(0xC060_0000 + i * P).physical for i in range(4)] == [pd * P for pd in PDS]
    assert t.translate(0x1_0000_0000).why == OUT_OF_RANGE


def test_pae_search_finds_pd3_and_the_pdpt(tmp_path):
    image = open_image(pae_memory().write(tmp_path))
    try:
        space = kernel_space(image, "x86")
        assert space.method == SEARCH and space.tables.mode == PAE
        assert space.dtb == PDPT_PAGE * P + PDPT_AT
        assert space.tables.pae_directories == tuple(pd * P for pd in PDS)
        assert space.root.index == 3 and space.root.table == PDS[3] * P
        assert space.translate(PAE_VA).physical == 30 * P
    finally:
        image.close()


# ------------------------------------------------------------------ x86 non-PAE

PD32 = 4
X86_VA = 0x8123_4000
X86_LARGE = 0xC440_0000


def x86_memory() -> Memory:
    m = Memory(48)
    m.d(PD32, 0x300, PD32 * P | PRESENT_RW)
    m.d(PD32, X86_VA >> 22, 6 * P | PRESENT_RW)
    m.d(6, (X86_VA >> 12) & 0x3FF, 40 * P | PRESENT_RW)
    # 4 MiB page with PSE-36 bits: address bits 32-39 from entry bits 13-20.
    m.d(PD32, X86_LARGE >> 22, 0x0080_0000 | 0x3 << 13 | PRESENT_RW | LARGE)
    m.d(PD32, 0x3FF, 7 * P | PRESENT_RW)
    return m


def test_x86_translation_and_large_pages():
    t = PageTables(X86, PD32 * P, x86_memory().read)
    assert t.translate(X86_VA + 5).physical == 40 * P + 5
    big = t.translate(X86_LARGE + 0x12345)
    assert (big.physical, big.page_size) == (0x3_0080_0000 + 0x12345, 1 << 22)
    assert t.translate(0xC030_0000).physical == PD32 * P  # the self-map


def test_x86_search(tmp_path):
    image = open_image(x86_memory().write(tmp_path))
    try:
        space = kernel_space(image, "x86")
        assert (space.method, space.tables.mode, space.dtb) == (SEARCH, X86, PD32 * P)
        assert space.root.index == 0x300
    finally:
        image.close()


# ------------------------------------------------------------------ shared behaviour


def test_header_root_is_used_and_checked(tmp_path):
    image = open_image(x64_memory().write(tmp_path))
    try:
        image.page_table_root = PML4 * P | 0x5  # PCID bits in CR3
        space = kernel_space(image, "x64")
        assert (space.method, space.dtb) == (HEADER, PML4 * P)
        assert "crash dump header" in space.describe()
        image.page_table_root = 9 * P  # no table there: searched instead, with a note
        space = kernel_space(image, "x64")
        assert (space.method, space.dtb) == (SEARCH, PML4 * P)
        assert "does not hold a kernel page table" in space.notes[0]
    finally:
        image.close()


def test_read_virtual_reads_in_bounded_chunks(tmp_path):
    image = open_image(x64_memory().write(tmp_path))
    try:
        t = PageTables(X64, PML4 * P, image.read)
        parts = list(read_virtual(image, t, VA4K, 3 * P, chunk=1024))
        assert all(len(d) <= 1024 for d, _ in parts)
        data = b"".join(d for d, _ in parts)
        assert data == b"\xaa" * P + b"\xbb" * P + bytes(P)
        assert sum(m for _, m in parts) == P
        # A 1 GiB page mapped beyond the dump: zeros, all missing.
        data, missing = next(read_virtual(image, t, VA1G, 64))
        assert (data, missing) == (bytes(64), 64)
    finally:
        image.close()


def test_minidump_and_foreign_architectures_get_a_note(tmp_path):
    image = open_image(x64_memory().write(tmp_path))
    try:
        image.format = "minidump"
        space = kernel_space(image, "x64")
        assert not space.available and "no page tables" not in space.describe()
        assert "without page tables" in space.notes[0]
        image.format = "raw"
        assert "ARM64" in kernel_space(image, "ARM64").notes[0]
    finally:
        image.close()


@pytest.mark.parametrize("arch", ["x64", "x86", None])
def test_no_tables_at_all_is_a_note(tmp_path, arch):
    image = open_image(Memory(8).write(tmp_path))
    try:
        space = kernel_space(image, arch)
        assert not space.available and space.candidates == 0
    finally:
        image.close()


def reverse_memory() -> Memory:
    """x86 non-PAE: PD at page 1, one PT at page 2 for 0x80000000-0x803FFFFF.
    VA pages 0-2 -> physical pages 5, 6, 5 (an alias); 3 not present; 4 prototype;
    PDE 0x201 maps the 4 MiB large page at 0x00400000 (nothing of it in the dump)."""
    mem = Memory(16)
    mem.d(1, 0x200, 2 * P | PRESENT_RW)
    mem.d(1, 0x201, 0x400000 | PRESENT_RW | LARGE)
    mem.d(2, 0, 5 * P | PRESENT_RW)
    mem.d(2, 1, 6 * P | PRESENT_RW)
    mem.d(2, 2, 5 * P | PRESENT_RW)
    mem.d(2, 4, 9 * P | 0x400)  # prototype: no page
    return mem


def test_page_owners_maps_physical_pages_back_to_allocations():
    from pooltagscan.addressing.reverse import page_owners

    mem = reverse_memory()
    tables = PageTables(X86, 1 * P, mem.read)
    base = 0x80000000
    # A: five pages (one aliased, one absent, one prototype); B: its third page only,
    # after A in the order of preference; C: two pages of the large page.
    owners = page_owners(tables, [base, base + 2 * P, 0x80400000 + 0x100], [5 * P, P, 2 * P])
    assert owners.complete
    assert owners.pages.tolist() == [5, 5, 5, 6, 0x400, 0x401, 0x402]
    assert [hex(v) for v in owners.page_va.tolist()] == [
        "0x80000000", "0x80002000", "0x80002000", "0x80001000",
        "0x80400000", "0x80401000", "0x80402000",
    ]  # fmt: skip
    assert owners.owner.tolist() == [0, 0, 1, 0, 2, 2, 2]
    assert owners.place(5 * P + 0x10) == (0, base + 0x10)  # A's first mapping wins
    assert owners.place(6 * P + 0xFF0) == (0, base + P + 0xFF0)
    assert owners.place(7 * P) is None and owners.place(9 * P) is None
    # C starts 0x100 into its first page and ends 0x100 into its third.
    assert owners.place(0x400000 + 0xFF) is None
    assert owners.place(0x400000 + 0x100) == (2, 0x80400100)
    assert owners.place(0x402000 + 0xFF) == (2, 0x80402000 + 0xFF)
    assert owners.place(0x402000 + 0x100) is None


def test_page_owners_stops_at_its_budgets():
    from pooltagscan.addressing.reverse import page_owners

    mem = reverse_memory()
    tables = PageTables(X86, 1 * P, mem.read)
    owners = page_owners(tables, [0x80000000, 0x80400000], [5 * P, 4 << 20], max_pages=3)
    assert not owners.complete and owners.pages.tolist() == [5, 5, 6]
    # 4 GiB claimed over a page table of absent entries: translations are budgeted.
    mem.d(1, 0x202, 3 * P | PRESENT_RW)  # an empty page table for 0x80800000
    started = time.perf_counter()
    owners = page_owners(tables, [0x80800000] * 3, [0xFFFFFFFF] * 3, max_steps=1000)
    assert not owners.complete and len(owners) == 0
    assert time.perf_counter() - started < 1.0
