"""Driver images loaded into the sample dumps' kernel space: what `pooltagscan.carving` must find.

Runs after `gen_paging` planted the page tables, on the families that have them. The
first 2 MiB of the image keep every byte they had except the page-table pages that gain
entries: everything this module adds lives on pages appended after the original image
(kind `pe-image` for image pages, `loader-list` for the loader entries, `page-table`
for new table pages), so no existing ground truth (allocations, big-page and tracker
tables, kernel mappings) changes.

What is placed, as Windows' loader would (no byte of an image is invented):

- small kernel images with export tables (ntoskrnl.exe, HAL.dll and the driver
  libraries our sample drivers import from: WDFLDR.SYS, FLTMGR.SYS, NDIS.SYS, ...),
  generated here: one `ret` stub per export, sections at their RVAs, built at their load
  base;
- our sample drivers of the family's architecture: sections copied to their RVAs,
  relocated to the load base (the in-memory header's ImageBase says the load base, as
  Windows writes it), every IAT slot holding the address the exporting kernel image
  exports the name at;
- one driver (`WIPED`, x64 only) whose headers before the section table are zeroed (what
  rootkits do to hide from `MZ` scans), one (`UNMAPPED`) whose `.bss` pages are not
  present (a paged-out page: carving must zero and note it);
- a loader list (KLDR_DATA_TABLE_ENTRY, the layout every build since XP keeps for
  DllBase/EntryPoint/SizeOfImage/FullDllName/BaseDllName) naming the images with their
  installed names (`pooltags.sys` for `pooltags_x64.sys`), except for `NO_ENTRY` drivers
  and the wiped one: those must be named by their export table (the wiped image's is
  found through its `.edata` section).

Each image's pages land on random appended physical pages (a generator of its own).
The manifest's `kernel_images` lists base, size, name, the name a carver must give,
the sha256 of the original file (None for generated kernel images: they have no file),
the pages not present and whether the header is wiped.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gen_common import PAGE

DRIVERS = Path(__file__).resolve().parent / "drivers"
WIPED = "structs_x64.sys"  # headers before the section table zeroed
UNMAPPED = "helpers"  # its .bss pages are not present
NO_ENTRY = ("negative",)  # no loader entry: named by the export table
# dynamic: needs byordinal/resolver context the report does not give. minifilter: came
# after the paging samples; loading it would need FltRegisterFilter among the generated
# FLTMGR exports and would regenerate all three samples.
SKIP = ("dynamic", "minifilter")
PRESENT = 0x63
# Where images load, per paging mode: kernel images first, then drivers.
REGIONS = {"x64": 0xFFFF_F805_1A40_0000, "x86-pae": 0x8B40_0000, "x86": 0xF8A0_0000}
KERNEL_LIBRARIES = ("ntoskrnl.exe", "HAL.dll")
MACHINE = {"x64": 0x8664, "x86": 0x14C}


# ---------------------------------------------------------------- generated kernel images


def export_image(module: str, arch: str, names: list[str], base: int) -> bytes:
    """A minimal kernel-mode PE exporting `names` (each a `ret` stub), laid out for
    memory (file alignment = section alignment = 4096), built at `base`."""
    names = sorted(set(names))
    text = bytearray(b"".join(b"\xc3" + b"\xcc" * 15 for _ in names) or b"\xc3")
    text_rva, edata_rva = 0x1000, 0x1000 + _align(len(text))
    # Export directory: header (40), EAT, name pointer table, ordinal table, strings.
    n = len(names)
    eat = edata_rva + 40
    npt = eat + 4 * n
    ordt = npt + 4 * n
    strings = ordt + 2 * n
    blob = bytearray()
    module_rva = strings
    blob += module.encode() + b"\0"
    name_rvas = []
    for name in names:
        name_rvas.append(strings + len(blob))
        blob += name.encode() + b"\0"
    edata = struct.pack("<IIHHIIIIIII", 0, 0, 0, 0, module_rva, 1, n, n, eat, npt, ordt)
    edata += b"".join(struct.pack("<I", text_rva + 16 * i) for i in range(n))
    edata += b"".join(struct.pack("<I", r) for r in name_rvas)
    edata += b"".join(struct.pack("<H", i) for i in range(n))
    edata += blob
    size = edata_rva + _align(len(edata))
    sections = [
        (b".text", text_rva, len(text), 0x60000020),
        (b".edata", edata_rva, len(edata), 0x40000040),
    ]
    header = _headers(arch, base, size, 0, sections, {0: (edata_rva, len(edata))}, dll=True)
    out = bytearray(size)
    out[: len(header)] = header
    out[text_rva : text_rva + len(text)] = text
    out[edata_rva : edata_rva + len(edata)] = edata
    return bytes(out)


def _align(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


def _headers(arch: str, base: int, size: int, entry: int, sections: list[tuple],
             directories: dict[int, tuple[int, int]], dll: bool) -> bytes:  # fmt: skip
    """DOS header, PE signature, COFF and optional headers and the section table."""
    x64 = arch == "x64"
    dos = bytearray(0x80)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    opt_size = 0xF0 if x64 else 0xE0
    coff = struct.pack("<HHIIIHH", MACHINE[arch], len(sections), 0, 0, 0, opt_size,
                       0x2022 if dll else 0x22)  # fmt: skip
    dirs = bytearray(16 * 8)
    for index, (rva, length) in directories.items():
        struct.pack_into("<II", dirs, index * 8, rva, length)
    common = struct.pack("<BBIIII", 14, 0, 0x1000, 0x1000, 0, entry)
    if x64:
        opt = struct.pack("<H", 0x20B) + common + struct.pack("<I", 0x1000)
        opt += struct.pack("<QII", base, PAGE, PAGE)
    else:
        opt = struct.pack("<H", 0x10B) + common + struct.pack("<II", 0x1000, 0x1000)
        opt += struct.pack("<III", base, PAGE, PAGE)
    opt += struct.pack("<HHHHHHIIII", 6, 1, 6, 1, 6, 1, 0, size, PAGE, 0)
    opt += struct.pack("<HH", 1, 0x160)  # native subsystem; DllCharacteristics
    if x64:
        opt += struct.pack("<QQQQII", 0x40000, 0x1000, 0x100000, 0x1000, 0, 16)
    else:
        opt += struct.pack("<IIIIII", 0x40000, 0x1000, 0x100000, 0x1000, 0, 16)
    opt += dirs
    assert len(opt) == opt_size
    table = b"".join(
        struct.pack("<8sIIIIIIHHI", name, vsize, rva, _align(vsize, 0x1000), rva, 0, 0, 0, 0, flags)
        for name, rva, vsize, flags in sections
    )
    return bytes(dos) + b"PE\0\0" + coff + opt + table


# ---------------------------------------------------------------- the loader


def imports_of(data: bytes) -> list[tuple[str, int, str | None, int | None]]:
    """(module, IAT slot RVA, name, ordinal) of every import of a sample driver file."""
    import pefile

    pe = pefile.PE(data=data)
    base = pe.OPTIONAL_HEADER.ImageBase
    out = []
    for d in getattr(pe, "DIRECTORY_ENTRY_IMPORT", ()):
        for item in d.imports:
            name = item.name.decode() if item.name else None
            out.append(
                (d.dll.decode(), item.address - base, name, item.ordinal if not name else None)
            )
    return out


def load(data: bytes, base: int, exports: dict[tuple[str, str], int]) -> bytes:
    """The driver file `data` as the loader maps it at `base`: headers and sections at
    their RVAs, base relocations applied, ImageBase rewritten, IAT slots resolved."""
    import pefile

    pe = pefile.PE(data=data)
    opt = pe.OPTIONAL_HEADER
    x64 = opt.Magic == 0x20B
    mem = bytearray(opt.SizeOfImage)
    mem[: opt.SizeOfHeaders] = data[: opt.SizeOfHeaders]
    for s in pe.sections:
        length = min(s.SizeOfRawData, s.Misc_VirtualSize or s.SizeOfRawData)
        raw = data[s.PointerToRawData : s.PointerToRawData + length]
        mem[s.VirtualAddress : s.VirtualAddress + len(raw)] = raw
    delta = base - opt.ImageBase
    rva, size = opt.DATA_DIRECTORY[5].VirtualAddress, opt.DATA_DIRECTORY[5].Size
    at = rva
    while size and at + 8 <= rva + size:
        page, block = struct.unpack_from("<II", mem, at)
        if block < 8:
            break
        for k in range(at + 8, at + block, 2):
            (item,) = struct.unpack_from("<H", mem, k)
            kind, where = item >> 12, page + (item & 0xFFF)
            if kind == 3:
                (v,) = struct.unpack_from("<I", mem, where)
                struct.pack_into("<I", mem, where, (v + delta) & 0xFFFF_FFFF)
            elif kind == 10:
                (v,) = struct.unpack_from("<Q", mem, where)
                struct.pack_into("<Q", mem, where, (v + delta) & (1 << 64) - 1)
        at += block
    # The loader records the base it used in the in-memory header.
    base_at = pe.OPTIONAL_HEADER.get_file_offset() + (24 if x64 else 28)
    struct.pack_into("<Q" if x64 else "<I", mem, base_at, base)
    for module, slot, name, ordinal in imports_of(data):
        key = (module.lower(), name or f"#{ordinal}")
        struct.pack_into("<Q" if x64 else "<I", mem, slot, exports[key])
    return bytes(mem)


# ---------------------------------------------------------------- page tables


class _Mapper:
    """Adds 4 KiB mappings to the planted tables; new tables and data go on appended
    pages (`extra`), existing entries are never overwritten."""

    def __init__(self, mode: str, info: dict[str, Any], image: bytearray):
        self.mode, self.image = mode, image
        self.first_extra = len(image) // PAGE
        self.extra: list[tuple[str, bytes]] = []  # appended (kind, page)
        self.tables: dict[int, bytearray] = {}  # appended table pages, by page number
        self.width = 4 if mode == "x86" else 8
        self.root = info["dtb"]
        self.directories = info.get("page_directories")

    def new_page(self, kind: str, data: bytes = bytes(PAGE)) -> int:
        self.extra.append((kind, data))
        return self.first_extra + len(self.extra) - 1

    def _entry(self, table: int, index: int) -> int:
        at = table + index * self.width
        page = self.tables.get(at // PAGE)
        src = page if page is not None else self.image
        off = at % PAGE if page is not None else at
        return struct.unpack_from("<I" if self.width == 4 else "<Q", src, off)[0]

    def _set(self, table: int, index: int, value: int) -> None:
        at = table + index * self.width
        page = self.tables.get(at // PAGE)
        dst, off = (page, at % PAGE) if page is not None else (self.image, at)
        struct.pack_into("<I" if self.width == 4 else "<Q", dst, off, value)

    def map(self, va: int, frame: int | None, value: int | None = None) -> None:
        """Map the page at `va` to physical page number `frame` (None: a not-present
        PTE, `value` its raw bits)."""
        if self.mode == "x64":
            table, idx = self.root & ~0xFFF, [(va >> s) & 0x1FF for s in (39, 30, 21, 12)]
        elif self.mode == "x86-pae":
            table, idx = self.directories[va >> 30], [(va >> 21) & 0x1FF, (va >> 12) & 0x1FF]
        else:
            table, idx = self.root & ~0xFFF, [va >> 22, (va >> 12) & 0x3FF]
        for i in idx[:-1]:
            entry = self._entry(table, i)
            if entry & 1:
                assert not entry & 0x80, f"{va:#x} lies in a large page"
                table = entry & 0x000F_FFFF_FFFF_F000
                continue
            assert entry == 0, f"{va:#x}: unexpected entry {entry:#x}"
            page = self.new_page("page-table")
            self.tables[page] = bytearray(PAGE)
            self._set(table, i, page * PAGE | PRESENT)
            table = page * PAGE
        assert self._entry(table, idx[-1]) == 0, f"{va:#x} already mapped"
        self._set(table, idx[-1], frame * PAGE | PRESENT if frame is not None else value or 0)

    def pages(self) -> list[tuple[str, bytes]]:
        out = []
        for k, (kind, data) in enumerate(self.extra):
            page = self.tables.get(self.first_extra + k)
            out.append((kind, bytes(page) if page is not None else data))
        return out


# ---------------------------------------------------------------- placing


def _loader_entries(arch: str, at: int, rows: list[dict[str, Any]]) -> bytes:
    """KLDR_DATA_TABLE_ENTRY records (InLoadOrderLinks a circular list with a head
    first) and their name strings, for a page mapped at `at`."""
    x64 = arch == "x64"
    ptr = "<Q" if x64 else "<I"
    w = 8 if x64 else 4
    size = 0xA0 if x64 else 0x50
    base_off, name_off = (0x30, 0x48) if x64 else (0x18, 0x24)
    page = bytearray(PAGE)
    head = 0x10
    entries = [head + 0x20 + i * size for i in range(len(rows))]
    strings = entries[-1] + size if entries else head + 0x20
    links = [head] + entries
    for i, here in enumerate(links):
        struct.pack_into(ptr, page, here, at + links[(i + 1) % len(links)])
        struct.pack_into(ptr, page, here + w, at + links[i - 1])
    for here, row in zip(entries, rows):
        struct.pack_into(ptr, page, here + base_off, row["base"])
        struct.pack_into(ptr, page, here + base_off + w, row["base"] + row["entry"])
        struct.pack_into("<I", page, here + base_off + 2 * w, row["size"])
        for k, text in enumerate((row["full"], row["loader_name"])):
            raw = text.encode("utf-16-le")
            assert strings + len(raw) + 2 <= PAGE, "loader names do not fit one page"
            page[strings : strings + len(raw)] = raw
            struct.pack_into("<HH", page, here + name_off + k * 2 * w, len(raw), len(raw) + 2)
            struct.pack_into(ptr, page, here + name_off + k * 2 * w + w, at + strings)
            strings += len(raw) + 2 + (-(len(raw) + 2) % w)
    return bytes(page)


def plant_images(seed: int, family_arch: str, mode: str, image: bytearray,
                 info: dict[str, Any]) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:  # fmt: skip
    """Place the kernel images and sample drivers; (appended (kind, page) list, manifest
    entry {loader_list: VA, images: rows}). `image` gets the new entries of existing
    table pages; `info` (the kernel_space entry) is only read."""
    rng = np.random.default_rng(seed ^ 0x1A6E5CA7)
    arch = "x64" if family_arch.startswith("x64") else "x86"
    files = sorted(p for p in DRIVERS.glob(f"*_{arch}.sys") if not p.name.startswith(SKIP))
    drivers = [(p.name, p.read_bytes()) for p in files]
    wanted: dict[str, set[str]] = {m.lower(): set() for m in KERNEL_LIBRARIES}
    module_names = {m.lower(): m for m in KERNEL_LIBRARIES}
    for _, data in drivers:
        for module, _slot, name, _ordinal in imports_of(data):
            wanted.setdefault(module.lower(), set()).add(name)
            module_names.setdefault(module.lower(), module)
    wanted["ntoskrnl.exe"] |= {"KeBugCheckEx", "IoCreateDevice"}
    wanted["hal.dll"] |= {"KeGetCurrentIrql", "HalReturnToFirmware"}
    mapper = _Mapper(mode, info, image)
    va = REGIONS[mode]
    exports: dict[tuple[str, str], int] = {}
    placed: list[tuple[str, bytes, bytes | None, int]] = []  # name, memory, original, base
    for key in sorted(wanted, key=lambda k: (k != "ntoskrnl.exe", k)):
        names = sorted(wanted[key])
        mem = export_image(module_names[key], arch, names, va)
        for i, name in enumerate(names):
            exports[(key, name)] = va + 0x1000 + 16 * i
        placed.append((module_names[key], mem, None, va))
        va += _align(len(mem), 0x10000) + 0x10000 * int(rng.integers(1, 4))
    for name, data in drivers:
        mem = load(data, va, exports)
        placed.append((name, mem, data, va))
        va += _align(len(mem), 0x10000) + 0x10000 * int(rng.integers(1, 4))
    # Physical pages: every image page on an appended page, in random order.
    rows = []
    order: list[tuple[int, int, bytes | None]] = []  # (va, row index, page bytes / None)
    for name, mem, original, base in placed:
        mem = bytearray(mem)
        row: dict[str, Any] = {"name": name, "base": base, "size": len(mem),
                               "sha256": hashlib.sha256(original).hexdigest() if original else None,
                               "wiped_header": name == WIPED, "missing_pages": []}  # fmt: skip
        lfanew = struct.unpack_from("<I", mem, 0x3C)[0]
        nsec, optsize = (
            struct.unpack_from("<HH", mem, lfanew + 6)[0],
            struct.unpack_from("<H", mem, lfanew + 20)[0],
        )
        row["entry"] = struct.unpack_from("<I", mem, lfanew + 40)[0]
        bss = []
        for k in range(nsec):
            s = lfanew + 24 + optsize + 40 * k
            sname = mem[s : s + 8].rstrip(b"\0")
            vsize, rva = struct.unpack_from("<II", mem, s + 8)
            if sname == b".bss":
                bss = [rva + i for i in range(0, _align(vsize), PAGE)]
        if name == WIPED:
            mem[: lfanew + 24 + optsize] = bytes(lfanew + 24 + optsize)
        if name.startswith(UNMAPPED):
            row["missing_pages"] = bss
        for off in range(0, len(mem), PAGE):
            missing = off in row["missing_pages"]
            order.append((base + off, len(rows), None if missing else bytes(mem[off : off + PAGE])))
        rows.append(row)
    frames = {}
    for i in rng.permutation(len(order)).tolist():
        page_va, _, data = order[i]
        if data is not None:
            frames[page_va] = mapper.new_page("pe-image", data)
    for page_va, _, data in order:
        if data is None:
            mapper.map(page_va, None, 0x1234 << 12 | 0x80 if mode == "x86" else 0x5678 << 32 | 0x80)
        else:
            mapper.map(page_va, frames[page_va])
    # Loader entries: installed names ("pooltags.sys"), except NO_ENTRY and the wiped one.
    listed = []
    for row in rows:
        installed = row["name"].replace(f"_{arch}.sys", ".sys")
        if row["name"] == WIPED or row["name"].startswith(NO_ENTRY):
            row["loader_name"] = None
        else:
            row["loader_name"] = installed
            folder = "\\SystemRoot\\System32\\" + (
                "drivers\\" if installed.endswith(".sys") else ""
            )
            listed.append({**row, "full": folder + installed})
    loader_va = REGIONS[mode] - 0x20000
    mapper.map(loader_va, mapper.new_page("loader-list", _loader_entries(arch, loader_va, listed)))
    for row in rows:
        if row["loader_name"]:
            row["carved_name"] = row["loader_name"]
        else:  # the export table's name (the wiped image keeps its .edata section)
            row["carved_name"] = row["name"]
        del row["entry"]
    return mapper.pages(), {"loader_list": loader_va, "images": rows}
