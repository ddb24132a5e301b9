"""PE images in kernel memory: finding their first page, reading them back, their
export and import tables, and the file a driver analysis can read.

Every number comes from memory an attacker may control, so each is checked before it
drives a loop or an allocation: section counts (at most 96, the loader's limit), sizes
(`MAX_IMAGE_BYTES`), RVAs (inside the image), table counts (inside the image and at most
`MAX_ENTRIES`), strings (at most 256 bytes).

Two ways a page is an image's first page:

- *header*: `MZ` at the page start, `e_lfanew` inside the page, `PE\\0\\0` there, an
  x86/x64 machine, a PE32/PE32+ optional header, 1-96 sections whose table lies in the
  page, SizeOfImage between 4 KiB and `MAX_IMAGE_BYTES`;
- *section layout* (the headers were wiped, as rootkits do to hide from `MZ` scans): at
  a 4-byte aligned offset in [0x40, 0x400) of a page without `MZ`, a section table of at
  least two headers that are each: a name of printable ASCII (first byte not NUL)
  padded with NULs, a page-aligned non-zero VirtualAddress, a VirtualSize below
  `MAX_IMAGE_BYTES`, Characteristics with MEM_READ set and no undefined bit; the
  addresses strictly increasing without overlap, the first one at or past the table's
  end; the table ends with an all-zero header or at 96 entries; and the first
  section's first page is mapped. The machine is then the dump's architecture.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pooltagscan.addressing.paging import PAGE_SIZE

MAX_IMAGE_BYTES = 128 << 20
MAX_SECTIONS = 96
MAX_ENTRIES = 1 << 16
MAX_NAME = 256
_MACHINES = {0x14C: "x86", 0x8664: "x64"}
_SCN_READ = 0x4000_0000
_SCN_KNOWN = 0xFFF0_0000 | 0x8 | 0x20 | 0x40 | 0x80 | 0x200 | 0x800 | 0x1000 | 0x8000
_SCN_UNINITIALIZED = 0x80
_TABLE_FIRST, _TABLE_STOP = 0x40, 0x400
_DIR_EXPORT, _DIR_IMPORT, _DIR_RESOURCE, _DIR_EXCEPTION, _DIR_IAT = 0, 1, 2, 3, 12

HEADER, LAYOUT = "header", "section layout"


@dataclass(frozen=True)
class SectionRow:
    name: bytes
    rva: int
    virtual_size: int
    raw_size: int
    characteristics: int

    @property
    def end(self) -> int:
        return self.rva + max(self.virtual_size, 1)


@dataclass
class Candidate:
    """An image's first page: how it was recognised and what its headers say."""

    base: int
    found_by: str
    arch: str
    size: int
    sections: list[SectionRow]
    entry: int = 0
    timestamp: int = 0
    directories: dict[int, tuple[int, int]] = field(default_factory=dict)
    image_base: int | None = None  # what the header says (the loader writes the load base)
    physical: int = 0  # of the first page


def section_rows(page: bytes, at: int, count: int | None) -> list[SectionRow] | None:
    """The section table at `at` (`count` entries, or up to an all-zero one), None when
    any entry breaks the rules of the module docstring."""
    rows: list[SectionRow] = []
    limit = MAX_SECTIONS if count is None else count
    while len(rows) < limit:
        if at + 40 > len(page):
            return None if count is not None or len(rows) < 2 else rows
        raw = page[at : at + 40]
        if count is None and raw == bytes(40):
            break
        name = raw[:8]
        vsize, rva, raw_size, _ptr = struct.unpack_from("<IIII", raw, 8)
        (flags,) = struct.unpack_from("<I", raw, 36)
        text = name.rstrip(b"\0")
        if count is None:
            if not text or b"\0" in text or not all(0x21 <= b <= 0x7E for b in text):
                return None
            if flags & ~_SCN_KNOWN or not flags & _SCN_READ:
                return None
        if rva % PAGE_SIZE and count is None or vsize > MAX_IMAGE_BYTES:
            return None
        if rva >= MAX_IMAGE_BYTES or (rows and rva < rows[-1].rva + rows[-1].virtual_size):
            return None
        rows.append(SectionRow(text, rva, vsize, raw_size, flags))
        at += 40
    if count is None and len(rows) < 2:
        return None
    return rows


