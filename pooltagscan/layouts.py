"""Pool header layouts and PoolType encodings, the only place that knows bit positions.

Both header sizes keep the fields we need in the first two little-endian 32-bit words
(`w0`: PreviousSize/PoolIndex/BlockSize/PoolType, `w1`: PoolTag), so the scanner works on
uint32 arrays and asks this module to split `w0` into fields for a given family.
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
class Layout:
    """Geometry of one header family."""

    family: Family
    header_size: int
    unit: int  # bytes per BlockSize/PreviousSize unit
    size_bits: int  # width of the BlockSize and PreviousSize fields

    @property
    def units_per_page(self) -> int:
        return PAGE_SIZE // self.unit

    def fields(self, w0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Split header word 0 into (PreviousSize, PoolIndex, BlockSize, PoolType)."""
        w0 = w0.astype(np.uint32, copy=False)
        if self.family is Family.X86:
            prev = w0 & 0x1FF
            index = (w0 >> 9) & 0x7F
            block = (w0 >> 16) & 0x1FF
            pooltype = (w0 >> 25) & 0x7F
        else:
            prev = w0 & 0xFF
            index = (w0 >> 8) & 0xFF
            block = (w0 >> 16) & 0xFF
            pooltype = w0 >> 24
        return prev, index, block, pooltype


X86 = Layout(Family.X86, header_size=8, unit=8, size_bits=9)
X64 = Layout(Family.X64, header_size=16, unit=16, size_bits=8)
SEGMENT_HEAP = Layout(Family.SEGMENT_HEAP, header_size=16, unit=16, size_bits=8)

LAYOUTS: dict[Family, Layout] = {lay.family: lay for lay in (X86, X64, SEGMENT_HEAP)}

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
