"""Pool header layouts, PoolType encodings and the kernel's pool tables: the only place
that knows bit positions and field offsets.

Each header family is one `Layout` (unit, header size, bit fields, PoolType encoding,
how its pages are proven, its big-page and tracker table formats); the scanner, the
detection and the record codes derive from LAYOUTS.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

PAGE_SIZE = 4096


class Family(str, enum.Enum):
    """Header family; the value is the `layout` string of the output contract."""

    X86 = "x86"
    X64 = "x64"
    SEGMENT_HEAP = "x64-segment-heap"


class Encoding(str, enum.Enum):
    """How the PoolType byte says paged/nonpaged and allocated/free."""

    XP = "xp"  # XP/2003: 0 = free, else POOL_TYPE + 1 (odd nonpaged, even paged)
    VISTA = "vista"  # Vista+: bit 1 = in use, bit 0 = paged
    SEGMENT_HEAP = "segment-heap"  # 19H1+: (POOL_TYPE & 0x6D) | 2, bit 0 = paged


@dataclass(frozen=True)
class Field:
    """A bit field of header word 0 (PreviousSize/PoolIndex/BlockSize/PoolType)."""

    shift: int
    mask: int

    def of(self, w0: np.ndarray) -> np.ndarray:
        return (w0 >> self.shift) & self.mask

    @property
    def in_place(self) -> int:
        return self.mask << self.shift


@dataclass(frozen=True)
class Layout:
    """Everything one header family means to the scanner, detection and records.

    `scanner` names how pages are proven: "legacy" (whole-page PreviousSize/BlockSize
    chains) or "segment" (strict headers linked at LFH and VS strides). Both header
    sizes keep PreviousSize/PoolIndex/BlockSize/PoolType in the first little-endian
    32-bit word (`w0`) and the tag in the second, so the scanners work on uint32 arrays
    and ask the layout to split `w0`. Adding a family is adding one Layout to LAYOUTS.
    """

    family: Family
    header_size: int
    unit: int  # bytes per BlockSize/PreviousSize unit
    previous: Field
    index: Field
    block: Field
    pooltype: Field
    scanner: str
    evidence: str  # the detection's name for the pages this family proves
    architecture: str
    encoding: Encoding | None = None  # fixed for the segment heap; voted for legacy pools
    big_pages: tuple[tuple[Encoding, tuple[BigPageFormat, ...]], ...] = ()
    trackers: tuple[TrackerFormat, ...] = ()
    vs_header_units: int = 1  # segment heap: the VS chunk header before each POOL_HEADER

    @property
    def units_per_page(self) -> int:
        return PAGE_SIZE // self.unit

    @property
    def words_per_unit(self) -> int:
        """uint32 words per unit: the stride of header slots in a window's word array."""
        return self.unit // 4

    @property
    def size_bits(self) -> int:
        """Width of the BlockSize and PreviousSize fields."""
        return self.block.mask.bit_length()

    def fields(self, w0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Split header word 0 into (PreviousSize, PoolIndex, BlockSize, PoolType)."""
        w0 = w0.astype(np.uint32, copy=False)
        return self.previous.of(w0), self.index.of(w0), self.block.of(w0), self.pooltype.of(w0)

    @property
    def segment_w0(self) -> tuple[np.uint32, np.uint32]:
        """(mask, value) of word 0 for a strict segment-heap header: PreviousSize and
        PoolIndex zero, and the PoolType bits the 19H1+ encoding fixes."""
        mask = self.previous.in_place | self.index.in_place
        mask |= (SEGMENT_POOLTYPE_MASK & self.pooltype.mask) << self.pooltype.shift
        return np.uint32(mask), np.uint32(SEGMENT_POOLTYPE_VALUE << self.pooltype.shift)

    @property
    def segment_max_block(self) -> int:
        """Largest BlockSize with a header: a block spans at most 0xFE0 bytes, header
        included; larger requests go to big pool."""
        return 0xFE0 // self.unit

    def big_page_formats(self, encoding: Encoding) -> tuple[BigPageFormat, ...]:
        """Entry layouts a dump of this family may hold; each page picks the one it proves."""
        found = dict(self.big_pages)
        return found.get(encoding) or next(iter(found.values()), ())


# Legacy PoolType values stay below 0x40: pool class bits, must-succeed/cache-aligned,
# quota (8) and session (0x20), plus one for the XP "+1" encoding.
LEGACY_POOLTYPE_LIMIT = 0x40

# Segment heap PoolType: bit 1 always set, bits 4 and 7 never (mask 0x6D keeps the rest).
SEGMENT_POOLTYPE_MASK = 0x92
SEGMENT_POOLTYPE_VALUE = 0x02

# Codes used in record arrays (see records.py).
POOL_NONPAGED, POOL_PAGED, POOL_UNKNOWN = 0, 1, 2
STATE_ALLOCATED, STATE_FREE, STATE_UNKNOWN = 0, 1, 2


def decode_pooltype(pooltype: np.ndarray, encoding: Encoding) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized PoolType -> (pool code, state code) for one encoding.

    Segment-heap headers do not say whether a block is free (LFH frees leave the header),
    so their state comes from the scanner's evidence, not from here: UNKNOWN is returned.
    """
    pt = pooltype.astype(np.uint8, copy=False)
    n = pt.shape[0]
    if encoding is Encoding.XP:
        free = pt == 0
        pool = np.where(pt & 1, POOL_NONPAGED, POOL_PAGED).astype(np.uint8)
        pool[free] = POOL_UNKNOWN
        state = np.where(free, STATE_FREE, STATE_ALLOCATED).astype(np.uint8)
    elif encoding is Encoding.VISTA:
        pool = np.where(pt & 1, POOL_PAGED, POOL_NONPAGED).astype(np.uint8)
        state = np.where(pt & 2, STATE_ALLOCATED, STATE_FREE).astype(np.uint8)
    else:
        pool = np.where(pt & 1, POOL_PAGED, POOL_NONPAGED).astype(np.uint8)
        state = np.full(n, STATE_UNKNOWN, dtype=np.uint8)
    return pool, state


# ---------------------------------------------------------------- kernel tables
# Facts and sources: docs/pool-tables.md. Entries of both tables are found page by page
# (scanner/bigpages.py, scanner/tracker.py); these describe where their fields sit.


@dataclass(frozen=True)
class BigPageFormat:
    """One `_POOL_TRACKER_BIG_PAGES` entry layout (entries of PoolBigPageTable).

    Va bit 0 set means free; a freed entry keeps its Va (plus one), Key and size, a
    never-used one holds only the free bit. `pooltype` is None where the entry has no
    PoolType (XP/2003: the pool is not recorded); `size_in_pages` on XP/2003.
    """

    name: str
    entry_size: int
    ptr_size: int
    key_at: int
    pooltype_at: int | None
    size_at: int
    size_in_pages: bool = False
    size_width: int = 0  # bytes of the size field; 0: a pointer's
    # Windows 10+: the dword after Key is {Pattern:8, PoolType:12, SlushSize:12};
    # None = decided per page (legacy x64 covers Windows 7 to 10 1809).
    bitfield: bool | None = False

    @property
    def kernel_min(self) -> int:
        return 0xFFFF800000000000 if self.ptr_size == 8 else 0x80000000

    def phases(self) -> range:
        """Offsets, inside a page, at which an entry of a page-aligned table can start."""
        step = 4 if self.ptr_size == 4 else 8
        return range(0, self.entry_size if PAGE_SIZE % self.entry_size else step, step)


BIG_XP_X86 = BigPageFormat("xp-x86", 12, 4, 4, None, 8, size_in_pages=True)
BIG_2003_X64 = BigPageFormat("2003-x64", 24, 8, 8, None, 12, size_in_pages=True, size_width=4)
BIG_2003_X86 = BigPageFormat("2003-x86", 16, 4, 4, None, 8, size_in_pages=True)
BIG_VISTA_X86 = BigPageFormat("vista-x86", 16, 4, 4, 8, 12)
BIG_X64 = BigPageFormat("x64", 24, 8, 8, 12, 16, bitfield=None)
BIG_WIN10_X64 = BigPageFormat("win10-x64", 24, 8, 8, 12, 16, bitfield=True)
BIG_20348_X64 = BigPageFormat("20348-x64", 32, 8, 8, 12, 16, bitfield=True)

# POOL_TYPE bits a big-page entry may carry: paged (1), cache aligned (4), session
# (0x20), NX (0x200). Must-succeed (2) is refused by Windows 8+ and never seen there.
BIG_POOLTYPE_BITS = 0x225
# Larger than this is no big-pool allocation we believe in (a 4 GiB single block).
BIG_MAX_BYTES = 1 << 32


def big_pooltype(value: np.ndarray, bitfield: bool) -> np.ndarray:
    """The POOL_TYPE held in a big-page entry's dword after Key."""
    value = value.astype(np.uint32, copy=False)
    return (value >> 8) & 0xFFF if bitfield else value


@dataclass(frozen=True)
class TrackerFormat:
    """One `_POOL_TRACKER_TABLE` entry layout (entries of PoolTrackTable): offsets of
    Key and of (allocs, frees, bytes) for nonpaged then paged pool, and field widths."""

    name: str
    entry_size: int
    count_width: int  # bytes of Allocs/Frees
    bytes_width: int  # bytes of the Bytes counters
    nonpaged: tuple[int, int, int]  # offsets of allocs, frees, bytes
    paged: tuple[int, int, int]
    zero_at: tuple[int, ...] = ()  # alignment padding, zero in a real table

    def phases(self) -> range:
        step = 4 if self.count_width == 4 and self.bytes_width == 4 else 8
        return range(0, self.entry_size if PAGE_SIZE % self.entry_size else step, step)


TRACK_X86 = TrackerFormat("x86", 28, 4, 4, (4, 8, 12), (16, 20, 24))
TRACK_X64 = TrackerFormat("x64", 40, 4, 8, (4, 8, 16), (24, 28, 32), zero_at=(12,))
# Later 64-bit builds: every counter 64-bit, bytes first (docs/pool-tables.md).
TRACK_X64_WIDE = TrackerFormat("x64-wide", 56, 8, 8, (16, 24, 8), (40, 48, 32), zero_at=(4,))


# ---------------------------------------------------------------- the families

_X86_FIELDS = (Field(0, 0x1FF), Field(9, 0x7F), Field(16, 0x1FF), Field(25, 0x7F))
_X64_FIELDS = (Field(0, 0xFF), Field(8, 0xFF), Field(16, 0xFF), Field(24, 0xFF))

X86 = Layout(
    Family.X86, 8, 8, *_X86_FIELDS, scanner="legacy", evidence="x86 chains",
    architecture="x86",
    big_pages=((Encoding.XP, (BIG_XP_X86, BIG_2003_X86)), (Encoding.VISTA, (BIG_VISTA_X86,))),
    trackers=(TRACK_X86,),
)  # fmt: skip
X64 = Layout(
    Family.X64, 16, 16, *_X64_FIELDS, scanner="legacy", evidence="x64 chains",
    architecture="x64",
    big_pages=((Encoding.VISTA, (BIG_X64,)), (Encoding.XP, (BIG_2003_X64,))),
    trackers=(TRACK_X64, TRACK_X64_WIDE),
)  # fmt: skip
SEGMENT_HEAP = Layout(
    Family.SEGMENT_HEAP, 16, 16, *_X64_FIELDS, scanner="segment",
    evidence="segment-heap pages", architecture="x64", encoding=Encoding.SEGMENT_HEAP,
    big_pages=((Encoding.SEGMENT_HEAP, (BIG_WIN10_X64, BIG_20348_X64)),),
    trackers=(TRACK_X64, TRACK_X64_WIDE),
)  # fmt: skip

# In the detection's order of preference when the evidence ties.
LAYOUTS: dict[Family, Layout] = {lay.family: lay for lay in (X64, SEGMENT_HEAP, X86)}