def parse_header(base: int, page: bytes) -> Candidate | None:
    """A `header` candidate from an image's first page (see the module docstring)."""
    if page[:2] != b"MZ" or len(page) < PAGE_SIZE:
        return None
    (lfanew,) = struct.unpack_from("<I", page, 0x3C)
    if not 0x40 <= lfanew <= PAGE_SIZE - 24 or page[lfanew : lfanew + 4] != b"PE\0\0":
        return None
    machine, count, stamp = struct.unpack_from("<HHI", page, lfanew + 4)
    (opt_size,) = struct.unpack_from("<H", page, lfanew + 20)
    arch = _MACHINES.get(machine)
    opt = lfanew + 24
    if arch is None or not 1 <= count <= MAX_SECTIONS or opt + opt_size > PAGE_SIZE:
        return None
    (magic,) = struct.unpack_from("<H", page, opt)
    if magic != (0x20B if arch == "x64" else 0x10B) or opt_size < (0x70 if arch == "x64" else 0x60):
        return None
    (entry,) = struct.unpack_from("<I", page, opt + 16)
    (size,) = struct.unpack_from("<I", page, opt + 56)
    (image_base,) = struct.unpack_from(
        "<Q" if arch == "x64" else "<I", page, opt + (24 if arch == "x64" else 28)
    )
    if not PAGE_SIZE <= size <= MAX_IMAGE_BYTES:
        return None
    dirs_at, count_at = (opt + 112, opt + 108) if arch == "x64" else (opt + 96, opt + 92)
    (ndirs,) = struct.unpack_from("<I", page, count_at)
    ndirs = min(ndirs, 16, (opt + opt_size - dirs_at) // 8)
    directories = {}
    for index in range(max(ndirs, 0)):
        rva, length = struct.unpack_from("<II", page, dirs_at + 8 * index)
        if rva and length and rva < size and length <= size - rva:
            directories[index] = (rva, length)
    rows = section_rows(page, opt + opt_size, count)
    if rows is None:
        return None
    size = _rounded(max([size] + [min(r.end, MAX_IMAGE_BYTES) for r in rows]))
    if size > MAX_IMAGE_BYTES:
        return None
    entry = entry if entry < size else 0
    return Candidate(base, HEADER, arch, size, rows, entry, stamp, directories, image_base)


def layout_offsets(heads: np.ndarray) -> np.ndarray:
    """(page index, byte offset) pairs of the pages (rows of `heads`, uint8, at least
    0x400 columns) whose first two section-table entries pass the vector part of the
    `section layout` rule; the caller checks the rest with `parse_layout`."""
    words = np.ascontiguousarray(heads[:, :_TABLE_STOP]).view("<u4")
    first, stop = _TABLE_FIRST // 4, _TABLE_STOP // 4 - 20
    ok = np.ones((words.shape[0], stop - first), dtype=bool)
    for k in (0, 10):  # the first two section headers
        va = words[:, first + k + 3 : stop + k + 3]
        flags = words[:, first + k + 9 : stop + k + 9]
        name = heads[:, (first + k) * 4 : (stop + k) * 4 : 4]
        ok &= (va % PAGE_SIZE == 0) & (va != 0) & (va < MAX_IMAGE_BYTES)
        ok &= (flags & _SCN_READ != 0) & (flags & ~np.uint32(_SCN_KNOWN) == 0)
        ok &= (name >= 0x21) & (name <= 0x7E)
    ok &= words[:, first + 13 : stop + 13] > words[:, first + 3 : stop + 3]
    ok &= ((heads[:, 0] != ord("M")) | (heads[:, 1] != ord("Z")))[:, None]
    rows, cols = np.nonzero(ok)
    return np.stack([rows, cols * 4 + _TABLE_FIRST], axis=1)


def parse_layout(base: int, page: bytes, at: int, arch: str) -> Candidate | None:
    """A `section layout` candidate whose table is at `at` of the page."""
    rows = section_rows(page, at, None)
    if rows is None or rows[0].rva < at + 40 * (len(rows) + 1) - at % 8:
        return None
    size = _rounded(rows[-1].rva + max(rows[-1].virtual_size, 1))
    if size > MAX_IMAGE_BYTES:
        return None
    directories = {}
    for row in rows:
        if row.name == b".pdata" and arch == "x64":
            directories[_DIR_EXCEPTION] = (row.rva, row.virtual_size)
        elif row.name == b".edata":
            directories[_DIR_EXPORT] = (row.rva, row.virtual_size)
        elif row.name == b".rsrc":
            directories[_DIR_RESOURCE] = (row.rva, row.virtual_size)
    return Candidate(base, LAYOUT, arch, size, rows, 0, 0, directories)


def _rounded(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


# -- tables inside a rebuilt image ------------------------------------------------------


def c_string(memory: bytes, rva: int) -> str | None:
    """A NUL-terminated ASCII name at `rva` (at most MAX_NAME bytes), None if unreadable."""
    if not 0 < rva < len(memory):
        return None
    raw = memory[rva : rva + MAX_NAME]
    end = raw.find(b"\0")
    if end <= 0 or not all(0x20 < b < 0x7F for b in raw[:end]):
        return None
    return raw[:end].decode("ascii")


@dataclass
class ExportTable:
    module: str | None
    names: dict[int, str]  # RVA -> name (one name per address: the first)
    ordinals: dict[int, int]  # RVA -> ordinal


def exports(memory: bytes, directory: tuple[int, int] | None) -> ExportTable:
    """The named exports (forwarders left out) of an image in memory layout."""
    table = ExportTable(None, {}, {})
    if directory is None:
        return table
    rva, length = directory
    if rva + 40 > len(memory):
        return table
    (name_rva, ordinal_base, nfunc, nnames, eat, npt, ordt) = struct.unpack_from(
        "<IIIIIII", memory, rva + 12
    )
    table.module = c_string(memory, name_rva)
    if nfunc > MAX_ENTRIES or nnames > MAX_ENTRIES:
        return table
    if not (_inside(memory, eat, 4 * nfunc) and _inside(memory, npt, 4 * nnames)):
        return table
    if not _inside(memory, ordt, 2 * nnames):
        return table
    functions = np.frombuffer(memory, "<u4", nfunc, eat)
    names = np.frombuffer(memory, "<u4", nnames, npt)
    indexes = np.frombuffer(memory, "<u2", nnames, ordt)
    for name_at, index in zip(names.tolist(), indexes.tolist()):
        if index >= nfunc:
            continue
        target = int(functions[index])
        if not target or rva <= target < rva + length:  # none, or a forwarder string
            continue
        name = c_string(memory, name_at)
        if name is not None:
            table.names.setdefault(target, name)
            table.ordinals.setdefault(target, ordinal_base + index)
    return table


def _inside(memory: bytes, rva: int, length: int) -> bool:
    return 0 < rva and length >= 0 and rva + length <= len(memory)


@dataclass(frozen=True)
class Descriptor:
    """One import descriptor as memory holds it: module name, IAT and (if still there)
    the names the import name table gives each slot."""

    module: str | None
    iat: int
    names: tuple[str | None, ...]  # per slot, from the INT (None: by ordinal / gone)
    count: int


def import_descriptors(
    memory: bytes, directory: tuple[int, int] | None, wide: bool
) -> list[Descriptor]:
    """The import directory's descriptors (at most 1024, at most MAX_ENTRIES slots in
    all: hostile descriptors can all name the same long IAT); empty when the directory
    is absent."""
    out: list[Descriptor] = []
    if directory is None:
        return out
    rva = directory[0]
    width = 8 if wide else 4
    flag = 1 << (63 if wide else 31)
    fmt = "<Q" if wide else "<I"
    room = MAX_ENTRIES
    for k in range(1024):
        if room <= 0:
            break
        at = rva + 20 * k
        if at + 20 > len(memory):
            break
        oft, _stamp, _chain, name_rva, iat = struct.unpack_from("<IIIII", memory, at)
        if not (oft or name_rva or iat):
            break
        if not _inside(memory, iat, width):
            continue
        names: list[str | None] = []
        count = 0
        while count < room and _inside(memory, iat + width * count, width):
            (slot,) = struct.unpack_from(fmt, memory, iat + width * count)
            thunk = 0
            if oft and _inside(memory, oft + width * count, width):
                (thunk,) = struct.unpack_from(fmt, memory, oft + width * count)
            if not slot and not thunk:
                break
            names.append(
                None if not thunk or thunk & flag else c_string(memory, (thunk & 0x7FFF_FFFF) + 2)
            )
            count += 1
        room -= count
        out.append(Descriptor(c_string(memory, name_rva), iat, tuple(names), count))
    return out


# -- rebuilding a file --------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    module: str
    name: str
    slot: int  # RVA of the IAT slot


def rebuild(candidate: Candidate, memory: bytes, imports: list[Import], entry: int) -> bytes:
    """A PE file of the image: memory layout (each section's raw data at its RVA),
    fresh headers (MZ, PE, optional header with ImageBase = the load base, the original
    data directories but a new import directory), and a new last section `.pimport`
    whose import directory names `imports`; their IAT slots hold the hint/name RVAs
    again, as in a file on disk."""
    wide = candidate.arch == "x64"
    width = 8 if wide else 4
    size = candidate.size
    new_rva = size
    # The new section: descriptors, INTs, module names, hint/name entries.
    modules: dict[str, list[Import]] = {}
    runs: list[list[Import]] = []
    for item in sorted(imports, key=lambda i: i.slot):
        if runs and runs[-1][-1].module == item.module and item.slot == runs[-1][-1].slot + width:
            runs[-1].append(item)
        else:
            runs.append([item])
        modules.setdefault(item.module, [])
    blob = bytearray(20 * (len(runs) + 1))
    strings: dict[str, int] = {}
    for module in modules:
        strings[module] = new_rva + len(blob)
        blob += module.encode("ascii", "replace") + b"\0"
    hints: dict[int, int] = {}
    for item in imports:
        hints[item.slot] = new_rva + len(blob)
        blob += b"\0\0" + item.name.encode("ascii", "replace") + b"\0"
        blob += b"\0" * (len(blob) % 2)
    blob += b"\0" * (-len(blob) % 8)
    for k, run in enumerate(runs):
        int_rva = new_rva + len(blob)
        for item in run:
            blob += hints[item.slot].to_bytes(width, "little")
        blob += bytes(width)
        struct.pack_into("<IIIII", blob, 20 * k, int_rva, 0, 0, strings[run[0].module], run[0].slot)
    new_size = _rounded(len(blob))
    out = bytearray(memory) + bytes(size - len(memory)) + bytes(blob) + bytes(new_size - len(blob))
    fmt = "<Q" if wide else "<I"
    for item in imports:
        struct.pack_into(fmt, out, item.slot, hints[item.slot])
    sections = list(candidate.sections) + [
        SectionRow(b".pimport", new_rva, len(blob), new_size, 0x4000_0040)
    ]
    directories = dict(candidate.directories)
    directories.pop(5, None)  # base relocations are applied already
    directories.pop(4, None)  # the security directory is a file offset, not in memory
    directories[_DIR_IMPORT] = (new_rva, 20 * (len(runs) + 1))
    if imports:
        first, last = min(i.slot for i in imports), max(i.slot for i in imports)
        directories[_DIR_IAT] = (first, last + width - first)
    else:
        directories.pop(_DIR_IAT, None)
    header = _header(candidate, sections, directories, size + new_size, entry)
    first_section = min((r.rva for r in candidate.sections), default=PAGE_SIZE)
    if len(header) > min(first_section, PAGE_SIZE):
        raise ValueError("the rebuilt headers do not fit before the first section")
    out[: len(header)] = header
    out[len(header) : min(first_section, PAGE_SIZE)] = bytes(
        min(first_section, PAGE_SIZE) - len(header)
    )
    return bytes(out)


def _header(candidate: Candidate, sections: list[SectionRow], directories: dict[int, tuple[int, int]],
            size: int, entry: int) -> bytes:  # fmt: skip
    x64 = candidate.arch == "x64"
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    opt_size = 0xF0 if x64 else 0xE0
    coff = struct.pack("<HHIIIHH", 0x8664 if x64 else 0x14C, len(sections), candidate.timestamp,
                       0, 0, opt_size, 0x22)  # fmt: skip
    common = struct.pack("<BBIIII", 0, 0, 0, 0, 0, entry)
    if x64:
        opt = (
            struct.pack("<H", 0x20B)
            + common
            + struct.pack("<IQII", 0, candidate.base, PAGE_SIZE, 0x200)
        )
    else:
        opt = struct.pack("<H", 0x10B) + common + struct.pack("<IIIII", 0, 0, candidate.base, PAGE_SIZE, 0x200)  # fmt: skip
    opt += struct.pack("<HHHHHHIIII", 6, 1, 6, 1, 6, 1, 0, size, PAGE_SIZE, 0)
    opt += struct.pack("<HH", 1, 0)  # native subsystem
    opt += struct.pack("<QQQQII" if x64 else "<IIIIII", 0x40000, 0x1000, 0x100000, 0x1000, 0, 16)
    dirs = bytearray(128)
    for index, (rva, length) in directories.items():
        if 0 <= index < 16:
            struct.pack_into("<II", dirs, 8 * index, rva, length)
    opt += dirs
    table = bytearray()
    for row in sections:
        if row.characteristics & _SCN_UNINITIALIZED and not row.raw_size:
            raw = 0
        else:
            raw = min(row.raw_size, -(-max(row.virtual_size, 1) // 0x200) * 0x200)
            raw = min(raw, size - row.rva)
        table += struct.pack("<8sIIIIIIHHI", row.name, row.virtual_size, row.rva, raw,
                             row.rva if raw else 0, 0, 0, 0, 0, row.characteristics)  # fmt: skip
    return bytes(dos) + b"PE\0\0" + coff + opt + bytes(table)


Reader = Callable[[int, int], tuple[bytes, int]]
