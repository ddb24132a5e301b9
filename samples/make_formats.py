"""Wrap pages of the sample raw dumps in the container formats analysts bring.

Every file here is written by our own code from the public descriptions of its format:
- Windows crash dumps: DUMP_HEADER64 / DUMP_HEADER32 (0x2000 / 0x1000 bytes, "PAGE" fill),
  full dumps (DumpType 1, PhysicalMemoryBlockBuffer runs) and bitmap dumps (DumpType 5
  "FDMP" and 6 "SDMP" summary headers with one bit per physical page);
- kernel minidumps (DumpType 4): triage header after the dump header, a table of
  {virtual address, file offset, size} data blocks, the 'TRGD' marker at ValidOffset;
- LiME: 32-byte range headers ("EMiL", version 1, first and last physical address);
- ELF64 core: a PT_NOTE then PT_LOAD program headers (p_paddr = physical address);
- VMware: a flat .vmem and a .vmss whose "memory" group holds regionsCount and the
  regionPPN / regionPageNum / regionSize tags.

Each wraps 128 pages of one sample family (every 4th page, from a per-file start) and puts
them at physical (or, for minidumps, kernel virtual) addresses that differ from their file
offsets, with gaps. `formats.json` records, per file, where every wrapped raw page went, so a
test can translate the raw sample's scan to the addresses each format must report.

    python samples/make_formats.py [--out DIR]

Deterministic: same inputs, same bytes (tests check it).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DUMPS = HERE / "dumps"
PAGE = 4096
PAGES = 128  # pages wrapped per file: 512 KiB keeps the committed samples small

Piece = tuple[int, int, int]  # (first raw page, address of its first byte, page count)


def raw_pages(family: str, start: int) -> list[bytes]:
    """Every 4th page of a sample family, beginning at page `start`."""
    data = (DUMPS / f"{family}.raw").read_bytes()
    return [data[p * PAGE : (p + 1) * PAGE] for p in range(start, 512, 4)][:PAGES]


def page_numbers(start: int) -> list[int]:
    return list(range(start, 512, 4))[:PAGES]


def _fill(size: int) -> bytearray:
    """A dump header as Windows writes it: every unused ULONG holds "PAGE"."""
    return bytearray(b"PAGE" * (size // 4))


# ---------------------------------------------------------------- crash dumps


def _dump_header64(
    dump_type: int, build: int, machine: int, bugcheck: tuple[int, ...]
) -> bytearray:
    head = _fill(0x2000)
    struct.pack_into("<8sII", head, 0, b"PAGEDU64", 0xF, build)
    struct.pack_into("<QQQQ", head, 0x10, 0x1AA000, 0xFFFFFA8000000000, 0xFFFFF80002E4D890,
                     0xFFFFF80002E2FB30)  # fmt: skip
    struct.pack_into("<III", head, 0x30, machine, 4, bugcheck[0])
    struct.pack_into("<4Q", head, 0x40, *bugcheck[1:])
    struct.pack_into("<I", head, 0xF98, dump_type)
    struct.pack_into("<QQ", head, 0xFA0, 0, 0x01D7A9137C0DBDD7)  # RequiredDumpSpace, SystemTime
    return head


def _dump_header32(dump_type: int, build: int, bugcheck: tuple[int, ...]) -> bytearray:
    head = _fill(0x1000)
    struct.pack_into("<8sII", head, 0, b"PAGEDUMP", 0xF, build)
    struct.pack_into("<IIII", head, 0x10, 0x185000, 0x84200000, 0x8055A620, 0x8055C6D8)
    struct.pack_into("<III", head, 0x20, 0x14C, 1, bugcheck[0])
    struct.pack_into("<4I", head, 0x2C, *bugcheck[1:])
    struct.pack_into("<B", head, 0x5C, 0)  # PaeEnabled
    struct.pack_into("<I", head, 0xF88, dump_type)
    return head


def _runs(pieces: list[Piece]) -> list[tuple[int, int]]:
    return [(address // PAGE, count) for _, address, count in pieces]


def crash_full64(pages: list[bytes], pieces: list[Piece]) -> bytes:
    head = _dump_header64(1, 17763, 0x8664, (0xE2, 0, 0, 0, 0))
    runs = _runs(pieces)
    struct.pack_into("<IIQ", head, 0x88, len(runs), 0, sum(c for _, c in runs))
    for i, (base, count) in enumerate(runs):
        struct.pack_into("<QQ", head, 0x98 + 16 * i, base, count)
    return bytes(head) + b"".join(pages)


def crash_full32(pages: list[bytes], pieces: list[Piece]) -> bytes:
    head = _dump_header32(1, 2600, (0x7E, 0xC0000005, 0x8054A1B2, 0xF8A3C9E4, 0xF8A3C6E0))
    runs = _runs(pieces)
    struct.pack_into("<II", head, 0x64, len(runs), sum(c for _, c in runs))
    for i, (base, count) in enumerate(runs):
        struct.pack_into("<II", head, 0x6C + 8 * i, base, count)
    return bytes(head) + b"".join(pages)


def _crash_bitmap64(dump_type: int, signature: bytes, build: int, bugcheck: tuple[int, ...]
                    ) -> Callable[[list[bytes], list[Piece]], bytes]:  # fmt: skip
    def write(pages: list[bytes], pieces: list[Piece]) -> bytes:
        head = _dump_header64(dump_type, build, 0x8664, bugcheck)
        pfns = [address // PAGE + i for _, address, count in pieces for i in range(count)]
        bits = max(pfns) + 1
        bitmap = bytearray(-(-bits // 32) * 4)  # whole ULONGs, as the dump writer emits
        for pfn in pfns:
            bitmap[pfn // 8] |= 1 << (pfn % 8)
        summary = bytearray(0x38)
        first_page = -(-(0x2000 + 0x38 + len(bitmap)) // PAGE) * PAGE
        struct.pack_into("<4s4sI", summary, 0, signature, b"DUMP", 0)
        struct.pack_into("<QQQ", summary, 0x20, first_page, len(pfns), bits)
        body = bytes(summary) + bytes(bitmap)
        gap = first_page - 0x2000 - len(body)
        return bytes(head) + body + bytes(gap) + b"".join(pages)

    return write


# ---------------------------------------------------------------- kernel minidumps


def _minidump(is64: bool, blocks: list[tuple[int, bytes]], build: int,
              bugcheck: tuple[int, ...]) -> bytes:  # fmt: skip
    """Dump header, triage header, data-block table, block bytes (file order as given), TRGD."""
    if is64:
        head = _dump_header64(4, build, 0x8664, bugcheck)
        record = struct.Struct("<QII")
        blocks_at = 0x78
    else:
        head = _dump_header32(4, build, bugcheck)
        record = struct.Struct("<III")
        blocks_at = 0x60
    base = len(head)
    triage = bytearray(0x100)
    table_at = base + len(triage)
    data_at = table_at + record.size * len(blocks)
    table = bytearray()
    body = bytearray()
    for va, data in blocks:
        table += record.pack(va, data_at + len(body), len(data))
        body += data
    valid_offset = data_at + len(body)
    struct.pack_into("<III", triage, 0, 0, valid_offset + 4, valid_offset)
    struct.pack_into("<II", triage, blocks_at, table_at, len(blocks))
    return bytes(head) + bytes(triage) + bytes(table) + bytes(body) + b"TRGD"


def minidump_blocks(pages: list[bytes], pieces: list[Piece], partial: list[dict[str, Any]]
                    ) -> list[tuple[int, bytes]]:  # fmt: skip
    """Blocks of whole pages (one per piece) and fragments of pages (the `partial` list),
    written in an order unrelated to their addresses, as real minidumps do."""
    blocks = []
    for first, address, count in pieces:
        data = b"".join(pages[first + i] for i in range(count))
        blocks.append((address, data))
    for frag in partial:
        page = pages[frag["index"]]
        for lo, hi in frag["captured"]:
            blocks.append((frag["address"] + lo, page[lo:hi]))
    order = sorted(range(len(blocks)), key=lambda i: (i * 7919) % len(blocks))
    return [blocks[i] for i in order]


# ---------------------------------------------------------------- LiME, ELF, VMware


def lime(pages: list[bytes], pieces: list[Piece]) -> bytes:
    out = bytearray()
    for first, address, count in pieces:
        out += struct.pack("<IIQQQ", 0x4C694D45, 1, address, address + count * PAGE - 1, 0)
        out += b"".join(pages[first : first + count])
    return bytes(out)


def elf_core(pages: list[bytes], pieces: list[Piece]) -> bytes:
    """ELF64 core: header, PT_NOTE + PT_LOADs, a note, then the segments (unaligned offsets),
    plus one PT_LOAD with no file bytes (memory the core does not store)."""
    note_name = b"CORE\0\0\0\0"
    note_desc = bytes(range(64)) * 4
    note = struct.pack("<III", len(b"CORE\0"), len(note_desc), 1) + note_name + note_desc
    phnum = 2 + len(pieces)
    data_at = 64 + 56 * phnum + len(note)
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, 64 + 56 * phnum, 0, 0, len(note), 0, 4)]
    offset = data_at
    for _, address, count in pieces:
        size = count * PAGE
        phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, offset, address, address, size, size, PAGE))
        offset += size
    hole = pieces[-1][1] + pieces[-1][2] * PAGE + 0x100000
    phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, offset, hole, hole, 0, 16 * PAGE, PAGE))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    body = b"".join(b"".join(pages[f : f + c]) for f, _, c in pieces)
    return header + b"".join(phdrs) + note + body


def _vmss_tag(name: bytes, indices: tuple[int, ...], value: int, size: int) -> bytes:
    """One tag: flags (index count << 6 | data size), name length, name, u32 indices, data."""
    flags = (len(indices) << 6) | size
    data = struct.pack("<I" if size == 4 else "<Q", value)
    return bytes([flags, len(name)]) + name + b"".join(struct.pack("<I", i) for i in indices) + data


def vmss(pieces: list[Piece]) -> bytes:
    """A minimal saved-state file: two groups, the "memory" one describing the regions."""
    groups = [b"Checkpoint", b"memory"]
    header = struct.pack("<4sII", b"\xd2\xbe\xd2\xbe", 0, len(groups))
    table_size = len(groups) * 80
    checkpoint = _vmss_tag(b"version", (), 8, 4) + b"\0\0"
    memory = _vmss_tag(b"align_mask", (), 0xFFFF, 4)
    memory += _vmss_tag(b"regionsCount", (), len(pieces), 4)
    page_num = 0
    for i, (_, address, count) in enumerate(pieces):
        memory += _vmss_tag(b"regionPageNum", (i,), page_num, 4)
        memory += _vmss_tag(b"regionPPN", (i,), address // PAGE, 4)
        memory += _vmss_tag(b"regionSize", (i,), count, 4)
        page_num += count
    memory += b"\0\0"
    at_checkpoint = len(header) + table_size
    at_memory = at_checkpoint + len(checkpoint)
    table = struct.pack("<64sQQ", groups[0], at_checkpoint, 0)
    table += struct.pack("<64sQQ", groups[1], at_memory, 0)
    return header + table + checkpoint + memory


# ---------------------------------------------------------------- the catalogue

# name -> (family, first page, format, architecture, pieces, writer)
GiB = 1 << 30
KERNEL64 = 0xFFFFBB8EB0000000
KERNEL64_PAGED = 0xFFFFA90365000000
KERNEL32 = 0x85000000


def _spread(counts: list[int], addresses: list[int]) -> list[Piece]:
    pieces, first = [], 0
    for count, address in zip(counts, addresses):
        pieces.append((first, address, count))
        first += count
    return pieces


def _minidump_layout(base: int, paged: int) -> tuple[list[Piece], list[dict[str, Any]]]:
    """100 single-page blocks a page apart, 5 blocks of 4 pages, 8 fragmented pages."""
    pieces = [(i, base + i * 2 * PAGE, 1) for i in range(100)]
    pieces += [(100 + 4 * j, paged + j * 16 * PAGE, 4) for j in range(5)]
    partial = []
    for k in range(8):
        lo_end = 0x800 + 0x10 * k
        partial.append({
            "index": 120 + k,
            "address": paged + 0x100000 + k * 3 * PAGE,
            "captured": [[0, lo_end], [lo_end + 0x200 + 8 * k, PAGE - 0x40 * k]],
        })  # fmt: skip
    return pieces, partial


MINI64 = _minidump_layout(KERNEL64, KERNEL64_PAGED)
MINI32 = _minidump_layout(KERNEL32, 0x9A000000)

CATALOGUE: dict[str, dict[str, Any]] = {
    "crash-full-x64.dmp": {
        "family": "win10-1809-x64", "start": 0, "format": "crashdump", "architecture": "x64",
        "pieces": _spread([40, 60, 28], [0x10 * PAGE, 0x400 * PAGE, GiB - 28 * PAGE]),
        "writer": crash_full64,
        "details": {"dump_type": "full (1)", "build": 17763, "bugcheck": "0xe2"}},
    "crash-full-x86.dmp": {
        "family": "xp-x86", "start": 1, "format": "crashdump", "architecture": "x86",
        "pieces": _spread([16, 100, 12], [0x1 * PAGE, 0x100 * PAGE, 0x7FF00 * PAGE]),
        "writer": crash_full32,
        "details": {"dump_type": "full (1)", "build": 2600, "bugcheck": "0x7e"}},
    "crash-bitmap-x64.dmp": {
        "family": "win11-segheap-x64", "start": 1, "format": "crashdump", "architecture": "x64",
        "pieces": _spread([16] * 8, [(1 + 23 * i + (0x1000 if i >= 4 else 0)) * PAGE
                                  for i in range(8)]),
        "writer": _crash_bitmap64(5, b"FDMP", 22621, (0x1A, 0x41792, 0xFFFFF6FB7DBED000, 0, 0)),
        "details": {"dump_type": "bitmap full (5)", "build": 22621, "bugcheck": "0x1a"}},
    "crash-kernel-bitmap-x64.dmp": {
        "family": "win7-x64", "start": 2, "format": "crashdump", "architecture": "x64",
        "pieces": _spread([64, 1, 63], [0x30 * PAGE, 0x90 * PAGE, 0x2_0000 * PAGE]),
        "writer": _crash_bitmap64(6, b"SDMP", 7601, (0x19, 0x20, 0xFFFFFA8001A2B3C0,
                                                   0xFFFFFA8001A2B4D0, 0x4110008)),
        "details": {"dump_type": "bitmap kernel (6)", "build": 7601, "bugcheck": "0x19"}},
    "lime-x86.lime": {
        "family": "win7-x86", "start": 0, "format": "lime", "architecture": None,
        "pieces": _spread([50, 40, 38], [PAGE, 0x100000, 0x7FF00000]),
        "writer": lime, "details": {"ranges": 3}},
    "elfcore-x64.elf": {
        "family": "win11-segheap-x64", "start": 2, "format": "elfcore", "architecture": "x64",
        "pieces": _spread([32, 64, 32], [0, 0x200000, 0x1_0000_0000]),
        "writer": elf_core, "details": {"load_segments": 3}},
    "vmware-x64.vmem": {
        "family": "win10-1809-x64", "start": 3, "format": "vmware", "architecture": None,
        "pieces": _spread([64, 64], [0, 0x1_0000_0000]),
        "writer": lambda pages, pieces: b"".join(pages), "details": {"regions": 2}},
    "minidump-x64.dmp": {
        "family": "win11-segheap-x64", "start": 3, "format": "minidump", "architecture": "x64",
        "pieces": MINI64[0], "partial": MINI64[1],
        "writer": lambda pages, pieces: _minidump(
            True, minidump_blocks(pages, pieces, MINI64[1]), 22000,
            (0x19, 0x20, KERNEL64_PAGED + 0x100000, KERNEL64_PAGED + 0x100800, 0x4080001)),
        "details": {"dump_type": "triage (4)", "build": 22000, "bugcheck": "0x19",
                 "data_blocks": 121}},
    "minidump-x86.dmp": {
        "family": "win7-x86", "start": 3, "format": "minidump", "architecture": "x86",
        "pieces": MINI32[0], "partial": MINI32[1],
        "writer": lambda pages, pieces: _minidump(
            False, minidump_blocks(pages, pieces, MINI32[1]), 7601,
            (0xC2, 7, 0x1097, 0x8A3B2C10, 0x8A3B2C18)),
        "details": {"dump_type": "triage (4)", "build": 7601, "bugcheck": "0xc2",
                 "data_blocks": 121}},
}  # fmt: skip
COMPANIONS = {"vmware-x64.vmem": ("vmware-x64.vmss", lambda entry: vmss(entry["pieces"]))}


def build(name: str) -> dict[str, bytes]:
    """The bytes of one catalogue entry (and of its companion file, if any)."""
    entry = CATALOGUE[name]
    pages = raw_pages(entry["family"], entry["start"])
    out = {name: entry["writer"](pages, entry["pieces"])}
    if name in COMPANIONS:
        companion, make = COMPANIONS[name]
        out[companion] = make(entry)
    return out


def manifest() -> dict[str, Any]:
    """Where every wrapped raw page went, per file, and the facts a reader must report."""
    files = {}
    for name, entry in CATALOGUE.items():
        raw = page_numbers(entry["start"])
        files[name] = {
            "family": entry["family"],
            "format": entry["format"],
            "architecture": entry["architecture"],
            "details": entry["details"],
            # [raw sample page, address it is reported at, page count]: raw pages of one
            # piece are consecutive in the wrapped list but 4 apart in the raw sample.
            "pages": [[raw[first + i], address + i * PAGE]
                      for first, address, count in entry["pieces"] for i in range(count)],
            "partial": [{"raw_page": raw[p["index"]], "address": p["address"],
                         "captured": p["captured"]} for p in entry.get("partial", [])],
        }  # fmt: skip
        if name in COMPANIONS:
            files[name]["companion"] = COMPANIONS[name][0]
    return {"page_size": PAGE, "files": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "formats", help="output directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in CATALOGUE:
        for filename, data in build(name).items():
            (args.out / filename).write_bytes(data)
            print(f"{filename}: {len(data)} bytes")
    text = json.dumps(manifest(), indent=1) + "\n"
    (args.out / "formats.json").write_text(text, encoding="ascii")
    return 0


if __name__ == "__main__":
    sys.exit(main())
