"""Loading a driver file: PE validation, sections, imports, exports and function starts.

Everything a user can hand us by mistake - a text file, a truncated download, a
user-mode DLL, an ARM64 driver, a directory entry we may not read - becomes an
`InputError` with a one-line reason, so a batch can report the file and go on. The
file is read once, read-only, into memory (drivers are small; a size cap keeps a
multi-GiB file passed by mistake from being read at all, and the first page is checked
before the rest is read), and pefile parses it from that copy, so nothing ever writes to
or maps the input. Numbers the headers state (section RVAs and sizes, data directories)
are held against the file and the 32-bit RVA space before anything loops on them.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

import pefile

from pooltagscan.drivers.apis import KERNEL_MODULES, module_key
from pooltagscan.errors import InputError, one_line
from pooltagscan.files import InputFile

__all__ = [
    "MAX_IMAGE_BYTES",
    "DriverImage",
    "ImportEntry",
    "NotADriver",
    "Section",
    "load_image",
    "read_file",
]

#: Larger files are refused before reading: the biggest real drivers (display drivers)
#: are tens of MiB to about 100 MiB. The file is held in memory while it is analysed, so
#: this and disasm.MAX_INSTRUCTIONS bound the memory one file can cost (under 300 MB).
MAX_IMAGE_BYTES = 128 * 1024 * 1024

_MACHINES = {0x14C: "x86", 0x8664: "x64"}
_MAX_RVA = 1 << 32  # RVAs are 32-bit: no section may reach past 4 GiB
_UNSUPPORTED_MACHINES = {
    0xAA64: "ARM64",
    0xA641: "ARM64EC",
    0xA64E: "ARM64X",
    0x1C4: "ARM (Thumb-2)",
    0x1C0: "ARM",
    0x200: "IA-64",
    0x5064: "RISC-V 64",
}
_SUBSYSTEMS = {
    2: "Windows GUI",
    3: "Windows CUI",
    5: "OS/2 CUI",
    7: "POSIX CUI",
    9: "Windows CE GUI",
    14: "Xbox",
    16: "Windows boot application",
}
_EFI_SUBSYSTEMS = {10: "EFI application", 11: "EFI boot service driver", 12: "EFI runtime driver"}
_NATIVE = 1
_SUBSYSTEM_OFFSET = 68  # in the optional header, the same for PE32 and PE32+
_USER_MODE_MODULES = frozenset({"ntdll.dll", "kernel32.dll", "kernelbase.dll", "user32.dll"})

_SCN_CNT_CODE = 0x20
_SCN_CNT_INITIALIZED_DATA = 0x40
_SCN_MEM_EXECUTE = 0x20000000
_UNW_FLAG_CHAININFO = 0x4

_DIR_EXPORT, _DIR_IMPORT, _DIR_EXCEPTION, _DIR_IAT = 0, 1, 3, 12
# What pefile raises on corrupt structures besides PEFormatError (it unpacks and indexes
# whatever the file says).
_PEFILE_ERRORS = (
    pefile.PEFormatError,
    struct.error,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
    OverflowError,
)


class NotADriver(InputError):
    """A well-formed PE image that is not kernel-mode code: a user-mode DLL or EXE, an
    EFI image, a native user-mode program (smss.exe).

    Kept apart from other input errors because a folder walk passes such files over
    (a DriverStore holds the user-mode half of each driver package next to the .sys),
    while a file named on the command line is still an error.
    """


@dataclass(frozen=True)
class Section:
    """One section: where it lives in memory (RVA) and in the file."""

    name: str
    rva: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int

    @property
    def executable(self) -> bool:
        return bool(self.characteristics & (_SCN_MEM_EXECUTE | _SCN_CNT_CODE))

    @property
    def end(self) -> int:
        return self.rva + max(self.virtual_size, self.raw_size)

    @property
    def loaded_size(self) -> int:
        """Bytes the loader copies from the file: the raw data, cut at the virtual size
        (the rest of a raw block is file-alignment padding that is never mapped)."""
        return min(self.raw_size, self.virtual_size) if self.virtual_size else self.raw_size


@dataclass(frozen=True)
class ImportEntry:
    """One imported function; `slot` is the RVA of its import address table entry."""

    module: str
    name: str | None
    ordinal: int | None
    slot: int


@dataclass
class DriverImage:
    """A validated x86/x64 kernel-mode PE image held in memory."""

    path: str
    data: bytes
    arch: str
    image_base: int
    entry_rva: int
    sections: list[Section]
    pe: pefile.PE = field(repr=False)
    _starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.sections.sort(key=lambda s: s.rva)
        self._starts = [s.rva for s in self.sections]

    @property
    def pointer_size(self) -> int:
        return 8 if self.arch == "x64" else 4

    def section_at(self, rva: int) -> Section | None:
        """The section whose memory range holds `rva`."""
        index = bisect.bisect_right(self._starts, rva) - 1
        if index >= 0 and rva < self.sections[index].end:
            return self.sections[index]
        return None

    def file_bytes(self, rva: int, size: int) -> bytes | None:
        """`size` bytes at `rva` as stored in the file, or None where the file has none.

        Memory past a section's raw data is zero-filled at load time (`.bss`); callers
        that care about the difference (initial values of globals) use this to tell.
        """
        section = self.section_at(rva)
        if section is None:
            return None
        offset = rva - section.rva
        if offset + size > section.loaded_size:
            return None
        start = section.raw_offset + offset
        return self.data[start : start + size]

    def read_u32(self, rva: int) -> int | None:
        raw = self.file_bytes(rva, 4)
        return None if raw is None else int.from_bytes(raw, "little")

    def executable_sections(self) -> list[Section]:
        return [s for s in self.sections if s.executable and s.loaded_size]

    def directory(self, index: int) -> tuple[int, int]:
        """(rva, size) of a data directory, (0, 0) when absent."""
        directories = self.pe.OPTIONAL_HEADER.DATA_DIRECTORY
        if index >= len(directories):
            return 0, 0
        entry = directories[index]
        return entry.VirtualAddress, entry.Size

    # -- imports and exports --------------------------------------------------------

    def imports(self) -> list[ImportEntry]:
        """Every imported function, by name or by ordinal, with its IAT slot RVA."""
        try:
            self.pe.parse_data_directories(directories=[_DIR_IMPORT])
        except _PEFILE_ERRORS as exc:
            raise InputError(self.path, f"malformed PE: bad import table ({exc})") from None
        entries = []
        for descriptor in getattr(self.pe, "DIRECTORY_ENTRY_IMPORT", ()):
            module = _text(descriptor.dll)
            for item in descriptor.imports:
                if item.address is None:
                    continue
                name = _text(item.name) if item.name else None
                ordinal = item.ordinal if item.import_by_ordinal else None
                entries.append(ImportEntry(module, name, ordinal, item.address - self.image_base))
        return entries

    def import_data_ranges(self) -> list[tuple[int, int]]:
        """RVA ranges holding import tables and name strings (data, even inside code).

        Older linkers merge the import tables into an executable section; disassembling
        them as code would invent instructions, so the disassembler skips these ranges.
        """
        ranges = []
        for index in (_DIR_IMPORT, _DIR_IAT, _DIR_EXPORT, _DIR_EXCEPTION):
            rva, size = self.directory(index)
            if rva and size:
                ranges.append((rva, rva + size))
        for descriptor in getattr(self.pe, "DIRECTORY_ENTRY_IMPORT", ()):
            count = len(descriptor.imports) + 1
            for table in (descriptor.struct.OriginalFirstThunk, descriptor.struct.FirstThunk):
                if table:
                    ranges.append((table, table + count * self.pointer_size))
            if descriptor.struct.Name:
                ranges.append((descriptor.struct.Name, descriptor.struct.Name + 256))
            for item in descriptor.imports:
                if item.name and item.hint_name_table_rva:
                    start = item.hint_name_table_rva
                    ranges.append((start, start + 2 + len(item.name) + 1))
        return ranges

    def exports_by_ordinal(self) -> dict[int, str]:
        """Ordinal -> name of the named exports (used to resolve by-ordinal imports)."""
        try:
            self.pe.parse_data_directories(directories=[_DIR_EXPORT])
        except _PEFILE_ERRORS as exc:
            raise InputError(self.path, f"malformed PE: bad export table ({exc})") from None
        directory = getattr(self.pe, "DIRECTORY_ENTRY_EXPORT", None)
        if directory is None:
            return {}
        return {s.ordinal: _text(s.name) for s in directory.symbols if s.name}

    def export_rvas(self) -> list[int]:
        """RVAs of exported functions (each is a function entry)."""
        directory = getattr(self.pe, "DIRECTORY_ENTRY_EXPORT", None)
        if directory is None:
            try:
                self.pe.parse_data_directories(directories=[_DIR_EXPORT])
            except _PEFILE_ERRORS:  # a broken export table only costs us entry points
                return []
            directory = getattr(self.pe, "DIRECTORY_ENTRY_EXPORT", None)
        if directory is None:
            return []
        return [s.address for s in directory.symbols if s.address and not s.forwarder]

    def pdata_function_starts(self) -> list[int]:
        """Function entries from the x64 exception directory (`.pdata`).

        Each RUNTIME_FUNCTION is {BeginAddress, EndAddress, UnwindInfoAddress}. Entries
        whose unwind info is chained describe a split-off part of a function (cold
        code), not an entry point, and are left out.
        """
        if self.arch != "x64":
            return []
        rva, size = self.directory(_DIR_EXCEPTION)
        table = self.file_bytes(rva, size) if rva and size else None
        if not table:
            return []
        starts = []
        for begin, _end, unwind in struct.iter_unpack("<III", table[: size - size % 12]):
            if begin == 0:
                continue
            header = self.file_bytes(unwind & ~1, 1)
            if header is not None and (header[0] >> 3) & _UNW_FLAG_CHAININFO:
                continue
            starts.append(begin)
        return starts

    def check_kernel_imports(self, entries: list[ImportEntry]) -> None:
        """Refuse native-subsystem images that are user-mode programs (smss.exe...)."""
        modules = {module_key(e.module) for e in entries}
        if modules & _USER_MODE_MODULES and not modules & KERNEL_MODULES:
            which = min(modules & _USER_MODE_MODULES)
            raise NotADriver(
                self.path, f"native user-mode image (imports {which}), not a kernel driver"
            )


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("latin-1")


_HEAD_BYTES = 4096


def read_file(path: str) -> bytes:
    """The whole file, or InputError saying why it cannot be used.

    The first page is read and checked (MZ, PE signature, machine) before the rest, so a
    large file that is no driver at all (a dump, a disk image, zeros) costs one page.
    """
    with InputFile.open(path, "a driver file") as source:
        size = source.size
        if size == 0:
            raise InputError(path, "empty file, not a PE image")
        head = source.pread(0, _HEAD_BYTES)
        check_head(path, head, size)  # a large file that is no PE at all says so
        if size > MAX_IMAGE_BYTES:
            raise InputError(
                path,
                f"{size} bytes is too large for a driver image "
                f"(limit {MAX_IMAGE_BYTES // 2**20} MiB)",
            )
        data = source.pread(0, size) if size > len(head) else head  # one copy, not two
        if len(data) != size:
            raise InputError(
                path, f"the file changed while it was read ({size} -> {len(data)} bytes)"
            )
        return data


def check_head(path: str, head: bytes, size: int) -> str:
    """The architecture, if the file's first bytes are an x86/x64 PE header; else
    InputError in plain words."""
    if len(head) < 64 or bytes(head[:2]) != b"MZ":
        raise InputError(path, "not a PE image (no MZ header)")
    (pe_offset,) = struct.unpack_from("<I", head, 0x3C)
    if pe_offset + 24 > size:
        raise InputError(
            path,
            f"truncated or malformed PE: its PE header offset {pe_offset:#x} lies past the "
            f"end of the {size}-byte file",
        )
    if pe_offset + 24 > len(head):
        return ""  # a header this far in is odd but legal; load_image decides
    if bytes(head[pe_offset : pe_offset + 4]) != b"PE\0\0":
        raise InputError(path, "not a PE image (MZ header without a PE signature)")
    (optional_size,) = struct.unpack_from("<H", head, pe_offset + 20)
    subsystem_at = pe_offset + 24 + _SUBSYSTEM_OFFSET
    if optional_size >= _SUBSYSTEM_OFFSET + 2 and subsystem_at + 2 <= len(head):
        # Before the machine: an ARM64 user-mode DLL is "not a driver", not "unsupported".
        check_subsystem(path, struct.unpack_from("<H", head, subsystem_at)[0])
    (machine,) = struct.unpack_from("<H", head, pe_offset + 4)
    arch = _MACHINES.get(machine)
    if arch is None:
        name = _UNSUPPORTED_MACHINES.get(machine)
        raise InputError(
            path,
            f"unsupported architecture {name + ' ' if name else ''}(machine {machine:#06x}); "
            "only x86 and x64 drivers are analysed",
        )
    return arch


def check_subsystem(path: str, subsystem: int) -> None:
    """NotADriver unless the optional header's subsystem is native (what a .sys states)."""
    if subsystem in _EFI_SUBSYSTEMS:
        raise NotADriver(
            path, f"EFI image ({_EFI_SUBSYSTEMS[subsystem]}), not a Windows kernel driver"
        )
    if subsystem != _NATIVE:
        kind = _SUBSYSTEMS.get(subsystem)
        if kind is None:
            raise NotADriver(path, f"not a kernel driver (unknown subsystem {subsystem})")
        raise NotADriver(path, f"user-mode image ({kind} subsystem), not a kernel driver")


