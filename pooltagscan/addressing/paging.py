"""Kernel virtual to physical translation through page tables read from a physical dump.

Big-pool allocations are known by their kernel virtual address only (the big-page table
records nothing else), and a physical dump stores pages by physical address. The page
tables the processor walked are in the dump too; once their root is known (see
`addressing.search`), a walk of at most four table entries turns a virtual address into
a physical one. Nothing here needs symbols or trusts the dump: every walk is a fixed
number of reads (no entry can make it loop), a table outside the dump stops the walk,
and ranges are translated lazily page by page, so a hostile size costs what the caller
reads, never more.

Paging modes (Intel SDM vol. 3, chapter 4):

| mode | levels | entry | large pages |
|---|---|---|---|
| `x64` (4-level, IA-32e) | PML4, PDPT, PD, PT | 8 bytes | 1 GiB (PDPTE.PS), 2 MiB (PDE.PS) |
| `x86-pae` | PDPT (4 entries), PD, PT | 8 bytes | 2 MiB (PDE.PS) |
| `x86` (non-PAE) | PD, PT | 4 bytes | 4 MiB (PDE.PS, PSE-36 bits 13-20 = address bits 32-39) |

Which entries count as present (the rule, documented for users in the README): an entry
with the Present bit (0) set is followed. At the last level only, Windows keeps pages
that left a working set but are still in memory as *transition* PTEs: Present clear,
Transition (bit 11) set, Prototype (bit 10) clear, and the page frame number still that
of the page. Such a PTE is taken as valid when its frame lies inside the dump (what
Volatility's Windows Intel layers accept too, bounded by the dump). A *prototype* PTE
(bit 10 set, Present clear) points at a shared prototype PTE, not at data, and every
other not-present entry (paged out, demand zero, never used) has no page: both are
"not present". Upper-level entries must be Present.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PAGE_SIZE = 4096
X64, PAE, X86 = "x64", "x86-pae", "x86"
MODES = (X64, PAE, X86)

PRESENT = 1
LARGE = 1 << 7  # PS: this entry maps a large page
PROTOTYPE = 1 << 10
TRANSITION = 1 << 11
# Physical address bits of a 64-bit entry (52-bit physical space; bits 52-62 are the
# software's, bit 63 is NX).
FRAME64 = 0x000F_FFFF_FFFF_F000
FRAME32 = 0xFFFF_F000
GIB, MIB2, MIB4 = 1 << 30, 1 << 21, 1 << 22
# Why a translation gave no physical address.
NOT_PRESENT = "not present"
PROTOTYPE_PTE = "prototype PTE"
TABLE_MISSING = "page table not in the dump"
NON_CANONICAL = "not a canonical address"
OUT_OF_RANGE = "beyond the address space"

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Translation:
    """Where one virtual address lives: `physical` (None when it has no page, `why`
    says why) and the mapped page (`page_size`, its first virtual address)."""

    virtual: int
    physical: int | None
    page_size: int
    why: str | None = None
    transition: bool = False

    @property
    def page_start(self) -> int:
        return self.virtual - self.virtual % self.page_size


@dataclass(frozen=True)
class Piece:
    """A stretch of a virtual range inside one mapped page: `length` bytes at
    `virtual`, at `physical` (None: not mapped, `why`)."""

    virtual: int
    physical: int | None
    length: int
    why: str | None = None


class PageTables:
    """One address space: its paging mode and root, read through `read(physical,
    length)` (bytes; short or empty outside the dump).

    `root` is the physical address of the PML4 (x64) or page directory (x86); in PAE
    mode it is the PDPT's address, or None when only the four page directories are
    known (`pae_directories`, from the self-map: see `addressing.search`).
    """

    CACHE_PAGES = 256  # table pages kept (1 MiB): walks of neighbouring pages reuse them

    def __init__(
        self,
        mode: str,
        root: int | None,
        read: Reader,
        pae_directories: tuple[int | None, ...] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown paging mode {mode!r}")
        self.mode = mode
        self.root = root
        self._read = read
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        if mode == PAE and pae_directories is None:
            if root is None:
                raise ValueError("PAE paging needs its PDPT or its four page directories")
            pae_directories = self._pdpt(root)
        self.pae_directories = pae_directories
        self.address_bits = 64 if mode == X64 else 32

    # -- reading tables ---------------------------------------------------------------

    def _page(self, address: int) -> bytes | None:
        """The 4096 bytes of the table page at `address`, None when the dump lacks it."""
        page = address - address % PAGE_SIZE
        data = self._cache.get(page)
        if data is None:
            data = self._read(page, PAGE_SIZE)
            if len(data) < PAGE_SIZE:
                return None
            self._cache[page] = data
            if len(self._cache) > self.CACHE_PAGES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(page)
        return data

    def entry(self, table: int, index: int) -> int | None:
        """Entry `index` of the table at physical `table` (None: table not in the dump)."""
        size = 4 if self.mode == X86 else 8
        address = table + index * size
        page = self._page(address)
        if page is None:
            return None
        fmt = "<I" if size == 4 else "<Q"
        return struct.unpack_from(fmt, page, address % PAGE_SIZE)[0]

    def _pdpt(self, root: int) -> tuple[int | None, ...]:
        """The four page directories a PAE PDPT (32-byte aligned) names."""
        base = root & ~0x1F
        out: list[int | None] = []
        for i in range(4):
            entry = self.entry(base, i)
            out.append(entry & FRAME64 if entry is not None and entry & PRESENT else None)
        return tuple(out)

    # -- translating --------------------------------------------------------------------

    def translate(self, virtual: int) -> Translation:
        """The physical address of one virtual address (a walk of at most 4 reads)."""
        if virtual < 0 or virtual >= 1 << self.address_bits:
            return Translation(virtual, None, PAGE_SIZE, OUT_OF_RANGE)
        if self.mode == X64:
            return self._x64(virtual)
        if self.mode == PAE:
            return self._pae(virtual)
        return self._x86(virtual)

    def _x64(self, va: int) -> Translation:
        top = va >> 47
        if top not in (0, 0x1FFFF):
            return Translation(va, None, PAGE_SIZE, NON_CANONICAL)
        assert self.root is not None
        table = self.root & FRAME64
        for shift, size in ((39, None), (30, GIB), (21, MIB2)):
            entry = self.entry(table, (va >> shift) & 0x1FF)
            if entry is None:
                return Translation(va, None, size or GIB * 512, TABLE_MISSING)
            if not entry & PRESENT:
                return Translation(va, None, size or GIB * 512, NOT_PRESENT)
            if size is not None and entry & LARGE:
                frame = entry & FRAME64 & ~(size - 1)
                return Translation(va, frame | (va & (size - 1)), size)
            table = entry & FRAME64
        return self._pte(va, table, (va >> 12) & 0x1FF)

    def _pae(self, va: int) -> Translation:
        assert self.pae_directories is not None
        directory = self.pae_directories[va >> 30]
        if directory is None:
            return Translation(va, None, GIB, NOT_PRESENT)
        entry = self.entry(directory, (va >> 21) & 0x1FF)
        if entry is None:
            return Translation(va, None, MIB2, TABLE_MISSING)
        if not entry & PRESENT:
            return Translation(va, None, MIB2, NOT_PRESENT)
        if entry & LARGE:
            frame = entry & FRAME64 & ~(MIB2 - 1)
            return Translation(va, frame | (va & (MIB2 - 1)), MIB2)
        return self._pte(va, entry & FRAME64, (va >> 12) & 0x1FF)

    def _x86(self, va: int) -> Translation:
        assert self.root is not None
        entry = self.entry(self.root & FRAME32, va >> 22)
        if entry is None:
            return Translation(va, None, MIB4, TABLE_MISSING)
        if not entry & PRESENT:
            return Translation(va, None, MIB4, NOT_PRESENT)
        if entry & LARGE:
            frame = (entry & 0xFFC0_0000) | ((entry >> 13) & 0xFF) << 32
            return Translation(va, frame | (va & (MIB4 - 1)), MIB4)
        return self._pte(va, entry & FRAME32, (va >> 12) & 0x3FF)

    def _pte(self, va: int, table: int, index: int) -> Translation:
        """The last level: present and (bounded) transition PTEs give a page."""
        entry = self.entry(table, index)
        if entry is None:
            return Translation(va, None, PAGE_SIZE, TABLE_MISSING)
        frame = entry & (FRAME32 if self.mode == X86 else FRAME64)
        if entry & PRESENT:
            return Translation(va, frame | (va & 0xFFF), PAGE_SIZE)
        if entry & PROTOTYPE:
            return Translation(va, None, PAGE_SIZE, PROTOTYPE_PTE)
        if entry & TRANSITION and frame and self._held(frame):
            return Translation(va, frame | (va & 0xFFF), PAGE_SIZE, transition=True)
        return Translation(va, None, PAGE_SIZE, NOT_PRESENT)

    def _held(self, frame: int) -> bool:
        """Whether the dump holds the page at `frame` (a transition PTE's page)."""
        return len(self._read(frame, 1)) == 1

    def pieces(self, virtual: int, length: int) -> Iterator[Piece]:
        """The range [virtual, virtual + length) cut where its mapping changes: one
        piece per mapped page (large pages give one piece for all their bytes), lazily."""
        end = min(virtual + max(length, 0), 1 << self.address_bits)
        at = virtual
        while at < end:
            t = self.translate(at)
            stop = min(end, t.page_start + t.page_size)
            yield Piece(at, t.physical, stop - at, t.why)
            at = stop

    def read(self, virtual: int, length: int) -> tuple[bytes, int]:
        """(bytes of the range, missing bytes read as zeros, how many were missing).

        For previews and hashes of bounded ranges; callers of large ranges iterate
        `pieces` and read in chunks."""
        out = bytearray()
        missing = 0
        for piece in self.pieces(virtual, length):
            data = b"" if piece.physical is None else self._read(piece.physical, piece.length)
            missing += piece.length - len(data)
            out += data + bytes(piece.length - len(data))
        return bytes(out), missing

    def self_map_address(self, index: int) -> int:
        """x64: the virtual address at which the PML4 maps itself through `index`."""
        va = index << 39 | index << 30 | index << 21 | index << 12
        return va | (0xFFFF << 48 if index & 0x100 else 0)
