"""The kernel's virtual address space of a physical dump: page-table root and translation.

`kernel_space(image, architecture)` finds the root (a crash dump's header names it;
else the self-map search of `addressing.search`) and returns a `KernelSpace`: the
`PageTables` to translate through, which method found them, and, when no layer can be
built, a note saying why. No layer is never an error: the page scan does not need one;
only the views of big-pool bytes (the `pool --hexdump` view, `extract`, YARA placement)
do, and they say so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pooltagscan.addressing.paging import (
    FRAME32,
    FRAME64,
    MODES,
    PAE,
    PAGE_SIZE,
    X64,
    X86,
    PageTables,
    Piece,
    Translation,
)
from pooltagscan.addressing.search import Root, check_root, search
from pooltagscan.inputs.base import MemoryImage

HEADER = "crash dump header"
SEARCH = "self-reference search"
# Architectures (MemoryImage.architecture or the layout's) -> paging modes to try.
ARCH_MODES = {"x64": (X64,), "x86": (PAE, X86)}
MODE_NAMES = {X64: "x64 4-level", PAE: "x86 PAE", X86: "x86 (non-PAE)"}


@dataclass
class KernelSpace:
    """The outcome of looking for the kernel's page tables in one dump."""

    tables: PageTables | None
    method: str | None = None  # HEADER or SEARCH
    root: Root | None = None
    candidates: int = 0  # self-referencing pages found by the search's vector test
    valid: int = 0  # ... that passed its checks
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.tables is not None

    @property
    def dtb(self) -> int | None:
        if self.tables is None:
            return None
        return self.tables.root

    def describe(self) -> str:
        """One line for `scan -v` and the notes of the views that use it."""
        if self.tables is None:
            return "kernel address space: none (" + "; ".join(self.notes) + ")"
        mode = MODE_NAMES[self.tables.mode]
        dtb = f"DTB {self.dtb:#x}" if self.dtb is not None else "DTB not located"
        text = f"kernel address space: {mode}, {dtb}, found by the {self.method}"
        if self.method == SEARCH:
            text += f" ({self.candidates} candidate(s), {self.valid} valid"
            if self.root is not None:
                text += f"; self-map index {self.root.index:#x}"
            text += f"; {self.seconds:.2f}s)"
        elif self.root is not None:
            text += f" (self-map index {self.root.index:#x})"
        if self.tables.mode == PAE and self.tables.pae_directories:
            pds = ", ".join("-" if d is None else f"{d:#x}" for d in self.tables.pae_directories)
            text += f"; page directories {pds}"
        return text

    def as_dict(self) -> dict[str, Any]:
        """For JSON metadata: addresses as integers, what a reader can rely on."""
        if self.tables is None:
            return {"available": False, "notes": list(self.notes)}
        out: dict[str, Any] = {
            "available": True,
            "paging": self.tables.mode,
            "dtb": self.dtb,
            "method": self.method,
        }
        if self.method == SEARCH:
            out["candidates"] = self.candidates
            out["valid_candidates"] = self.valid
        if self.root is not None:
            out["self_map_index"] = self.root.index
            out["top_table"] = self.root.table
        if self.tables.mode == PAE:
            out["page_directories"] = list(self.tables.pae_directories or ())
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def translate(self, virtual: int) -> Translation | None:
        return None if self.tables is None else self.tables.translate(virtual)


def _header_root(
    image: MemoryImage, modes: tuple[str, ...]
) -> tuple[PageTables, Root | None] | None:
    """Page tables from the DirectoryTableBase a crash dump's header carries, when
    its table is in the dump and holds kernel-half entries (else None: search)."""
    dtb = image.page_table_root
    if dtb is None:
        return None
    limit = image.max_address
    for mode in modes:
        if mode == X64:
            table = dtb & FRAME64  # the low 12 bits may be a PCID
        elif mode == X86:
            table = dtb & FRAME32
        else:
            tables = PageTables(PAE, dtb & 0xFFFF_FFE0, image.read)
            pd3 = tables.pae_directories[3] if tables.pae_directories else None
            if pd3 is None:
                continue
            root = check_root(image.read, pd3, PAE, limit)
            if root is None:
                continue
            return tables, root
        root = check_root(image.read, table, mode, limit)
        if root is not None:
            return PageTables(mode, table, image.read), root
    return None


def kernel_space(image: MemoryImage, architecture: str | None) -> KernelSpace:
    """Look for the kernel's page tables (see the module docstring); never raises for
    what the dump holds."""
    if image.format == "minidump":
        return KernelSpace(
            None,
            notes=[
                (
                    "a kernel minidump holds kernel virtual memory without page tables; "
                    "its addresses are already virtual"
                )
            ],
        )
    modes = ARCH_MODES.get(architecture or "", MODES)
    if architecture is not None and architecture not in ARCH_MODES:
        return KernelSpace(None, notes=[f"no page-table walk for {architecture} dumps"])
    start = time.perf_counter()
    notes: list[str] = []
    given = _header_root(image, modes)
    if given is not None:
        tables, root = given
        return KernelSpace(tables, HEADER, root, seconds=time.perf_counter() - start)
    if image.page_table_root is not None:
        notes.append(
            f"the header's DirectoryTableBase {image.page_table_root:#x} does not hold a "
            "kernel page table in this dump; searched for one instead"
        )
    result = search(image, modes)
    seconds = time.perf_counter() - start
    if result.root is None:
        notes.append(
            f"no kernel page-table root found ({result.candidates} self-referencing "
            "page(s), none valid): big-pool addresses cannot be translated"
        )
        return KernelSpace(None, candidates=result.candidates, seconds=seconds, notes=notes)
    root = result.root
    if root.mode == PAE:
        tables = PageTables(PAE, root.pdpt, image.read, pae_directories=root.directories)
        if root.pdpt is None:
            notes.append(
                "the PDPT (CR3) was not located; the page directories come from the self-map"
            )
    else:
        tables = PageTables(root.mode, root.table, image.read)
    return KernelSpace(tables, SEARCH, root, result.candidates, result.valid, seconds, notes)


def read_virtual(
    image: MemoryImage, tables: PageTables, virtual: int, length: int, chunk: int = 1 << 20
) -> Iterator[tuple[bytes, int]]:
    """(bytes, how many of them are zeros standing for missing memory) for a virtual
    range, in pieces of at most `chunk` bytes: pages the tables do not map or the dump
    does not hold read as zeros. Bounded by `length` whatever the tables say."""
    for piece in tables.pieces(virtual, length):
        done = 0
        while done < piece.length:
            step = min(chunk, piece.length - done)
            if piece.physical is None:
                yield bytes(step), step
            else:
                yield _read_physical(image, piece.physical + done, step)
            done += step


def _read_physical(image: MemoryImage, address: int, length: int) -> tuple[bytes, int]:
    """(`length` bytes at a physical address, how many the dump lacks): read across
    runs, a page the dump does not hold reads as zeros."""
    out = bytearray()
    missing = 0
    while len(out) < length:
        at = address + len(out)
        data = image.read(at, length - len(out))
        if not data:  # a hole: zeros up to the next page
            gap = min(length - len(out), PAGE_SIZE - at % PAGE_SIZE)
            out += bytes(gap)
            missing += gap
            continue
        out += data
    return bytes(out), missing


__all__ = [
    "HEADER",
    "PAGE_SIZE",
    "SEARCH",
    "KernelSpace",
    "PageTables",
    "Piece",
    "Translation",
    "kernel_space",
    "read_virtual",
]