def load_image(path: str, data: bytes | None = None) -> DriverImage:
    """Validate `path` (or its already-read `data`) as an x86/x64 kernel-mode image."""
    if data is None:
        data = read_file(path)
    check_head(path, data[:_HEAD_BYTES], len(data))
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    arch = check_head(path, memoryview(data)[: pe_offset + 24], len(data))
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as exc:
        raise InputError(path, f"truncated or malformed PE: {exc.value}") from None
    except _PEFILE_ERRORS as exc:
        raise InputError(path, f"truncated or malformed PE: {type(exc).__name__}: {exc}") from None
    optional = pe.OPTIONAL_HEADER
    want_magic = 0x20B if arch == "x64" else 0x10B
    if optional.Magic != want_magic:
        raise InputError(
            path,
            f"malformed PE: {arch} machine with a "
            f"{'PE32+' if optional.Magic == 0x20B else 'PE32'} optional header",
        )
    check_subsystem(path, optional.Subsystem)
    sections = []
    for raw in pe.sections:
        name = one_line(raw.Name.rstrip(b"\0").decode("latin-1"))
        section = Section(
            name,
            raw.VirtualAddress,
            raw.Misc_VirtualSize,
            raw.PointerToRawData,
            raw.SizeOfRawData,
            raw.Characteristics,
        )
        if section.raw_size and section.raw_offset + section.raw_size > len(data):
            raise InputError(
                path,
                f"truncated PE: section {name or '?'} needs bytes up to "
                f"{section.raw_offset + section.raw_size:#x}, the file has {len(data)}",
            )
        if section.rva + max(section.virtual_size, section.raw_size) > _MAX_RVA:
            raise InputError(
                path,
                f"malformed PE: section {name or '?'} at RVA {section.rva:#x} with size "
                f"{max(section.virtual_size, section.raw_size):#x} runs past the 4 GiB an "
                "image can span",
            )
        sections.append(section)
    if not sections:
        raise InputError(path, "malformed PE: no sections")
    return DriverImage(
        path=path,
        data=data,
        arch=arch,
        image_base=optional.ImageBase,
        entry_rva=optional.AddressOfEntryPoint,
        sections=sections,
        pe=pe,
    )
