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

The data-block table is parsed with numpy and every count in it is held against the
file before use: the table must lie inside the file, blocks are cut to the file and to
each other, and blocks together may not claim more bytes than the file holds. Pages are
gathered into windows of many scattered pages (`Window.pages`), so a dump of 200,000
blocks on separate pages costs a few dozen windows, not 200,000.

Offsets were checked on a real Windows 11 ARM64 minidump (build 22000): triage header
at 0x2000, DataBlocksOffset at +0x78, DataBlocksCount at +0x7C, and the 'TRGD' marker at
ValidOffset ending the triage data; the 32-bit layout follows the same public
descriptions (rizin's dmp_specs.h, published _TRIAGE_DUMP32 symbol offsets).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs.base import MemoryImage, Run, Window
from pooltagscan.inputs.crashdump import DumpHeader
from pooltagscan.layouts import PAGE_SIZE
from pooltagscan.records import take

TRIAGE_VALID = b"TRGD"  # the ULONG at ValidOffset of a complete triage dump
# The bytes of a POOL_HEADER that a record reports (PreviousSize..PoolType and the tag):
# a record is kept only when all of them come from the dump, not from padding.
REPORTED_HEADER_BYTES = 8
MAX_BLOCKS = 1 << 20  # far above any real minidump; guards against a corrupt count
_PAGE = np.uint64(PAGE_SIZE)
_SHIFT = np.uint64(12)


@dataclass(frozen=True)
class TriageLayout:
    """Where the fields we use sit in the triage header, and the data-block record format."""

    size_of_dump: int
    valid_offset: int
    driver_count: int
    data_page: str  # struct format of (DataPageAddress, DataPageOffset, DataPageSize)
    data_page_at: int
    blocks_at: int  # DataBlocksOffset, DataBlocksCount (two u32)
    record: np.dtype  # one data block: (virtual address, file offset, size)


_RECORD64 = np.dtype([("va", "<u8"), ("offset", "<u4"), ("size", "<u4")])
_RECORD32 = np.dtype([("va", "<u4"), ("offset", "<u4"), ("size", "<u4")])
TRIAGE64 = TriageLayout(0x04, 0x08, 0x34, "<QII", 0x60, 0x78, _RECORD64)
TRIAGE32 = TriageLayout(0x04, 0x08, 0x34, "<III", 0x4C, 0x60, _RECORD32)


@dataclass
class Blocks:
    """Data blocks as arrays, sorted by address and non-overlapping: `va`/`end` (uint64,
    end exclusive) and the file `offset` of each block's first byte (int64)."""

    va: np.ndarray
    end: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return int(self.va.size)

    def captured(self) -> int:
        return int((self.end - self.va).sum()) if len(self) else 0


@dataclass
class MinidumpImage(MemoryImage):
    """Kernel virtual memory rebuilt page by page from a minidump's data blocks.

    `blocks` holds the cleaned data blocks; `span_starts`/`span_ends` the captured
    virtual ranges with neighbouring blocks merged; `pages` the address of every page a
    block touches (uint64, ascending). Runs cover those pages; their file_offset is
    meaningless (pages are assembled).
    """

    blocks: Blocks | None = None
    span_starts: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    span_ends: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    pages: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))

    @property
    def scanned_bytes(self) -> int:
        return int(self.pages.size) * PAGE_SIZE

    @property
    def captured_bytes(self) -> int:
        return int((self.span_ends - self.span_starts).sum()) if self.span_starts.size else 0

    def windows(self, window_bytes: int) -> Iterator[Window]:
        """Windows of up to `window_bytes` of captured pages, gathered across gaps."""
        step = max(1, window_bytes // PAGE_SIZE)
        for first in range(0, self.pages.size, step):
            pages = self.pages[first : first + step]
            yield Window(int(pages[0]), 0, int(pages.size) * PAGE_SIZE, pages=pages)

    def page_window(self, address: int) -> Window | None:
        """The captured page holding the virtual `address`, gathered like a scan window."""
        if not 0 <= address < 1 << 64 or not self.pages.size:
            return None
        page = np.uint64(address - address % PAGE_SIZE)
        at = int(np.searchsorted(self.pages, page))
        if at >= self.pages.size or self.pages[at] != page:
            return None
        return Window(int(page), 0, PAGE_SIZE, pages=self.pages[at : at + 1])

    @contextmanager
    def words(self, window: Window) -> Iterator[np.ndarray]:
        pages = window.pages
        if pages is None:  # a plain stretch of the address space (detection samples)
            first = np.uint64(window.address)
            pages = first + np.arange(window.length // PAGE_SIZE, dtype=np.uint64) * _PAGE
        buf = self._assemble(pages)
        yield np.frombuffer(buf, dtype="<u4").reshape(-1, PAGE_SIZE // 4)

    def read(self, address: int, length: int) -> bytes:
        if length <= 0 or not self.pages.size:
            return b""
        first = address - address % PAGE_SIZE
        last = min(address + length, 1 << 64) - 1
        count = (last - first) // PAGE_SIZE + 1
        if not 0 <= first < 1 << 64 or count > 1 << 16:
            return b""
        page = np.uint64(first) + np.arange(count, dtype=np.uint64) * _PAGE
        return bytes(self._assemble(page)[address - first : address - first + length])

    def _assemble(self, pages: np.ndarray) -> bytearray:
        """The given pages (ascending addresses) of virtual memory: block bytes where
        the dump has them, zeros elsewhere."""
        buf = bytearray(int(pages.size) * PAGE_SIZE)
        blocks = self.blocks
        if blocks is None or not len(blocks) or not pages.size:
            return buf
        # The windows' last byte, not its end: the end of the top page of the address
        # space is 2**64, which wrapped to 0 and made the whole window read as zeros.
        low, top = pages[0], pages[-1] + np.uint64(PAGE_SIZE - 1)
        lo = int(np.searchsorted(blocks.end, low, side="right"))
        hi = int(np.searchsorted(blocks.va, top, side="right"))
        if lo >= hi:
            return buf
        va = np.maximum(blocks.va[lo:hi], low)
        end = np.minimum(blocks.end[lo:hi] - np.uint64(1), top) + np.uint64(1)
        offset = blocks.offset[lo:hi] + (va - blocks.va[lo:hi]).astype(np.int64)
        # Where each piece's first byte lands in the buffer: its page's position among
        # the window's pages. A block's pages are consecutive there (they are all
        # captured pages), so each piece is one contiguous copy.
        slot = np.searchsorted(pages, va - va % _PAGE)
        found = (slot < pages.size) & (pages[np.minimum(slot, pages.size - 1)] == va - va % _PAGE)
        at = slot.astype(np.int64) * PAGE_SIZE + (va % _PAGE).astype(np.int64)
        read = self.file.pread
        for ok, position, file_offset, size in zip(
            found.tolist(), at.tolist(), offset.tolist(), (end - va).astype(np.int64).tolist()
        ):
            if not ok or size <= 0:
                continue
            data = read(file_offset, size)
            if len(data) < size:
                raise self.shrank(file_offset + len(data))
            buf[position : position + size] = data
        return buf

    def captured(self, addresses: np.ndarray, length: int) -> np.ndarray:
        addresses = np.asarray(addresses, np.uint64)
        if not self.span_starts.size:
            return np.zeros(addresses.shape, bool)
        at = np.searchsorted(self.span_starts, addresses, side="right").astype(np.int64) - 1
        # address + length <= end, written so that nothing wraps at the top of 64 bits
        end = self.span_ends[np.maximum(at, 0)]
        need = np.uint64(length)
        return (at >= 0) & (end >= need) & (addresses <= end - need)

    def captured_only(self, records: np.ndarray) -> np.ndarray:
        if not records.size:
            return records
        keep = self.captured(records["offset"], REPORTED_HEADER_BYTES)
        return records if keep.all() else take(records, keep)


def open_minidump(source: InputFile, header: DumpHeader) -> MinidumpImage:
    """Read the triage header and data blocks of a DumpType 4 file."""
    path, file_size = source.path, source.size
    layout = TRIAGE64 if header.is64 else TRIAGE32
    base = header.header_size
    triage = source.pread(base, 0x100)
    if len(triage) < 0x80:
        raise InputError(path, "truncated kernel minidump: no triage header")
    blocks_offset, count = struct.unpack_from("<II", triage, layout.blocks_at)
    (size_of_dump,) = struct.unpack_from("<I", triage, layout.size_of_dump)
    (valid_offset,) = struct.unpack_from("<I", triage, layout.valid_offset)
    (drivers,) = struct.unpack_from("<I", triage, layout.driver_count)
    page_va, page_offset, page_size = struct.unpack_from(
        layout.data_page, triage, layout.data_page_at
    )
    table_size = count * layout.record.itemsize
    if count > MAX_BLOCKS or blocks_offset + table_size > file_size or blocks_offset < base:
        raise InputError(
            path,
            f"kernel minidump with a damaged data-block table "
            f"({count} blocks at {blocks_offset:#x}, file is {file_size} bytes)",
        )
    table = source.pread(blocks_offset, table_size)
    marker = b""
    if 0 < valid_offset <= file_size - 4:
        marker = source.pread(valid_offset, 4)
    records = np.frombuffer(table, dtype=layout.record, count=count)
    va = records["va"].astype(np.uint64)
    offset = records["offset"].astype(np.int64)
    size = records["size"].astype(np.int64)
    if page_size and page_va:  # the page the bugcheck points at
        va = np.append(va, np.uint64(page_va))
        offset = np.append(offset, page_offset)
        size = np.append(size, page_size)
    space_bits = 64 if header.is64 else 32
    blocks, notes = clean_blocks(va, offset, size, file_size, space_bits)
    if not len(blocks):
        raise InputError(path, "kernel minidump holds no memory blocks")
    captured = blocks.captured()
    if captured > file_size:
        raise InputError(
            path,
            f"kernel minidump whose data blocks claim {captured} bytes of memory, more than "
            f"the {file_size}-byte file holds (blocks share file bytes: the table is damaged)",
        )
    span_starts, span_ends = _spans(blocks)
    pages = _pages(blocks)
    image = MinidumpImage(
        path=path,
        format="minidump",
        runs=_page_runs(pages),
        architecture=header.architecture,
        file_size=file_size,
        source=source,
        blocks=blocks,
        span_starts=span_starts,
        span_ends=span_ends,
        pages=pages,
    )
    whole = int(
        np.count_nonzero((blocks.va % _PAGE == 0) & ((blocks.end - blocks.va) % _PAGE == 0))
    )
    image.details.update(header.details())
    image.details.update(
        data_blocks=count,
        captured_bytes=captured,
        whole_page_blocks=whole,
        pages=int(pages.size),
        drivers=drivers,
    )
    if size_of_dump and file_size > size_of_dump:
        image.details["secondary_data_bytes"] = file_size - size_of_dump
    if marker != TRIAGE_VALID:
        notes.append("the triage data has no 'TRGD' end marker; the dump may be incomplete")
    image.notes.extend(notes)
    image.notes.append(
        f"kernel minidump: {captured} bytes of kernel virtual memory in {len(blocks)} "
        f"blocks over {pages.size} pages; offsets are virtual addresses"
    )
    return image


def clean_blocks(
    va: np.ndarray, offset: np.ndarray, size: np.ndarray, file_size: int, space_bits: int
) -> tuple[Blocks, list[str]]:
    """Blocks sorted by address, cut to the file, the address space and each other.

    Empty blocks and blocks starting outside the file or the address space are dropped;
    where blocks overlap, the earlier block's bytes stand. (The last byte of the 64-bit
    address space is never captured, so block ends fit in uint64.)
    """
    notes = []
    va = va.astype(np.uint64)
    empty = size == 0
    beyond = ~empty & (offset >= file_size)
    if space_bits < 64:
        beyond |= ~empty & (va >= np.uint64(1 << space_bits))
    usable = ~empty & ~beyond
    va, offset, size = va[usable], offset[usable], size[usable]
    top = np.uint64((1 << space_bits) - 1)
    room = np.minimum(top - va, np.uint64(1 << 32)).astype(np.int64)
    size = np.minimum(np.minimum(size, file_size - offset), room)
    order = np.lexsort((size, offset, va))
    va, offset, size = va[order], offset[order], size[order]
    end = va + size.astype(np.uint64)
    overlapped = 0
    if va.size:
        reach = np.maximum.accumulate(end)
        previous_end = np.concatenate(([np.uint64(0)], reach[:-1]))
        cut = va < previous_end
        cut[0] = False
        overlapped = int(np.count_nonzero(cut))
        start = np.where(cut, previous_end, va)
        keep = start < end
        offset = offset + (start - va).astype(np.int64)
        va = start
        va, end, offset = va[keep], end[keep], offset[keep]
    if int(np.count_nonzero(beyond)):
        notes.append(
            f"{int(np.count_nonzero(beyond))} data blocks point outside the file and are skipped"
        )
    if int(np.count_nonzero(empty)):
        notes.append(f"{int(np.count_nonzero(empty))} empty data blocks are skipped")
    if overlapped:
        notes.append(f"{overlapped} data blocks overlap others; the first copy is used")
    return Blocks(va, end, offset), notes


def _spans(blocks: Blocks) -> tuple[np.ndarray, np.ndarray]:
    """Captured ranges: blocks that touch end to start merged."""
    if not len(blocks):
        return blocks.va, blocks.end
    breaks = blocks.va[1:] != blocks.end[:-1]
    starts = blocks.va[np.concatenate(([True], breaks))]
    ends = blocks.end[np.concatenate((breaks, [True]))]
    return starts, ends


def _pages(blocks: Blocks) -> np.ndarray:
    """Addresses of every page a block touches, ascending, each once."""
    first = blocks.va >> _SHIFT
    last = (blocks.end - np.uint64(1)) >> _SHIFT
    counts = (last - first + np.uint64(1)).astype(np.int64)
    starts = np.repeat(first, counts)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(counts) - counts, counts
    )
    numbers = starts + within.astype(np.uint64)
    if numbers.size > 1:  # sorted already: neighbouring blocks may share a page
        numbers = numbers[np.concatenate(([True], numbers[1:] != numbers[:-1]))]
    return numbers << _SHIFT


def _page_runs(pages: np.ndarray) -> list[Run]:
    """Runs of consecutive captured pages."""
    if not pages.size:
        return []
    breaks = np.flatnonzero(pages[1:] != pages[:-1] + _PAGE) + 1
    firsts = np.concatenate(([0], breaks))
    lasts = np.concatenate((breaks, [pages.size]))
    return [
        Run(int(pages[a]), 0, int(b - a) * PAGE_SIZE)
        for a, b in zip(firsts.tolist(), lasts.tolist())
    ]
