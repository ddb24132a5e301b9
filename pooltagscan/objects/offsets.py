"""Public per-build structure offsets, kept as data (facts only, with where they come from).

Object names without symbols need the offsets of a few fields of the executive objects.
They differ per Windows build for `EPROCESS` and `ETHREAD`; the documented WDM structures
(`DRIVER_OBJECT`, `FILE_OBJECT`, `UNICODE_STRING`) and the object manager's headers keep
one layout per architecture from Windows 7 on. The values below are the public facts that
symbol dumps of the kernel print (`dt nt!_EPROCESS` in WinDbg; Volatility's ISF/vtypes;
the per-build header dumps of the ntdiff project; Geoff Chappell's pages on the
OBJECT_HEADER and its optional headers). The table is consulted first; `calibrate` checks
it against every block of the dump and learns the offsets from the blocks themselves when
no build of the table fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Build:
    """The offsets of one Windows build (relative to the object body)."""

    name: str
    arch: str  # "x64" | "x86"
    source: str
    process: dict[str, int] = field(default_factory=dict)
    process_size: int = 0
    thread: dict[str, int] = field(default_factory=dict)
    thread_size: int = 0


NTDIFF = "ntdiff/headers symbol dumps (dt nt!_EPROCESS / nt!_ETHREAD)"

BUILDS: tuple[Build, ...] = (
    Build(
        "Windows 7 SP1 x64 (6.1.7601)",
        "x64",
        NTDIFF + "; Volatility 2 win7_sp1_x64 vtypes",
        {
            "create_time": 0x168,
            "exit_time": 0x170,
            "pid": 0x180,
            "links": 0x188,
            "ppid": 0x290,
            "name": 0x2E0,
        },
        0x4D0,
        {"start": 0x388, "cid": 0x3B0},
        0x498,
    ),
    Build(
        "Windows 7 SP1 x86 (6.1.7601)",
        "x86",
        NTDIFF + "; Volatility 2 win7_sp1_x86 vtypes",
        {
            "create_time": 0xA0,
            "exit_time": 0xA8,
            "pid": 0xB4,
            "links": 0xB8,
            "ppid": 0x140,
            "name": 0x16C,
        },
        0x2C0,
        {"start": 0x218, "cid": 0x22C},
        0x2B8,
    ),
    Build(
        "Windows 10 1809 x64 (10.0.17763)",
        "x64",
        NTDIFF + " (Win10_1809_RS5/x64)",
        {
            "pid": 0x2E0,
            "links": 0x2E8,
            "create_time": 0x308,
            "ppid": 0x3E0,
            "name": 0x450,
            "exit_time": 0x690,
        },
        0x850,
        {"start": 0x610, "cid": 0x638},
        0x810,
    ),
)


@dataclass(frozen=True)
class ArchFacts:
    """Layouts that stay the same across builds of one architecture (Windows 7 and later).

    OBJECT_HEADER: PointerCount, HandleCount, Lock, then TypeIndex, TraceFlags, InfoMask and
    Flags bytes, then the create info/quota pointer and the security descriptor; the body
    follows. InfoMask bits say which optional headers sit just before it, in this order
    going down from the header: creator info (0x01), name info (0x02), handle info (0x04),
    quota info (0x08), process info (0x10), audit info (0x20, Windows 8+), extended info
    (0x40, Windows 10); bit 0x80 is padding info (a ULONG PaddingAmount just below the
    others). Source: Geoff Chappell, "OBJECT_HEADER" and the optional-header pages.
    """

    ptr: int
    header_body: int  # OBJECT_HEADER size: offset of the body
    info_mask: int  # offset of InfoMask in the OBJECT_HEADER
    optional: tuple[int, ...]  # sizes of the optional headers, bit 0 first
    name_info_name: int  # offset of the UNICODE_STRING in OBJECT_HEADER_NAME_INFO
    # DRIVER_OBJECT (wdm.h): Type 4, Size, DriverStart, DriverSize, DriverName.
    driver: dict[str, int]
    # FILE_OBJECT (wdm.h): Type 5, Size, FileName.
    file: dict[str, int]


ARCH: dict[str, ArchFacts] = {
    "x64": ArchFacts(
        8,
        0x30,
        0x1A,
        (0x20, 0x20, 0x10, 0x20, 0x10, 0x10, 0x10),
        0x08,
        {"size": 0x150, "start": 0x18, "image_size": 0x20, "name": 0x38},
        {"size": 0xD8, "name": 0x58},
    ),
    "x86": ArchFacts(
        4,
        0x18,
        0x0E,
        (0x10, 0x10, 0x08, 0x10, 0x08, 0x08, 0x08),
        0x04,
        {"size": 0xA8, "start": 0x0C, "image_size": 0x10, "name": 0x1C},
        {"size": 0x80, "name": 0x30},
    ),
}
DRIVER_TYPE, FILE_TYPE = 4, 5  # the CSHORT Type of DRIVER_OBJECT and FILE_OBJECT (IO_TYPE_*)
INFO_NAME = 0x02
INFO_PADDING = 0x80


def optional_size(facts: ArchFacts, mask: int) -> int:
    """Bytes of the optional headers InfoMask announces (padding not included)."""
    return sum(size for bit, size in enumerate(facts.optional) if mask >> bit & 1)


def name_info_offset(facts: ArchFacts, mask: int) -> int | None:
    """How far below the OBJECT_HEADER its name info starts, or None without one."""
    if not mask & INFO_NAME:
        return None
    return facts.optional[1] + (facts.optional[0] if mask & 1 else 0)


def builds_for(arch: str) -> tuple[Build, ...]:
    return tuple(b for b in BUILDS if b.arch == arch)
