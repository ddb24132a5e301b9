"""Find the kernel's page-table root in a physical dump without symbols.

Windows maps its own page tables into the kernel's address space through one entry of
the top-level table that points back at that table (the self-map). So the top table is
a page one of whose entries holds the page's own physical address, Present set:

| mode | top table | self-map entry | the self-map |
|---|---|---|---|
| x64 | PML4 | any index 0x100-0x1FF (fixed 0x1ED before Windows 10 1607, randomised since) | PTEs at a random 512 GiB slot |
| PAE | the 4th page directory (PD3) | index 3 (PD3[0..3] = PD0..PD3) | page directories at 0xC0600000 |
| x86 | page directory | index 0x300 | page directory at 0xC0300000 |

This is the fact Volatility 3's Windows stacker (`PageMapScanner`, the
`DtbSelfRef*` tests) relies on; the search here is our own, vectorised: every window
of the dump is read once (`MemoryImage.words`, memory bounded by the window) and numpy
compares the candidate slots of all its pages with the pages' own addresses at once.
Every process has such a table (they share the kernel half), so a live system gives one
candidate per process; each candidate is then checked in Python (exactly one self
reference; at least MIN_KERNEL_ENTRIES other present kernel-half entries pointing
inside the dump; x64: no top-level entry with the reserved PS bit) and the one with the
most kernel-half entries (the fewest user-half ones on a tie: the System process's)
wins. In PAE mode the PDPT (CR3 itself, 32 bytes anywhere) is then looked for: the
32-byte aligned slot holding the four directories the self-map names.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pooltagscan.addressing.paging import FRAME32, FRAME64, LARGE, PAE, PAGE_SIZE, PRESENT, X64, X86
from pooltagscan.inputs.base import MemoryImage

WINDOW_BYTES = 32 << 20
MIN_KERNEL_ENTRIES = 2  # present kernel-half entries (besides the self-map) a root needs
PDPTE_RESERVED = 0x1E6
MAX_CANDIDATES = 4096  # self-referencing pages kept for checking (a system has ~100s)
# Where the self-map entry may sit, per mode: (first index, last index + 1).
SELF_MAP_RANGE = {X64: (0x100, 0x1FF), PAE: (3, 4), X86: (0x300, 0x301)}


@dataclass(frozen=True)
class Root:
    """A checked page-table root: the mode, the top table's physical address, the
    self-map index, how many kernel/user-half entries its top table has present and
    (PAE) the four page directories and the PDPT when found."""

    mode: str
    table: int  # x64 PML4 / x86 page directory / PAE PD3
    index: int
    kernel_entries: int
    user_entries: int
    directories: tuple[int | None, ...] | None = None
    pdpt: int | None = None

    @property
    def dtb(self) -> int | None:
        """What CR3 held: the top table, or the PDPT in PAE mode (None if not found)."""
        return self.pdpt if self.mode == PAE else self.table


@dataclass
class SearchResult:
    mode: str | None
    root: Root | None
    candidates: int  # self-referencing pages that passed the vector test
    valid: int  # ... and the checks


def candidate_pages(image: MemoryImage, modes: tuple[str, ...], window_bytes: int = WINDOW_BYTES
                    ) -> dict[str, list[int]]:  # fmt: skip
    """Physical addresses of pages with a self-referencing entry in the mode's slots,
    one pass over the dump. Bounded: at most MAX_CANDIDATES per mode are kept."""
    found: dict[str, list[int]] = {m: [] for m in modes}
    for window in image.windows(window_bytes):
        with image.words(window) as words:
            n = words.shape[0]
            addr = window.addresses(np.arange(n, dtype=np.uint64) * np.uint64(PAGE_SIZE))
            for mode in modes:
                room = MAX_CANDIDATES - len(found[mode])
                if room > 0:
                    rows = _self_referencing(words, addr, mode)
                    found[mode].extend(int(a) for a in addr[rows[:room]])
    return found


def _self_referencing(words: np.ndarray, addr: np.ndarray, mode: str) -> np.ndarray:
    """Rows (pages) of `words` with an entry in the mode's self-map slots that holds the
    page's own address with Present set.

    Memory traffic is the cost: a first test compares only bits 16-31 of each slot
    (one uint16 per entry) with the page's address, which random data passes at one
    slot in 65536, and the full test runs on the few pages left.
    """
    first, last = SELF_MAP_RANGE[mode]
    step = 1 if mode == X86 else 2  # dwords per entry
    halves = words.view("<u2")[:, 2 * step * first + 1 : 2 * step * last : 2 * step]
    want = ((addr >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.uint16)[:, None]
    rows = np.flatnonzero((halves == want).any(axis=1))
    if not rows.size:
        return rows
    page = addr[rows]
    low = (page & np.uint64(0xFFFFF000)).astype(np.uint32)[:, None] | np.uint32(1)
    slots = words[rows, step * first : step * last : step]
    hit = (slots & np.uint32(0xFFFFF001)) == low
    if mode == X86:
        hit &= (page >> np.uint64(32) == 0)[:, None]
    else:
        high = (page >> np.uint64(32)).astype(np.uint32)[:, None]
        hit &= (words[rows, step * first + 1 : step * last + 1 : step] & np.uint32(0xFFFFF)) == high
    return rows[hit.any(axis=1)]


def _entries(read: Callable[[int, int], bytes], table: int, mode: str) -> tuple[int, ...] | None:
    data = read(table, PAGE_SIZE)
    if len(data) < PAGE_SIZE:
        return None
    return struct.unpack("<1024I" if mode == X86 else "<512Q", data)


def check_root(read: Callable[[int, int], bytes], table: int, mode: str, limit: int
               ) -> Root | None:  # fmt: skip
    """The candidate top table at `table` as a Root, or None when it fails a check.

    `limit` is the dump's highest physical address: kernel-half entries must point
    below it (a table page the dump holds), else they are no evidence.
    """
    entries = _entries(read, table, mode)
    if entries is None:
        return None
    frame = FRAME32 if mode == X86 else FRAME64
    present = [(i, e) for i, e in enumerate(entries) if e & PRESENT]
    own = [i for i, e in present if e & frame == table]
    if len(own) != 1:
        return None
    index = own[0]
    first, last = SELF_MAP_RANGE[mode]
    if not first <= index < last:
        return None
    if mode == X64 and any(e & LARGE for _, e in present):
        return None  # PS is reserved in a PML4 entry
    if mode == X64:
        kernel_half = range(0x100, 0x200)
    elif mode == PAE:
        kernel_half = range(0x200)  # PD3 maps 0xC0000000 up: kernel space
    else:
        kernel_half = range(0x200, 0x400)
    kernel = user = 0
    for i, e in present:
        if i == index:
            continue
        if i in kernel_half:
            kernel += (e & frame) < limit
        else:
            user += 1
    directories = None
    if mode == PAE:
        # PD3[0..2] are the other directories; the kernel half is PD2 and PD3.
        directories = tuple(
            (entries[i] & FRAME64) if entries[i] & PRESENT and (entries[i] & FRAME64) < limit
            else None
            for i in range(3)
        ) + (table,)  # fmt: skip
        if directories[2] is None or len(set(directories)) != 4:
            return None
    if kernel < MIN_KERNEL_ENTRIES:
        return None
    return Root(mode, table, index, kernel, user, directories)


def find_pdpt(image: MemoryImage, directories: tuple[int | None, ...],
              window_bytes: int = WINDOW_BYTES) -> int | None:  # fmt: skip
    """The PAE PDPT naming these four directories: first Windows' own layout (the
    page before PD0, if the directories follow it), then a pass over the dump for the
    32-byte aligned slot holding PD0..PD3 with Present set."""
    want = [0 if d is None else d | PRESENT for d in directories]
    mask = FRAME64 | PRESENT

    def matches(data: bytes) -> bool:
        # PDPTE bits 1, 2, 5-8 are reserved (must be 0): this also tells the PDPT from
        # PD3's first four entries, which name the same four directories (RW, A, D set).
        got = struct.unpack("<4Q", data)
        return all((g & mask) == w and not g & PDPTE_RESERVED for g, w in zip(got, want))

    pd0 = directories[0]
    if pd0 is not None and pd0 >= PAGE_SIZE:
        data = image.read(pd0 - PAGE_SIZE, 32)
        if len(data) == 32 and matches(data):
            return pd0 - PAGE_SIZE
    first = np.uint64(want[0])
    for window in image.windows(window_bytes):
        with image.words(window) as words:
            q = words.reshape(-1).view("<u8")[::4]  # first qword of every 32-byte slot
            hits = np.flatnonzero((q & np.uint64(mask)) == first)
            if not hits.size:
                continue
            flat = words.reshape(-1)
            for h in hits.tolist():
                slot = flat[8 * h : 8 * h + 8].tobytes()
                if matches(slot):
                    return window.address_at(32 * h)
    return None


def search(image: MemoryImage, modes: tuple[str, ...], window_bytes: int = WINDOW_BYTES
           ) -> SearchResult:  # fmt: skip
    """The best root over `modes` (searched in one pass), with the candidate counts."""
    found = candidate_pages(image, modes, window_bytes)
    limit = image.max_address
    total = sum(len(v) for v in found.values())
    for mode in modes:
        roots = [r for r in (check_root(image.read, a, mode, limit) for a in found[mode]) if r]
        if roots:
            best = min(roots, key=lambda r: (-r.kernel_entries, r.user_entries, r.table))
            if mode == PAE:
                assert best.directories is not None
                pdpt = find_pdpt(image, best.directories, window_bytes)
                best = Root(best.mode, best.table, best.index, best.kernel_entries,
                            best.user_entries, best.directories, pdpt)  # fmt: skip
            return SearchResult(mode, best, len(found[mode]), len(roots))
    return SearchResult(None, None, total, 0)
