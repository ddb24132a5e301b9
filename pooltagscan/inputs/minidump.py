"""Kernel minidumps (triage dumps, DumpType 4): the files in C:\\Windows\\Minidump.

A kernel minidump is a crash-dump header, a triage header, and scattered fragments of
kernel *virtual* memory. The triage header (right after the dump header: 0x2000 on
64-bit systems, 0x1000 on 32-bit ones) gives DataBlocksOffset/DataBlocksCount, an array
of {virtual address, file offset, size} records (u64/u32/u32 on 64-bit, three u32 on
32-bit). Volatility 3 cannot read these files, so this module does.

The scan runs over the blocks' virtual addresses and reports them: pool alignment is a
property of the virtual address, never of where the bytes happen to sit in the file.
Blocks are rarely whole pages (most are 256 bytes around a pointer the kernel thought
interesting), so each page a block touches is rebuilt in a zero-filled copy with every
block's bytes at their page offsets. Zeros can never pass as a header (BlockSize 0), and
`captured_only` drops any record whose header bytes are not all in the dump, so padding
never invents or completes a header.

Offsets were checked on a real Windows 11 ARM64 minidump (build 22000): triage header
at 0x2000, DataBlocksOffset at +0x78, DataBlocksCount at +0x7C, and the 'TRGD' marker at
ValidOffset ending the triage data; the 32-bit layout follows the same public
descriptions (rizin's dmp_specs.h, published _TRIAGE_DUMP32 symbol offsets).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from pooltagscan.errors import InputError
from pooltagscan.inputs.base import MemoryImage, Run, Window, map_file_range
from pooltagscan.inputs.crashdump import DumpHeader
from pooltagscan.layouts import PAGE_SIZE

TRIAGE_VALID = b"TRGD"  # the ULONG at ValidOffset of a complete triage dump
# The bytes of a POOL_HEADER that a record reports (PreviousSize..PoolType and the tag):
# a record is kept only when all of them come from the dump, not from padding.
REPORTED_HEADER_BYTES = 8
MAX_BLOCKS = 1 << 20  # far above any real minidump; guards against a corrupt count


@dataclass(frozen=True)
class TriageLayout:
    """Where the fields we use sit in the triage header, and the data-block record format."""

    size_of_dump: int
    valid_offset: int
    driver_count: int
    data_page: str  # struct format of (DataPageAddress, DataPageOffset, DataPageSize)
    data_page_at: int
    blocks_at: int  # DataBlocksOffset, DataBlocksCount (two u32)
    record: struct.Struct  # one data block: (virtual address, file offset, size)


TRIAGE64 = TriageLayout(0x04, 0x08, 0x34, "<QII", 0x60, 0x78, struct.Struct("<QII"))
TRIAGE32 = TriageLayout(0x04, 0x08, 0x34, "<III", 0x4C, 0x60, struct.Struct("<III"))


@dataclass
class MinidumpImage(MemoryImage):
    """Kernel virtual memory rebuilt page by page from a minidump's data blocks.

    `blocks` holds (virtual address, file offset, size), sorted and non-overlapping;
    `spans` the captured virtual ranges with neighbouring blocks merged. Runs cover every
    page a block touches; their file_offset is meaningless (pages are assembled).
    """

    blocks: list[tuple[int, int, int]] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)

    @contextmanager
    def words(self, window: Window) -> Iterator[np.ndarray]:
        buf = self._assemble(window.address, window.length)
        yield np.frombuffer(buf, dtype="<u4").reshape(-1, PAGE_SIZE // 4)

    def read(self, address: int, length: int) -> bytes:
        for run in self.runs:
            if run.address <= address < run.address + run.length:
                length = min(length, run.address + run.length - address)
                return bytes(self._assemble(address, length))
        return b""

    def _assemble(self, address: int, length: int) -> bytearray:
        """`length` bytes of virtual memory at `address`: block bytes, zeros elsewhere."""
        buf = bytearray(length)
        end = address + length
        starts = [b[0] for b in self.blocks]
        first = max(0, bisect.bisect_right(starts, address) - 1)
        wanted = []
        for va, offset, size in self.blocks[first:]:
            if va >= end:
                break
            lo, hi = max(va, address), min(va + size, end)
            if lo < hi:
                wanted.append((lo - address, offset + lo - va, hi - lo))
        if wanted:
            low = min(w[1] for w in wanted)
            high = max(w[1] + w[2] for w in wanted)
            with map_file_range(self.path, low, high - low) as view:
                for at, offset, size in wanted:
                    buf[at : at + size] = view[offset - low : offset - low + size]
        return buf

    def captured_only(self, records: np.ndarray) -> np.ndarray:
        if not records.size:
            return records
        # Python integers: virtual addresses sit next to 2**64, where uint64 sums wrap.
        starts = [s for s, _ in self.spans]
        keep = np.zeros(records.size, bool)
        for i, offset in enumerate(records["offset"].tolist()):
            at = bisect.bisect_right(starts, offset) - 1
            keep[i] = at >= 0 and offset + REPORTED_HEADER_BYTES <= self.spans[at][1]
        return records if keep.all() else records[keep]


def open_minidump(path: str, file_size: int, header: DumpHeader) -> MinidumpImage:
    """Read the triage header and data blocks of a DumpType 4 file."""
    layout = TRIAGE64 if header.is64 else TRIAGE32
    base = header.header_size
    with open(path, "rb") as f:
        f.seek(base)
        triage = f.read(0x100)
        if len(triage) < 0x80:
            raise InputError(path, "truncated kernel minidump: no triage header")
        blocks_offset, count = struct.unpack_from("<II", triage, layout.blocks_at)
        (size_of_dump,) = struct.unpack_from("<I", triage, layout.size_of_dump)
        (valid_offset,) = struct.unpack_from("<I", triage, layout.valid_offset)
        (drivers,) = struct.unpack_from("<I", triage, layout.driver_count)
        page_va, page_offset, page_size = struct.unpack_from(
            layout.data_page, triage, layout.data_page_at
        )
        table_size = count * layout.record.size
        if count > MAX_BLOCKS or blocks_offset + table_size > file_size or blocks_offset < base:
            raise InputError(
                path,
                f"kernel minidump with a damaged data-block table "
                f"({count} blocks at {blocks_offset:#x}, file is {file_size} bytes)",
            )
        f.seek(blocks_offset)
        table = f.read(table_size)
        marker = b""
        if 0 < valid_offset <= file_size - 4:
            f.seek(valid_offset)
            marker = f.read(4)
    raw = [layout.record.unpack_from(table, i * layout.record.size) for i in range(count)]
    if page_size and page_va:
        raw.append((page_va, page_offset, page_size))  # the page the bugcheck points at
    blocks, notes = _clean_blocks(raw, file_size, 1 << (64 if header.is64 else 32))
    if not blocks:
        raise InputError(path, "kernel minidump holds no memory blocks")
    spans = _spans(blocks)
    image = MinidumpImage(
        path=path,
        format="minidump",
        runs=_page_runs(blocks),
        architecture=header.architecture,
        file_size=file_size,
        blocks=blocks,
        spans=spans,
    )
    captured = sum(size for _, _, size in blocks)
    whole = sum(1 for va, _, size in blocks if va % PAGE_SIZE == 0 and size % PAGE_SIZE == 0)
    image.details.update(header.details())
    image.details.update(
        data_blocks=count,
        captured_bytes=captured,
        whole_page_blocks=whole,
        pages=image.scanned_bytes // PAGE_SIZE,
        drivers=drivers,
    )
    if size_of_dump and file_size > size_of_dump:
        image.details["secondary_data_bytes"] = file_size - size_of_dump
    if marker != TRIAGE_VALID:
        notes.append("the triage data has no 'TRGD' end marker; the dump may be incomplete")
    image.notes.extend(notes)
    image.notes.append(
        f"kernel minidump: {captured} bytes of kernel virtual memory in {len(blocks)} "
        f"blocks over {image.scanned_bytes // PAGE_SIZE} pages; offsets are virtual addresses"
    )
    return image


def _clean_blocks(
    raw: list[tuple[int, int, int]], file_size: int, space: int
) -> tuple[list[tuple[int, int, int]], list[str]]:
    """Blocks sorted by address, cut to the file and to each other, with notes on repairs."""
    notes = []
    beyond = empty = overlapped = 0
    usable = []
    for va, offset, size in raw:
        if size == 0:
            empty += 1
            continue
        if offset >= file_size or va >= space:
            beyond += 1
            continue
        size = min(size, file_size - offset, space - va)
        usable.append((va, offset, size))
    usable.sort()
    blocks: list[tuple[int, int, int]] = []
    for va, offset, size in usable:
        if blocks:
            prev_end = blocks[-1][0] + blocks[-1][2]
            if va < prev_end:  # overlapping capture: the earlier block's bytes stand
                overlapped += 1
                cut = prev_end - va
                if cut >= size:
                    continue
                va, offset, size = va + cut, offset + cut, size - cut
        blocks.append((va, offset, size))
    if beyond:
        notes.append(f"{beyond} data blocks point outside the file and are skipped")
    if empty:
        notes.append(f"{empty} empty data blocks are skipped")
    if overlapped:
        notes.append(f"{overlapped} data blocks overlap others; the first copy is used")
    return blocks, notes


def _spans(blocks: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for va, _, size in blocks:
        if spans and spans[-1][1] == va:
            spans[-1] = (spans[-1][0], va + size)
        else:
            spans.append((va, va + size))
    return spans


def _page_runs(blocks: list[tuple[int, int, int]]) -> list[Run]:
    """Runs over every virtual page a block touches, neighbouring pages merged."""
    runs: list[Run] = []
    for va, _, size in blocks:
        first = va // PAGE_SIZE * PAGE_SIZE
        last = (va + size - 1) // PAGE_SIZE * PAGE_SIZE + PAGE_SIZE
        if runs and first <= runs[-1].address + runs[-1].length:
            prev = runs[-1]
            end = max(prev.address + prev.length, last)
            runs[-1] = Run(prev.address, 0, end - prev.address)
        else:
            runs.append(Run(first, 0, last - first))
    return runs
