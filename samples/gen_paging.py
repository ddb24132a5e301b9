"""Real kernel page tables for the sample images: what `pooltagscan.addressing` must find.

Built on some of the image's `page-table` decoy slots after every other page is final
(so no other byte of the image moves), with a random generator of their own (so the
main one's stream, and every other page, stays what it was). Modes per family:
x64 4-level with the self-map entry at a random PML4 index (Windows 10 1607+), x86 PAE
(PD3[0..3] = PD0..PD3, the PDPT 32 bytes inside a page) and x86 without PAE
(PD[0x300] = PD). Mapped:

- the whole image at a kernel address (`pool_window`), with 2 MiB (4 MiB non-PAE)
  large pages: virtual `va + physical` for every pool page;
- a few allocated big-pool allocations with 4 KiB PTEs onto `big-pool` decoy pages (one
  of them with a transition PTE, a prototype PTE and a paged-out PTE among its pages);
- one allocation inside a large page (its physical address `va % large page size`,
  possibly beyond the image), and on x64 one inside a 1 GiB page.

The manifest lists every mapped allocation with the physical address of each of its
4 KiB pages (None: not present), exactly as the tables were written.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from gen_common import PAGE

PAGING = {"win10-1809-x64": "x64", "win7-x86": "x86-pae", "xp-x86": "x86"}
RW = 0x63  # present, writable, accessed, dirty
LARGE = 0x80
TRANSITION, PROTOTYPE = 0x800, 0x400
MAX_4K = 6  # big-pool allocations mapped page by page
MIN_SLOTS = 12  # page-table slots an image needs to get tables (tiny test images do not)


class _Tables:
    """Table pages taken from free slots, entries written per (page, index)."""

    def __init__(self, mode: str, slots: list[int]):
        self.mode, self.slots = mode, slots
        self.entries: dict[int, dict[int, int]] = {}  # table page -> index -> value
        self.children: dict[tuple, int] = {}  # (table page, index) -> child page
        self.width = 4 if mode == "x86" else 8

    def left(self) -> int:
        return len(self.slots)

    def new(self) -> int:
        page = self.slots.pop(0)
        self.entries[page] = {}
        return page

    def child(self, table: int, index: int) -> int | None:
        """The next-level table of entry `index` (made if absent); None when that entry
        already maps a large page or the slots ran out."""
        key = (table, index)
        if key in self.children:
            return self.children[key]
        if index in self.entries[table] or not self.slots:
            return None
        page = self.new()
        self.children[key] = page
        self.entries[table][index] = page * PAGE | RW
        return page

    def set(self, table: int, index: int, value: int) -> bool:
        if index in self.entries[table] or (table, index) in self.children:
            return False
        self.entries[table][index] = value
        return True

    def page_bytes(self, page: int) -> bytes:
        n = PAGE // self.width
        vals = np.zeros(n, np.uint64)
        for i, v in self.entries[page].items():
            vals[i] = v
        return vals.astype("<u4" if self.width == 4 else "<u8").tobytes()


def _levels(mode: str, va: int) -> list[int]:
    if mode == "x64":
        return [(va >> s) & 0x1FF for s in (39, 30, 21, 12)]
    if mode == "x86-pae":
        return [va >> 30, (va >> 21) & 0x1FF, (va >> 12) & 0x1FF]
    return [va >> 22, (va >> 12) & 0x3FF]


def plant_page_tables(seed: int, mode: str, image: bytearray, plan: list[str],
                      bigpool: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict]] | None:  # fmt: skip
    """Write the tables into `image`; (kernel_space manifest entry, mapped allocations),
    or None (nothing written) when the image has too few page-table slots."""
    rng = np.random.default_rng(seed ^ 0x9A6E7AB1)
    # Page 0 holds no table or data here, as on a real machine (firmware owns it).
    slots = [p for p, k in enumerate(plan) if k == "page-table" and p]
    slots = [slots[i] for i in rng.permutation(len(slots)).tolist()]
    data_pages = [p for p, k in enumerate(plan) if k == "big-pool" and p]
    if len(slots) < MIN_SLOTS:
        return None
    t = _Tables(mode, slots)
    large = {"x64": 1 << 21, "x86-pae": 1 << 21, "x86": 1 << 22}[mode]
    info: dict[str, Any] = {"paging": mode}
    if mode == "x64":
        top = t.new()
        used = {(e["offset"] >> 39) & 0x1FF for e in bigpool}
        free = [i for i in range(0x100, 0x1FF) if i not in used]
        self_index = free[int(rng.integers(len(free)))]
        t.entries[top][self_index] = top * PAGE | RW | 1 << 63
        info |= {"dtb": top * PAGE, "self_map_index": self_index}
        directories = None
    elif mode == "x86-pae":
        pdpt_page = t.new()
        pds = [t.new() for _ in range(4)]
        for i, pd in enumerate(pds):
            t.entries[pds[3]][i] = pd * PAGE | RW
        at = 32 * int(rng.integers(1, PAGE // 32))
        info |= {"dtb": pdpt_page * PAGE + at, "self_map_index": 3,
                 "page_directories": [pd * PAGE for pd in pds]}  # fmt: skip
        directories = pds
    else:
        top = t.new()
        t.entries[top][0x300] = top * PAGE | RW
        info |= {"dtb": top * PAGE, "self_map_index": 0x300}
        directories = None

    def table_for(va: int, depth_from_bottom: int) -> tuple[int, int] | None:
        """(table page, index) of the entry `depth_from_bottom` levels above the PTE
        (0: the PTE) for `va`, making the tables above it."""
        idx = _levels(mode, va)
        if mode == "x86-pae":
            table, rest = pds[idx[0]], idx[1:]
        else:
            table, rest = top, idx
        for i in rest[: len(rest) - 1 - depth_from_bottom]:
            table = t.child(table, i)
            if table is None:
                return None
        return table, rest[len(rest) - 1 - depth_from_bottom]

    # The whole image at a kernel address, in large pages.
    window_va = {"x64": 0xFFFF_C081_4000_0000, "x86-pae": 0x8000_0000, "x86": 0x8000_0000}[mode]
    count = -(-len(image) // large)
    for k in range(count):
        slot = table_for(window_va + k * large, 1)
        assert slot is not None and t.set(*slot, k * large | RW | LARGE)
    info["pool_window"] = {"va": window_va, "size": count * large}

    mapped: list[dict[str, Any]] = []
    candidates = [e for e in bigpool if e["state"] == "allocated" and not e["crosses"]]
    order = [candidates[i] for i in rng.permutation(len(candidates)).tolist()]
    huge_done = mode != "x64"
    large_done = False
    specials = False
    for e in order:
        va, size = e["offset"], e["size"]
        npages = -(-size // PAGE)
        if -(-(va % large + size) // large) > 1:
            continue  # keep every mapping of one allocation inside one large region
        if not huge_done:
            slot = table_for(va, 2)
            if slot and t.set(*slot, RW | LARGE):  # frame 0
                pages = [(va + i * PAGE) & ((1 << 30) - 1) for i in range(npages)]
                mapped.append(_row(e, 1 << 30, pages))
                huge_done = True
            continue
        if not large_done:
            slot = table_for(va, 1)
            if slot and t.set(*slot, RW | LARGE):  # frame 0
                pages = [(va + i * PAGE) % large for i in range(npages)]
                mapped.append(_row(e, large, pages))
                large_done = True
            continue
        if len(mapped) >= MAX_4K + 2 or t.left() < 3:
            break
        need = len({(va + i * PAGE) // large for i in range(npages)})
        if t.left() < need + 2:
            continue
        ptes = []
        for i in range(npages):
            slot = table_for(va + i * PAGE, 0)
            if slot is None:
                break
            ptes.append(slot)
        if len(ptes) < npages or any(s[1] in t.entries[s[0]] for s in ptes):
            continue
        pages: list[int | None] = []
        for i, slot in enumerate(ptes):
            frame = data_pages[int(rng.integers(len(data_pages)))] * PAGE
            value = frame | RW | (1 << 63 if mode != "x86" else 0)
            if not specials and npages >= 4 and i in (1, 2, 3):
                # A transition PTE (still in memory: valid), a prototype PTE and a
                # paged-out one (no page).
                if mode == "x86":
                    odd = (frame | TRANSITION, frame | PROTOTYPE, 0x00012080)
                else:
                    odd = (frame | TRANSITION, frame | PROTOTYPE, 0x1234 << 32 | 0x80)
                value = odd[i - 1]
                pages.append(frame if i == 1 else None)
            else:
                pages.append(frame)
            t.set(*slot, value)
        specials |= npages >= 4
        mapped.append(_row(e, PAGE, pages))
    for page in t.entries:
        image[page * PAGE : (page + 1) * PAGE] = t.page_bytes(page)
    if mode == "x86-pae":
        pdpt = b"".join(struct.pack("<Q", pd * PAGE | 1) for pd in directories)
        at = info["dtb"]
        image[at : at + 32] = pdpt
    info["table_pages"] = sorted(p * PAGE for p in t.entries)
    return info, sorted(mapped, key=lambda r: r["offset"])


def _row(e: dict[str, Any], page_size: int, pages: list) -> dict[str, Any]:
    return {"offset": e["offset"], "size": e["size"], "tag": e["tag"], "entry": e["entry"],
            "page_size": page_size, "pages": pages}  # fmt: skip
