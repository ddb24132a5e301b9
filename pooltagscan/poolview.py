"""The pool block that holds one address, and its neighbours: WinDbg's `!pool` on a dump.

An analyst holding an address (from a YARA hit, a pointer in another structure, a
crash's parameter) wants to know which allocation it lies in, that block's tag and owner,
and what else shares its page. The answer comes from the scanner's own records, so it is
exactly what `pooltagscan scan` reports there; nothing here prints.

Cost: an address of the dump's own address space (physical for raw, crash, LiME, ELF and
VMware dumps; virtual for kernel minidumps) is answered by scanning its one page, since
every scanner check stays inside a page. Big-pool allocations carry no header in their
page; only the kernel's big-page table, wherever its pages lie in the dump, knows them, so
an address that no header-carrying block of its page holds is looked up in a full scan of
the dump (a scan's cost: a second or two per GiB) when it can be a big-pool address: a
kernel virtual address, or any address of a minidump (whose space is virtual). A
physical address that cannot be a kernel virtual address gets no full scan.

A kernel virtual address given for a physical dump (beyond its physical addresses) is
first translated through the kernel's page tables when they are found: the physical
page it maps is scanned like a physical address's page, so a small-pool block is found
by its virtual address at the cost of one page (and no full scan); only when no block
of that page holds it is the big-page table searched. The view says the translation.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pooltagscan.addressing import KernelSpace, Translation, read_virtual
from pooltagscan.filters import RecordFilter
from pooltagscan.layouts import LAYOUTS, PAGE_SIZE
from pooltagscan.records import (
    CONFIDENCE_NAMES,
    FAMILY_CODES,
    POOL_NAMES,
    RECORD_DTYPE,
    SOURCE_BIGPOOL,
    SOURCE_NAMES,
    STATE_NAMES,
    TagNames,
    concat,
    take,
)
from pooltagscan.scan import PreparedScan, run
from pooltagscan.scanner.engine import ProgressCallback, window_records
from pooltagscan.tags.database import TagDatabase

# Kernel virtual addresses start here: a physical dump's big-page table records these.
KERNEL_MIN = {"x86": 0x80000000, "x64": 0xFFFF800000000000}
ADDRESS_LIMIT = {"x86": 1 << 32, "x64": 1 << 64}
# A big-pool block may span megabytes; a hex dump beyond this says how much it left out.
HEXDUMP_LIMIT = 64 << 10
_HEX = re.compile(r"(?:0[xX])?[0-9a-fA-F]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+", re.ASCII)


def parse_address(text: str) -> int:
    """`0x`-hex or decimal; also WinDbg's `fffff800`12345678` (hex, as its backtick says),
    pasted from a debugger session. ValueError with the reason otherwise."""
    windbg = "`" in text
    cleaned = text.strip().replace("`", "")
    negative = cleaned.startswith("-")
    body = cleaned[1:] if negative else cleaned
    if _HEX.fullmatch(body) and (windbg or body[:2].lower() == "0x"):
        value = int(body, 16)
    elif _DECIMAL.fullmatch(body) and not windbg:
        value = int(body, 10)
    else:
        raise ValueError(f"{text!r} is not an address (use 0x-hex or decimal)")
    if negative and value:
        raise ValueError(f"{text!r} is negative")
    if value >= 1 << 64:
        raise ValueError(f"{text!r} is beyond 64 bits")
    return value


@dataclass
class PoolBlock:
    """One block of the listing, in the words of the output contract."""

    offset: int
    size: int
    previous_size: int | None  # legacy headers only; the segment heap has no such field
    tag: str
    protected: bool
    pool: str
    state: str
    layout: str
    confidence: str
    source: str
    entry: int | None
    owner: str
    description: str
    holding: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PoolView:
    """What `pooltagscan pool` shows for one address."""

    address: int
    page: int | None  # the page searched for headers (None: not in the dump's space)
    searched: list[str]  # "page", and "bigpool" when the big-page table was searched
    blocks: list[PoolBlock] = field(default_factory=list)
    holding: PoolBlock | None = None
    data: bytes | None = None  # the holding block's bytes (header included), if asked
    data_notes: list[str] = field(default_factory=list)
    # A kernel virtual address of a physical dump: what its translation gave (None:
    # the address was taken as it is), in JSON's words and in one phrase.
    translation: dict[str, Any] | None = None
    translation_text: str | None = None

    @property
    def physical(self) -> int | None:
        """The translated physical address, when the address was translated to one."""
        return None if self.translation is None else self.translation["physical"]

    @property
    def offset_in_block(self) -> int | None:
        if self.holding is None:
            return None
        # A page block's offset is physical; a big-pool allocation's is virtual.
        at = self.physical if self.holding.source == "page" and self.physical else self.address
        return at - self.holding.offset


class AddressError(ValueError):
    """An address outside what the dump's address space can hold."""


