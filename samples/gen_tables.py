"""The kernel's pool tables for the sample images: PoolBigPageTable and PoolTrackTable.

Both are virtually contiguous arrays; the caller scatters their pages over physical
memory. Layouts follow docs/pool-tables.md: per family one big-page entry layout (XP
x86 12 bytes, Vista+ x86 16, Windows 7 x64 24 with a plain PoolType, Windows 10 x64 24
with the Pattern/PoolType/SlushSize bitfield, builds 20348+ 32 bytes with ProcessBilled)
and one tracker layout (x86 28 bytes, x64 40, later 64-bit builds 56).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from gen_common import PAGE, Spec, kernel_ptrs, pick_tags, stored_tag, tag_text

# family -> (entry size, entries, PoolType style, size unit)
BIG_FORMATS: dict[str, tuple[int, int, str, str]] = {
    "xp-x86": (12, 1024, "none", "pages"),
    "win7-x86": (16, 1024, "plain", "bytes"),
    "win7-x64": (24, 1024, "plain", "bytes"),
    "win10-1809-x64": (24, 1024, "bitfield", "bytes"),
    "win11-segheap-x64": (32, 512, "bitfield", "bytes"),
}
# family -> (tracker entry size, entries)
TRACKER_FORMATS: dict[str, tuple[int, int]] = {
    "xp-x86": (28, 512),
    "win7-x86": (28, 512),
    "win7-x64": (40, 512),
    "win10-1809-x64": (40, 512),
    "win11-segheap-x64": (56, 512),
}
_PLAIN_TYPES = (0, 1, 0x21, 4)  # NonPaged, Paged, session Paged, NonPaged cache aligned
_WIN10_TYPES = (0x200, 1, 0x200, 0, 0x221, 0x204)  # NX nonpaged is the commonest


def _big_va(rng: np.random.Generator, spec: Spec, n: int) -> list[int]:
    """Distinct page-aligned kernel addresses."""
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < n:
        va = int(kernel_ptrs(rng, spec, 1)[0]) & ~0xFFF
        if va and va not in seen:
            seen.add(va)
            out.append(va)
    return out


def big_page_table(rng: np.random.Generator, spec: Spec) -> tuple[bytes, list[dict[str, Any]]]:
    """Table bytes (a page multiple) and its used and freed entries (`index` in the table)."""
    size, count, style, unit = BIG_FORMATS[spec.name]
    states = rng.choice(3, size=count, p=[0.40, 0.15, 0.45])  # allocated, freed, never used
    used = np.flatnonzero(states < 2)
    tags = pick_tags(rng, used.size)
    vas = _big_va(rng, spec, used.size)
    buf = bytearray()
    entries: list[dict[str, Any]] = []
    by_index = {int(i): k for k, i in enumerate(used.tolist())}
    for i in range(count):
        k = by_index.get(i)
        if k is None:  # never used: the free bit alone
            buf += (1).to_bytes(spec.ptr_size, "little") + bytes(size - spec.ptr_size)
            continue
        freed = bool(states[i] == 1)
        raw, protected = stored_tag(spec, tags[k])
        pages = int(rng.integers(1, 65))
        nbytes = pages * PAGE if unit == "pages" or rng.random() < 0.3 else (
            int(rng.integers(0xFE0, pages * PAGE + 1)))  # fmt: skip
        if style == "plain":
            ptype = _PLAIN_TYPES[int(rng.integers(len(_PLAIN_TYPES)))]
            ptfield = ptype
        elif style == "bitfield":
            ptype = _WIN10_TYPES[int(rng.integers(len(_WIN10_TYPES)))]
            slush = (-nbytes) % PAGE & 0xFFF
            ptfield = int(rng.integers(256)) | ptype << 8 | slush << 20
        else:
            ptype = ptfield = -1
        va = vas[k] | int(freed)
        if spec.x86:
            third = ptfield if style != "none" else pages
            last = nbytes if style != "none" else 0
            entry = struct.pack("<IIII", va, int.from_bytes(raw, "little"), third, last)
        else:
            entry = struct.pack("<Q4sIQ", va, raw, ptfield, nbytes)
            if size == 32:  # ProcessBilled: a process or nothing
                billed = int(kernel_ptrs(rng, spec, 1)[0]) if rng.random() < 0.3 else 0
                entry += struct.pack("<Q", billed)
        buf += entry[:size]
        entries.append(
            {
                "index": i,
                "va": vas[k],
                "tag": tag_text(tags[k]),
                "protected": protected,
                "size": pages * PAGE if unit == "pages" else nbytes,
                "pool": "unknown" if ptype < 0 else ("paged" if ptype & 1 else "nonpaged"),
                "state": "free" if freed else "allocated",
            }
        )
    assert len(buf) % PAGE == 0
    return bytes(buf), entries


def tracker_table(
    rng: np.random.Generator,
    spec: Spec,
    live: dict[str, dict[str, list[int]]],
    absent: frozenset[str] = frozenset(),
) -> tuple[bytes, list[dict[str, Any]]]:
    """A tracker table whose outstanding counts and bytes are those of `live`
    ({tag: {"nonpaged": [count, bytes], "paged": [...]}}), plus tags with nothing
    outstanding, none of them in `absent`. Rows are returned in table order with their
    `index`."""
    size, count = TRACKER_FORMATS[spec.name]
    names = sorted(live)
    extra = [t.decode() for t in pick_tags(rng, 12)]
    names += sorted(set(extra) - set(names) - absent)
    # A real table is mostly full: the kernel tracks every tag ever allocated since boot,
    # most of them with nothing left in a given dump. Invented tags fill it to ~45%.
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                             np.uint8)  # fmt: skip
    while len(names) < count * 45 // 100:
        tag = bytes(alphabet[rng.integers(0, alphabet.size, 4)].tolist()).decode()
        if tag not in names and tag not in absent:
            names.append(tag)
    slots = rng.choice(count, size=len(names), replace=False)
    # One entry straddles a page boundary, as some do in every real table.
    crossing = next(i for i in range(count) if i * size % PAGE + size > PAGE)
    if crossing not in slots.tolist():
        slots[0] = crossing
    rows: dict[int, dict[str, Any]] = {}
    for name, slot in zip(names, slots.tolist()):
        row: dict[str, Any] = {"index": slot, "tag": name}
        for pool in ("nonpaged", "paged"):
            n, b = live.get(name, {}).get(pool, [0, 0])
            frees = int(rng.integers(0, 5000))
            freed_bytes = 0
            row[f"{pool}_allocs"] = n + frees
            row[f"{pool}_frees"] = frees
            row[f"{pool}_bytes"] = b + freed_bytes
        rows[slot] = row
    buf = bytearray()
    for i in range(count):
        row = rows.get(i)
        if row is None:
            buf += bytes(size)
            continue
        key = name_bytes(row["tag"])
        na, nf, nb = row["nonpaged_allocs"], row["nonpaged_frees"], row["nonpaged_bytes"]
        pa, pf, pb = row["paged_allocs"], row["paged_frees"], row["paged_bytes"]
        if size == 28:
            buf += key + struct.pack("<6I", na, nf, nb, pa, pf, pb)
        elif size == 40:
            buf += key + struct.pack("<IIIQIIQ", na, nf, 0, nb, pa, pf, pb)
        else:
            buf += key + struct.pack("<I6Q", 0, nb, na, nf, pb, pa, pf)
    buf += bytes(-len(buf) % PAGE)
    return bytes(buf), [rows[s] for s in sorted(rows)]


def name_bytes(tag: str) -> bytes:
    """Tag bytes of a manifest tag text (`\\xNN` escapes for odd bytes)."""
    return tag.encode("latin-1").decode("unicode_escape").encode("latin-1")
