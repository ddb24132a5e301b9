"""Builders of hostile inputs: the files a careless or malicious source hands a forensic tool.

Each builder writes one file into a folder and returns its path. They are derived from
our own samples (the committed format samples and sample drivers) or built from nothing
by our own code (`pe_image`, a minimal PE writer), so the reliability tests, the mutation
fuzzer and `benchmarks/fuzz_inputs.py` all see the same inputs.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORMATS = REPO / "samples" / "formats"
DUMPS = REPO / "samples" / "dumps"
DRIVERS = REPO / "samples" / "drivers"
PAGE = 4096


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- crash dumps


def crash_runs(folder: Path, name: str, runs: list[tuple[int, int]] | None, count: int) -> Path:
    """The x64 full-dump sample with its run table rewritten: `count` as NumberOfRuns and
    `runs` (BasePage, PageCount) as the first runs (None keeps the sample's)."""
    data = bytearray((FORMATS / "crash-full-x64.dmp").read_bytes())
    struct.pack_into("<I", data, 0x88, count)
    for i, (base, pages) in enumerate(runs or ()):
        struct.pack_into("<QQ", data, 0x98 + 16 * i, base, pages)
    return _write(folder, name, bytes(data))


def crash_too_many_runs(folder: Path, count: int = 0x80000000) -> Path:
    return crash_runs(folder, f"runs-{count:x}.dmp", None, count)


def crash_empty_run_past_eof(folder: Path) -> Path:
    """The three sample runs plus a fourth of PageCount 0 far past the end of the file."""
    data = (FORMATS / "crash-full-x64.dmp").read_bytes()
    runs = [struct.unpack_from("<QQ", data, 0x98 + 16 * i) for i in range(3)]
    return crash_runs(folder, "empty-run.dmp", [*runs, (0x7FFFFFF0, 0)], 4)


def crash_huge_base(folder: Path) -> Path:
    return crash_runs(folder, "huge-base.dmp", [(1 << 52, 40)], 3)


def crash_alternating_bitmap(folder: Path, bitmap_bytes: int = 1_300_000) -> Path:
    """A bitmap dump (DumpType 5) whose bitmap alternates 1010... over `bitmap_bytes`,
    claiming millions of one-page runs, with two pages of data: 1.3 MB in all."""
    sample = (FORMATS / "crash-bitmap-x64.dmp").read_bytes()
    head = bytearray(sample[:0x2000])
    bits = bitmap_bytes * 8
    first_page = -(-(0x2000 + 0x38 + bitmap_bytes) // PAGE) * PAGE
    summary = bytearray(sample[0x2000 : 0x2000 + 0x38])
    struct.pack_into("<QQQ", summary, 0x20, first_page, bits // 2, bits)
    body = bytes(summary) + b"\x55" * bitmap_bytes
    gap = first_page - 0x2000 - len(body)
    pages = sample[-2 * PAGE :]
    return _write(folder, "alternating.dmp", bytes(head) + body + bytes(gap) + pages)


# ---------------------------------------------------------------- kernel minidumps


def minidump_many_blocks(folder: Path, blocks: int = 200_000, x64: bool = True) -> Path:
    """A kernel minidump of `blocks` 256-byte blocks, each on its own page (a page apart),
    every one holding two LFH blocks of 32 bytes (segment-heap headers a stride apart),
    so each block yields two high-confidence `Many` records."""
    from conftest import load_module

    make_formats = load_module("make_formats", REPO / "samples" / "make_formats.py")
    block = bytearray(256)
    for at in (0x10, 0x30):  # BlockSize 2 (32 bytes), PoolType 2 (nonpaged)
        struct.pack_into("<BBBB4s", block, at, 0, 0, 2, 2, b"Many")
    base = 0xFFFFBB8E00000000 if x64 else 0x85000000
    table = [(base + i * 2 * PAGE, bytes(block)) for i in range(blocks)]
    data = make_formats._minidump(x64, table, 22000 if x64 else 7601, (0x19, 0, 0, 0, 0))
    return _write(folder, f"blocks-{blocks}.dmp", data)


def minidump_sample(folder: Path) -> Path:
    """The committed x64 minidump sample, copied (its addresses lie above 2**63)."""
    return _write(folder, "minidump-x64.dmp", (FORMATS / "minidump-x64.dmp").read_bytes())


# ---------------------------------------------------------------- drivers


IMAGE_BASE64 = 0x140000000
IMAGE_BASE32 = 0x10000
TEXT_RVA = 0x1000


def pe_image(
    code: bytes,
    x64: bool = True,
    imports: tuple[str, ...] = ("ExAllocatePoolWithTag", "ExFreePoolWithTag"),
    text_copies: int = 1,
    text_raw: bytes | None = None,
) -> tuple[bytes, dict[str, int]]:
    """A minimal kernel-mode PE (native subsystem) importing `imports` from ntoskrnl.exe.

    The code goes in `.text` at RVA 0x1000; `text_copies` > 1 adds section headers that
    alias the same raw bytes at further RVAs. Returns the file and the RVA of each
    import's IAT slot (for code that calls through it).
    """
    align = 0x1000
    file_align = 0x200
    ptr = 8 if x64 else 4
    text = text_raw if text_raw is not None else code
    text_size = -(-len(text) // file_align) * file_align
    text_span = -(-max(len(text), 1) // align) * align
    idata_rva = TEXT_RVA + text_span * text_copies
    # .idata: descriptor (20 bytes) + null descriptor, ILT, IAT, hint/name entries, dll name
    names_at = 40 + 2 * ptr * (len(imports) + 1)
    hint_names = b""
    name_rvas = []
    for name in imports:
        name_rvas.append(idata_rva + names_at + len(hint_names))
        entry = struct.pack("<H", 0) + name.encode() + b"\0"
        hint_names += entry + (b"\0" if len(entry) % 2 else b"")
    dll_rva = idata_rva + names_at + len(hint_names)
    ilt_rva = idata_rva + 40
    iat_rva = ilt_rva + ptr * (len(imports) + 1)
    pack = "<Q" if x64 else "<I"
    thunks = b"".join(struct.pack(pack, r) for r in name_rvas) + struct.pack(pack, 0)
    idata = struct.pack("<IIIII", ilt_rva, 0, 0, dll_rva, iat_rva) + bytes(20)
    idata += thunks + thunks + hint_names + b"ntoskrnl.exe\0"
    idata_size = -(-len(idata) // file_align) * file_align
    header_size = -(-(0x80 + 4 + 20 + (0xF0 if x64 else 0xE0) + 40 * (text_copies + 1))
                    // file_align) * file_align  # fmt: skip
    sections = [(b".text", TEXT_RVA + i * text_span, len(text), header_size, text_size,
                 0x60000020) for i in range(text_copies)]  # fmt: skip
    sections.append(
        (b".idata", idata_rva, len(idata), header_size + text_size, idata_size, 0xC0000040)
    )
    image_size = idata_rva + -(-len(idata) // align) * align
    coff = struct.pack(
        "<HHIIIHH", 0x8664 if x64 else 0x14C, len(sections), 0, 0, 0, 0xF0 if x64 else 0xE0,
        0x22 if x64 else 0x102,
    )  # fmt: skip
    optional = bytearray(0xF0 if x64 else 0xE0)
    struct.pack_into("<HBB", optional, 0, 0x20B if x64 else 0x10B, 14, 0)
    struct.pack_into("<III", optional, 4, text_size, idata_size, 0)
    struct.pack_into("<II", optional, 16, TEXT_RVA, TEXT_RVA)  # entry, BaseOfCode
    if x64:
        struct.pack_into("<Q", optional, 24, IMAGE_BASE64)
    else:
        struct.pack_into("<II", optional, 24, idata_rva, IMAGE_BASE32)
    struct.pack_into("<II", optional, 32, align, file_align)
    struct.pack_into("<HHHHHH", optional, 40, 10, 0, 10, 0, 10, 0)
    struct.pack_into("<II", optional, 56, image_size, header_size)
    struct.pack_into("<HH", optional, 68, 1, 0x8160)  # native subsystem, DLL characteristics
    directories = 112 if x64 else 96
    struct.pack_into("<I", optional, directories - 4, 16)  # NumberOfRvaAndSizes
    struct.pack_into("<II", optional, directories + 8, idata_rva, 40)  # import directory
    struct.pack_into("<II", optional, directories + 12 * 8, iat_rva, ptr * (len(imports) + 1))
    table = b"".join(
        struct.pack("<8sIIIIIIHHI", n, vsize, rva, rsize, raw, 0, 0, 0, 0, flags)
        for n, rva, vsize, raw, rsize, flags in sections
    )
    dos = bytearray(0x80)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    headers = bytes(dos) + b"PE\0\0" + coff + bytes(optional) + table
    headers += bytes(header_size - len(headers))
    body = text + bytes(text_size - len(text)) + idata + bytes(idata_size - len(idata))
    slots = {name: iat_rva + i * ptr for i, name in enumerate(imports)}
    return headers + body, slots


def _rip_call(at: int, slot: int) -> bytes:
    """`call [rip+disp]` at RVA `at` to the IAT slot at RVA `slot`."""
    return b"\xff\x15" + struct.pack("<i", slot - (at + 6))


def driver_random_code(folder: Path, mib: int = 10, seed: int = 8) -> Path:
    """`mib` MiB of seeded random bytes as the code section of a driver that imports the
    pool APIs: everything a linear sweep of real code must store, and more."""
    code = random.Random(seed).randbytes(mib << 20)
    data, _ = pe_image(code)
    return _write(folder, f"random-{mib}mib.sys", data)


def driver_aliased_sections(folder: Path, copies: int = 95, kib: int = 256) -> Path:
    """`copies` section headers naming the same `kib` KiB of raw code at different RVAs
    (95 + .idata: the 96 sections YARA's pe module reads, so the prefilter lets it in)."""
    code = random.Random(9).randbytes(kib << 10)
    data, _ = pe_image(b"", text_copies=copies, text_raw=code)
    return _write(folder, f"aliased-{copies}.sys", data)


def driver_fan_out(folder: Path, width: int = 24, levels: int = 4) -> tuple[Path, set[str]]:
    """Wrappers `levels` deep above one ExAllocatePoolWithTag call, every function of a
    level calling every function of the level below: width**levels paths (331,776 for
    24 x 4) in about 28 KB. The top level passes one tag per function (`Fa00`...): those
    are the driver's tags.

    x64 code. Each wrapper keeps its tag parameter (r8) in rbx, which calls preserve, and
    sets r8 from it before every call: `push rbx; sub rsp,20h; mov ebx,r8d;
    (mov r8d,ebx; call f) x width; add rsp,20h; pop rbx; ret`. The top level does
    `mov ebx, imm32` instead of `mov ebx, r8d`.
    """
    tags = {f"Fa{i:02d}" for i in range(width)}
    slot = 0
    for _ in range(2):  # the IAT slot's RVA depends on the code size: lay out twice
        code = bytearray()

        def emit(body: bytes, code: bytearray = code) -> int:
            at = TEXT_RVA + len(code)
            code.extend(body)
            while len(code) % 16:
                code.append(0xCC)
            return at

        at = TEXT_RVA
        below = [emit(b"\x48\x83\xec\x28" + _rip_call(at + 4, slot) + b"\x48\x83\xc4\x28\xc3")]
        for level in range(1, levels + 1):
            row = []
            for i in range(width):
                at = TEXT_RVA + len(code)
                body = bytearray(b"\x53\x48\x83\xec\x20")  # push rbx; sub rsp, 20h
                if level == levels:
                    body += b"\xbb" + f"Fa{i:02d}".encode()  # mov ebx, imm32
                else:
                    body += b"\x44\x89\xc3"  # mov ebx, r8d
                for target in below:
                    body += b"\x41\x89\xd8"  # mov r8d, ebx
                    body += b"\xe8" + struct.pack("<i", target - (at + len(body) + 5))
                body += b"\x48\x83\xc4\x20\x5b\xc3"  # add rsp, 20h; pop rbx; ret
                row.append(emit(bytes(body)))
            below = row
        data, slots = pe_image(bytes(code))
        slot = slots["ExAllocatePoolWithTag"]
    return _write(folder, f"fanout-{width}x{levels}.sys", data), tags


def driver_zeros(folder: Path, size: int = 200 << 20) -> Path:
    """A sparse file of zeros named .sys (a dump or disk image renamed by mistake)."""
    path = folder / "zeros.sys"
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def driver_section_overflow(folder: Path) -> Path:
    """The x64 sample driver with a section whose RVA + size runs past 4 GiB."""
    data = bytearray((DRIVERS / "pooltags_x64.sys").read_bytes())
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    optional_size = struct.unpack_from("<H", data, pe + 20)[0]
    first = pe + 24 + optional_size
    struct.pack_into("<II", data, first + 8, 0x10000, 0xFFFFF000)  # VirtualSize, VirtualAddress
    return _write(folder, "overflow.sys", bytes(data))


# ---------------------------------------------------------------- other inputs


def big_tag_list(folder: Path, size: int = 32 << 20) -> Path:
    """A `size`-byte tag list (a 32 MiB file is far beyond any real pooltag.txt)."""
    line = b"Abcd - drv.sys - a description that is long enough to fill the file up\n"
    path = folder / "huge-pooltag.txt"
    with open(path, "wb") as f:
        f.write(line * (size // len(line) + 1))
    return path


def yara_cap_rule(folder: Path) -> Path:
    """A rule on two zero bytes: a million matches in every window of a sparse dump."""
    return _write(folder, "zeros.yar", b"rule two_zero_bytes { strings: $z = { 00 00 } "
                  b"condition: $z }\n")  # fmt: skip


STATS_KIND = "pooltagscan-stats"


def _stats(rows: list) -> bytes:
    return json.dumps({"kind": STATS_KIND, "version": 1, "tags": rows}).encode()


def _row(tag: object = "Proc", **counts: object) -> dict:
    row = {"tag": tag, "total_allocs": 3, "free_allocs": 1, "total_bytes": 300, "free_bytes": 100}
    row.update(counts)
    return row


def saved_stats_variants(folder: Path) -> dict[str, Path]:
    """Saved `--stats --format json` files a tool must refuse in one line (name -> path)."""
    variants: dict[str, bytes] = {
        "deep": b'{"kind": "pooltagscan-stats", "tags": ' + b"[" * 100_000 + b"]" * 100_000
        + b"}",
        "nan": _stats([_row(total_allocs=float("nan"))]).replace(b"NaN", b"NaN"),
        "float": _stats([_row(total_bytes=12.5)]),
        "int-tag": _stats([_row(tag=1667330640)]),
        "null-tag": _stats([_row(tag=None)]),
        "long-tag": _stats([_row(tag="A" * 8000)]),
        "surrogate": _stats([_row(tag="Pro\ud800")]),
        "not-a-list": json.dumps({"kind": STATS_KIND, "tags": {"a": 1}}).encode(),
        "negative": _stats([_row(free_allocs=-5)]),
        "bool": _stats([_row(total_allocs=True)]),
        "huge-int": _stats([_row(total_bytes=10**30)]),
        "truncated": _stats([_row()])[:-7],
        "bad-utf8": _stats([_row()]).replace(b"Proc", b"Pr\xff\xfe"),
    }  # fmt: skip
    return {name: _write(folder, f"stats-{name}.json", data) for name, data in variants.items()}


def saved_stats_with_bom(folder: Path) -> Path:
    """A valid saved statistics file with a UTF-8 byte-order mark (as PowerShell writes)."""
    return _write(folder, "stats-bom.json", b"\xef\xbb\xbf" + _stats([_row()]))