def check_address(prepared: PreparedScan, address: int) -> None:
    """AddressError for an address the dump cannot hold.

    A physical dump's space is [0, its highest address), plus the kernel's virtual
    space, where big-pool allocations live (found through the big-page table); a
    minidump's space is virtual, bounded by the architecture.
    """
    image = prepared.image
    arch = LAYOUTS[prepared.config.family].architecture
    if address >= ADDRESS_LIMIT[arch]:
        raise AddressError(f"{address:#x} is beyond the {arch} address space")
    if image.format == "minidump" or address < image.max_address:
        return
    if address >= KERNEL_MIN[arch]:
        return  # a kernel virtual address: a big-pool allocation may hold it
    raise AddressError(
        f"{address:#x} is beyond the dump's physical address space "
        f"(0x0-{image.max_address - 1:#x}) and not an {arch} kernel virtual address"
    )


def _describe(db: TagDatabase, tag: int) -> tuple[str, str]:
    info = db.describe(int(tag))
    return ("", "") if info is None else (info.owner, info.description)


def _blocks(
    records: np.ndarray, prevs: list[int | None], db: TagDatabase, names: TagNames
) -> list[PoolBlock]:
    out = []
    for rec, prev in zip(records, prevs):
        owner, description = _describe(db, rec["tag"])
        bigpool = int(rec["source"]) == SOURCE_BIGPOOL
        out.append(
            PoolBlock(
                offset=int(rec["offset"]),
                size=int(rec["size"]),
                previous_size=prev,
                tag=names(int(rec["tag"])),
                protected=bool(rec["protected"]),
                pool=POOL_NAMES[rec["pool"]],
                state=STATE_NAMES[rec["state"]],
                layout=FAMILY_CODES[rec["family"]].value,
                confidence=CONFIDENCE_NAMES[rec["confidence"]],
                source=SOURCE_NAMES[rec["source"]],
                entry=int(rec["entry"]) if bigpool else None,
                owner=owner,
                description=description,
            )
        )
    return out


def _holds(records: np.ndarray, address: int) -> np.ndarray:
    """Which records span `address` (unsigned, nothing wraps at the top of 64 bits)."""
    offsets = records["offset"]
    at = np.uint64(address)
    inside = offsets <= at
    return inside & (np.where(inside, at - offsets, 0) < records["size"].astype(np.uint64))


def page_blocks(
    prepared: PreparedScan, address: int
) -> tuple[int | None, np.ndarray, list[int | None]]:
    """(page, its header-carrying records in address order, their PreviousSize in bytes
    or None) for the page holding `address`; (None, empty, []) without such a page."""
    image = prepared.image
    window = image.page_window(address)
    if window is None:
        return None, np.empty(0, RECORD_DTYPE), []
    config = dataclasses.replace(prepared.config, tables=False)
    layout = LAYOUTS[config.family]
    with image.words(window) as words:
        records = window_records(image, config, window, words)
        records = records[np.argsort(records["offset"], kind="stable")]
        prevs: list[int | None] = [None] * len(records)
        if layout.scanner == "legacy":
            slot = (records["offset"] - np.uint64(window.address)).astype(np.int64) // 4
            w0 = np.asarray(words[0])[slot]
            prevs = (layout.previous.of(w0).astype(np.int64) * layout.unit).tolist()
    return window.address, records, prevs


def could_be_big_pool(prepared: PreparedScan, address: int) -> bool:
    """Whether the big-page table could record `address`: a minidump's addresses are
    virtual; a physical dump's big-pool addresses are kernel virtual addresses."""
    arch = LAYOUTS[prepared.config.family].architecture
    return prepared.image.format == "minidump" or address >= KERNEL_MIN[arch]


def big_pool_holding(
    prepared: PreparedScan, address: int, jobs: int = 1, progress: ProgressCallback | None = None
) -> np.ndarray:
    """Every big-page table entry whose allocation spans `address` (a full scan), in
    table order: usually one; a freed entry keeps its old address, so a stale one may
    come too."""
    only_big = RecordFilter(sources=frozenset({SOURCE_BIGPOOL}))
    found = []
    for records in run(prepared, only_big, jobs, progress):
        if records.size:
            hit = take(records, _holds(records, address))
            if hit.size:
                found.append(hit)
    return concat(found)


def needs_translation(prepared: PreparedScan, address: int) -> bool:
    """A kernel virtual address given for a physical dump: not one of the dump's
    physical addresses (those win where the ranges meet, on x86 dumps over 2 GiB)."""
    image = prepared.image
    arch = LAYOUTS[prepared.config.family].architecture
    return (
        image.format != "minidump" and address >= image.max_address and address >= KERNEL_MIN[arch]
    )


def describe_translation(space: KernelSpace, found: Translation | None) -> str:
    """The translation in one phrase, for the headline: where the address went and
    through what (or why it could not)."""
    if found is None:
        why = "; ".join(space.notes) or "no kernel page tables"
        return f"not translated ({why})"
    dtb = f"DTB {space.dtb:#x}, " if space.dtb is not None else ""
    through = f"kernel page tables: {dtb}found by the {space.method}"
    if found.physical is None:
        return f"maps no physical page ({found.why}; {through})"
    kind = " through a transition PTE" if found.transition else ""
    big = found.page_size
    unit = f"{big >> 20} MiB" if big >= 1 << 20 else f"{big >> 10} KiB"
    size = "" if big == PAGE_SIZE else f" in a {unit} page"
    return f"translates to physical {found.physical:#x}{kind}{size} ({through})"


