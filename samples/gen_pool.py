"""Pool pages with exact ground truth: legacy small-pool pages and segment heap subsegments.

Each builder returns bytes plus allocation records
`(offset, tag, protected, size, pool, state, kind, truth)`, offsets relative to what it built.
"""

from __future__ import annotations

import struct

import numpy as np
from gen_common import (
    PAGE,
    Spec,
    fill,
    kernel_ptrs,
    pick_tags,
    random_u64,
    sanitize,
    stored_tag,
    tag_text,
)

Record = tuple[int, str, bool, int, str, str, str, str]

# ---------------------------------------------------------------- legacy small pool


def _partition(rng: np.random.Generator, total: int, max_bs: int, x86: bool) -> list[int]:
    """BlockSizes summing to a page: a few big chunks, a medium mix, or 60+ small ones."""
    style = rng.random()
    if style < 0.2:
        k = int(rng.integers(2, 4))
        while True:
            cuts = np.sort(rng.choice(np.arange(2, total - 1), k - 1, replace=False))
            sizes = np.diff(np.concatenate(([0], cuts, [total])))
            if sizes.min() >= 2 and sizes.max() <= max_bs:
                return [int(s) for s in sizes]
    hi = (64 if x86 else 32) if style < 0.7 else (14 if x86 else 6)
    sizes: list[int] = []
    left = total
    while left > 0:
        s = int(rng.integers(2, hi + 1))
        if style < 0.7 and rng.random() < 0.08:
            s = int(rng.integers(hi, total // 3))
        if left - s < 2:
            s = left
        sizes.append(s)
        left -= s
    return sizes


def _legacy_pooltype(spec: Spec, paged: bool, session: bool, quota: bool, free: bool
                     ) -> tuple[int, str, str]:  # fmt: skip
    """(PoolType byte, observable pool, observable state) for the family's encoding."""
    pool = "paged" if paged else "nonpaged"
    if spec.encoding == "xp":
        if free:
            return 0, "unknown", "free"
        return (int(paged) | 8 * quota | 0x20 * session) + 1, pool, "allocated"
    if free:
        return int(paged), pool, "free"
    return int(paged) | 2 | 8 * quota | 0x20 * session, pool, "allocated"


def legacy_page(rng: np.random.Generator, spec: Spec) -> tuple[bytes, list[Record]]:
    """One legacy pool page: a chain of chunks from 0 to 4096 with a consistent PoolIndex."""
    unit = spec.unit
    sizes = _partition(rng, PAGE // unit, 511 if spec.x86 else 255, spec.x86)
    n = len(sizes)
    cls = int(rng.choice(3, p=[0.45, 0.45, 0.10]))  # nonpaged, paged, session paged
    paged, session = cls != 0, cls == 2
    index = int(rng.choice(5, p=[0.1, 0.3, 0.2, 0.2, 0.2])) if cls == 1 else 0
    free = rng.random(n) < 0.12
    free[-1] = rng.random() < 0.45
    for i in range(n - 2, -1, -1):  # free neighbours would have been coalesced
        if free[i] and free[i + 1]:
            free[i] = False
    quota = (rng.random(n) < 0.12) & ~free & (not session)
    tags = pick_tags(rng, n, odd_rate=0.006)
    page = bytearray(fill(rng, spec, PAGE).tobytes())
    ps = spec.ptr_size
    ptrs = kernel_ptrs(rng, spec, 3 * n).tolist()
    extra = random_u64(rng, n).tolist()
    small = rng.integers(1, 0x10000, 2 * n).tolist()
    plain = rng.random(n) < 0.85
    recs: list[Record] = []
    off, prev = 0, 0
    for i, bs in enumerate(sizes):
        raw, prot = stored_tag(spec, tags[i])
        ptype, pool, state = _legacy_pooltype(spec, paged, session, bool(quota[i]), bool(free[i]))
        if spec.x86:
            page[off : off + 8] = struct.pack("<HH", prev | index << 9, bs | ptype << 9) + raw
        else:
            if quota[i]:
                billed = ptrs[3 * i] if spec.billed == "pointer" else extra[i]
            else:
                billed = 0 if plain[i] else small[2 * i] | small[2 * i + 1] << 16
            page[off : off + 16] = bytes((prev, index, bs, ptype)) + raw + struct.pack("<Q", billed)
        end = off + bs * unit
        if free[i] and end - off >= unit + 2 * ps:  # free-list LIST_ENTRY
            fmt = "<II" if spec.x86 else "<QQ"
            page[off + unit : off + unit + 2 * ps] = struct.pack(fmt, ptrs[3 * i + 1],
                                                                 ptrs[3 * i + 2])  # fmt: skip
        if quota[i] and spec.x86 and bs >= 2:  # x86 keeps the billed process at the block end
            page[end - 4 : end] = struct.pack("<I", ptrs[3 * i])
        recs.append((off, tag_text(tags[i]), prot, bs * unit, pool, state, "legacy",
                     "freed" if free[i] else "allocated"))  # fmt: skip
        prev, off = bs, end
    return bytes(page), recs


# ---------------------------------------------------------------- segment heap

_NO_HEADER_AT = 0xFE0  # a VS header here would put its POOL_HEADER in a page's last 16 bytes
_MIN_VS = 48  # VS header + the smallest chunk (BlockSize 2)
_MAX_VS_ALLOC = 16 + 0xFE * 16


def _segment_class(rng: np.random.Generator) -> tuple[int, bool]:
    """Base PoolType of a subsegment (2 nonpaged, 3 paged, 0x23 session) and quota use."""
    base = int(rng.choice([2, 3, 0x23], p=[0.45, 0.45, 0.10]))
    return base, base != 0x23


def _seg_header(rng: np.random.Generator, bs: int, ptype: int, tag: bytes) -> bytes:
    billed = int(random_u64(rng, 1)[0]) if ptype & 8 else 0
    return bytes((0, 0, bs, ptype)) + tag + struct.pack("<Q", billed)


def _seg_record(off: int, tag: bytes, size: int, ptype: int, state: str, kind: str,
                truth: str) -> Record:  # fmt: skip
    return (off, tag_text(tag), False, size, "paged" if ptype & 1 else "nonpaged", state, kind,
            truth)  # fmt: skip


def _random16(rng: np.random.Generator) -> bytes:
    """An encoded (random-looking) header that cannot pass as a POOL_HEADER."""
    b = np.frombuffer(rng.bytes(16), dtype=np.uint8).copy()
    sanitize(b)
    return b.tobytes()


_LFH_SMALL = np.arange(2, 0x41)  # BlockSizes 0x20..0x400 bytes
_LFH_SMALL_P = 1.0 / _LFH_SMALL**0.8
_LFH_SMALL_P /= _LFH_SMALL_P.sum()


def lfh_subsegment(rng: np.random.Generator, spec: Spec, max_pages: int
                   ) -> tuple[bytes, list[Record]]:  # fmt: skip
    """1-4 pages: a subsegment header with a busy bitmap, then blocks of one stride."""
    if max_pages >= 2 and rng.random() < 0.15:
        stride = int(rng.choice([0x7F0, 0xBF0]))
        npages = min(int(rng.integers(2, 5)), max_pages)
    else:
        stride = 16 * int(rng.choice(_LFH_SMALL, p=_LFH_SMALL_P))
        npages = min(int(rng.integers(1, 5)), max_pages)
    size = npages * PAGE
    hdr = 16 * int(rng.integers(4, 9))
    count = (size - hdr) // stride
    style = rng.random()
    if style < 0.6:  # busy
        states = rng.choice(3, size=count, p=[0.25, 0.55, 0.20])  # 0 never used, 1 live, 2 stale
    elif style < 0.8:  # filled from the start, tail never used
        states = np.where(rng.random(count) < 0.75, 1, 2)
        states[int(rng.integers(1, count + 1)) :] = 0
    else:  # sparse: isolated blocks whose neighbours were never used
        states = np.zeros(count, dtype=np.int64)
        for i in range(count):
            if rng.random() < 0.18 and (i == 0 or states[i - 1] == 0):
                states[i] = 1 if rng.random() < 0.7 else 2
        if not states.any():
            states[int(rng.integers(count))] = 1
        for i in range(1, count):  # keep them isolated
            if states[i] and states[i - 1]:
                states[i] = 0
    base, quota_ok = _segment_class(rng)
    body = fill(rng, spec, size)
    buf = bytearray(size)
    head = np.zeros(hdr, dtype=np.uint8)
    head[:16] = kernel_ptrs(rng, spec, 2).astype("<u8").view(np.uint8)
    head[16:24] = np.frombuffer(rng.bytes(8), dtype=np.uint8)
    head[24:32] = np.frombuffer(struct.pack("<HHI", count, stride // 16, 0x10000 | npages),
                                dtype=np.uint8)  # fmt: skip
    bits = np.packbits((states != 0).astype(np.uint8), bitorder="little")[: hdr - 32]
    head[32 : 32 + len(bits)] = bits
    sanitize(head)
    buf[:hdr] = head.tobytes()
    tags = pick_tags(rng, count)
    quota = (rng.random(count) < 0.15) & quota_ok
    recs: list[Record] = []
    for i in np.flatnonzero(states).tolist():
        pos = hdr + i * stride
        ptype = base | (8 if quota[i] else 0)
        buf[pos : pos + stride] = body[pos : pos + stride].tobytes()
        buf[pos : pos + 16] = _seg_header(rng, stride // 16, ptype, tags[i])
        live = states[i] == 1
        recs.append(_seg_record(pos, tags[i], stride, ptype, "unknown", "lfh",
                                "allocated" if live else "freed"))  # fmt: skip
    return bytes(buf), recs


def _fit(t: int, pos: int, size: int, tmin: int, tmax: int) -> int:
    """Nearest chunk length to t that leaves room for another chunk (or ends the subsegment)
    and never ends where the next VS header would put a POOL_HEADER in a page's last 16 bytes."""
    rem = size - pos
    for d in range(0, 0x400, 16):
        for c in (t + d, t - d):
            if not tmin <= c <= min(tmax, rem):
                continue
            if c == rem or (rem - c >= _MIN_VS and (pos + c) % PAGE != _NO_HEADER_AT):
                return c
    return rem if tmin <= rem <= tmax else -1


def vs_subsegment(rng: np.random.Generator, spec: Spec, max_pages: int
                  ) -> tuple[bytes, list[Record]]:  # fmt: skip
    """2-6 pages of variable-size chunks: [VS header][POOL_HEADER][data] or free chunks
    ([VS header][free node][old data]), some of which still hold an absorbed neighbour's
    POOL_HEADER. Large style: mostly one chunk header per page."""
    npages = min(int(rng.integers(2, 7)), max_pages)
    size = npages * PAGE
    large = rng.random() < 0.25
    hdr = 16 * int(rng.integers(3, 8))
    base, quota_ok = _segment_class(rng)
    buf = bytearray(fill(rng, spec, size).tobytes())  # what earlier allocations left behind
    head = np.frombuffer(rng.bytes(hdr), dtype=np.uint8).copy()
    head[:16] = kernel_ptrs(rng, spec, 2).astype("<u8").view(np.uint8)
    sanitize(head)
    buf[:hdr] = head.tobytes()
    recs: list[Record] = []
    pos, prev_free = hdr, False
    while pos < size:
        rem = size - pos
        if not prev_free and rng.random() < (0.10 if large else 0.22):
            stale_bs = int(rng.integers(2, 0x40)) if rng.random() < 0.3 else 0
            t = 16 + 16 * int(rng.integers(2, 0x40)) + (32 + 16 * stale_bs if stale_bs else 0)
            t = _fit(t, pos, size, _MIN_VS, rem)
            a = t - 32 - 16 * stale_bs  # free node + old data before the stale neighbour
            if stale_bs and (pos + 16 + a) % PAGE == _NO_HEADER_AT:
                stale_bs, a = stale_bs - 1, a + 16
            buf[pos : pos + 16] = _random16(rng)
            node = kernel_ptrs(rng, spec, 3)
            node[2] |= np.uint64(rng.integers(0, 2))  # parent value carries a colour bit
            buf[pos + 16 : pos + 40] = node.astype("<u8").tobytes()
            if stale_bs >= 2 and a >= 32:
                at = pos + 16 + a
                tag = pick_tags(rng, 1)[0]
                ptype = base | (8 if quota_ok and rng.random() < 0.15 else 0)
                buf[at : at + 16] = _random16(rng)
                buf[at + 16 : at + 32] = _seg_header(rng, stale_bs, ptype, tag)
                recs.append(_seg_record(at + 16, tag, 16 * stale_bs, ptype, "unknown",
                                        "vs-stale", "freed"))  # fmt: skip
            prev_free = True
        else:
            if large:
                bs = int(rng.integers(0xB0, 0xFF))
            elif rng.random() < 0.85:
                bs = int(rng.integers(2, 0x40))
            else:
                bs = int(rng.integers(0x40, 0xFF))
            t = _fit(16 + 16 * bs, pos, size, _MIN_VS, _MAX_VS_ALLOC)
            if t < 0:  # the tail cannot be one allocation: end with a free chunk
                prev_free = False
                continue
            bs = (t - 16) // 16
            tag = pick_tags(rng, 1)[0]
            ptype = base | (8 if quota_ok and rng.random() < 0.15 else 0)
            buf[pos : pos + 16] = _random16(rng)
            buf[pos + 16 : pos + 32] = _seg_header(rng, bs, ptype, tag)
            recs.append(_seg_record(pos + 16, tag, 16 * bs, ptype, "allocated", "vs",
                                    "allocated"))  # fmt: skip
            prev_free = False
        pos += t
    return bytes(buf), recs