def _translate(prepared: PreparedScan, view: PoolView) -> int | None:
    """Translate the view's (virtual) address; the physical address, or None."""
    space = prepared.kernel_space()
    found = space.translate(view.address)
    view.translation_text = describe_translation(space, found)
    view.translation = {
        "virtual": view.address,
        "physical": None if found is None else found.physical,
        "page_size": None if found is None else found.page_size,
        "transition": False if found is None else found.transition,
        "why": ("no kernel page tables" if found is None else found.why),
        "dtb": space.dtb,
        "method": space.method,
    }
    return None if found is None else found.physical


def find(
    prepared: PreparedScan,
    address: int,
    db: TagDatabase,
    hexdump: bool = False,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
) -> PoolView:
    """The view of `address` (check it first with `check_address`): the blocks of its
    page with the holding one marked, or the big-pool allocation holding it. A kernel
    virtual address of a physical dump is looked up at its translation first."""
    names = TagNames()
    view = PoolView(address, None, [])
    lookup: int | None = address
    if needs_translation(prepared, address):
        lookup = _translate(prepared, view)
    if lookup is None:
        page, records, prevs = None, np.empty(0, RECORD_DTYPE), []
    else:
        page, records, prevs = page_blocks(prepared, lookup)
    view.page = page
    view.searched = ["page"] if page is not None else []
    view.blocks = _blocks(records, prevs, db, names)
    held = np.flatnonzero(_holds(records, lookup)) if records.size else []
    if len(held):
        view.holding = view.blocks[int(held[0])]
    elif could_be_big_pool(prepared, address):
        view.searched.append("bigpool")
        big = big_pool_holding(prepared, address, jobs, progress)
        if big.size:
            # A live entry before a freed one that once held the same address.
            order = np.argsort(big["state"] != 0, kind="stable")
            view.blocks = _blocks(big[order], [None] * big.size, db, names)
            view.holding = view.blocks[0]
    if view.holding is not None:
        view.holding.holding = True
        if hexdump:
            _read_holding(prepared, view)
    return view


def _read_holding(prepared: PreparedScan, view: PoolView) -> None:
    """The holding block's bytes, header included, as far as the dump can tell them."""
    block = view.holding
    assert block is not None
    image = prepared.image
    virtual = image.format == "minidump"
    if block.source == "bigpool" and not virtual:
        _read_translated(prepared, view, block)
        return
    length = min(block.size, HEXDUMP_LIMIT)
    if not virtual:
        # In a physical dump the next page is unrelated memory: stop at the page end.
        room = PAGE_SIZE - block.offset % PAGE_SIZE if block.source == "page" else length
        if room < length:
            view.data_notes.append(
                f"the block runs past its page's end; the {block.size - room} bytes beyond "
                "are in the next physical page, unrelated memory, and are not shown"
            )
            length = room
    view.data = image.read(block.offset, length)
    if length < block.size and length == HEXDUMP_LIMIT:
        view.data_notes.append(f"the first {length} of the block's {block.size} bytes shown")
    if len(view.data) < length:
        view.data_notes.append(f"the dump holds only {len(view.data)} of these bytes")
    if virtual and not bool(image.captured(np.array([block.offset], np.uint64), length)[0]):
        view.data_notes.append(
            "the minidump does not hold every byte of this block: missing bytes read as 00"
        )


def _read_translated(prepared: PreparedScan, view: PoolView, block: PoolBlock) -> None:
    """A big-pool allocation of a physical dump, read through the kernel's page tables
    (pages they do not map, or the dump does not hold, read as 00 and are noted)."""
    space = prepared.kernel_space()
    if space.tables is None:
        why = "; ".join(space.notes) or "no kernel page tables"
        view.data_notes.append(
            f"no bytes shown: the big-pool allocation's address {block.offset:#x} is virtual "
            f"and this dump's addresses are physical; no address translation ({why})"
        )
        return
    length = min(block.size, HEXDUMP_LIMIT)
    parts = list(read_virtual(prepared.image, space.tables, block.offset, length))
    view.data = b"".join(data for data, _ in parts)
    missing = sum(m for _, m in parts)
    first = space.tables.translate(block.offset)
    where = "not mapped" if first.physical is None else f"physical {first.physical:#x}"
    dtb = f"DTB {space.dtb:#x}, " if space.dtb is not None else ""
    view.data_notes.append(
        f"read through the kernel page tables ({dtb}found by the {space.method}); the "
        f"allocation starts at {where}"
    )
    if length < block.size:
        view.data_notes.append(f"the first {length} of the block's {block.size} bytes shown")
    if missing:
        view.data_notes.append(
            f"{missing} of these {length} bytes are in pages the page tables do not map or "
            "the dump does not hold: they read as 00"
        )
