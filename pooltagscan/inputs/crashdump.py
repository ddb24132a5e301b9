"""Windows kernel crash dumps (`PAGEDUMP` / `PAGEDU64`): header facts and the page map.

The dump header (0x1000 bytes on 32-bit systems, 0x2000 on 64-bit ones) says which kind
of dump follows (DumpType). Full dumps (1) list physical memory runs stored back to back;
bitmap dumps (5: full, 6: kernel) carry a summary header and one bit per physical page.
Volatility 3's crash-dump layer turns either into a physical address -> file offset map,
which `volmap` reads down to the file; the bytes are then mmapped like a raw image and
reported offsets are physical addresses. (Our subclass of that layer accepts type 6 too
and decodes bitmaps with numpy; see `_layer_classes`.) Kernel minidumps (4) store kernel virtual memory
instead and go to `minidump`.

Field offsets follow the public descriptions of DUMP_HEADER32/DUMP_HEADER64 (the
Windows SDK's dump header, as documented by Volatility's crash ISF, rizin's dmp_specs.h
and kdmp-parser) and were checked against a real ARM64 Windows 11 dump.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs import volmap
from pooltagscan.inputs.base import MemoryImage

MACHINES = {0x014C: "x86", 0x8664: "x64", 0xAA64: "ARM64", 0x01C4: "ARM", 0x0200: "IA64"}
DUMP_TYPES = {
    1: "full",
    2: "summary",
    3: "header only",
    4: "triage",
    5: "bitmap full",
    6: "bitmap kernel",
    7: "automatic",
    8: "kernel memory (.dump /k)",
    9: "kernel and user memory (.dump /ka)",
    10: "complete memory (.dump /f)",
}
FULL, TRIAGE, BITMAP_FULL, BITMAP_KERNEL = 1, 4, 5, 6
SUPPORTED = (FULL, BITMAP_FULL, BITMAP_KERNEL)
SUMMARY_SIGNATURES = (b"SDMP", b"FDMP")
PAGE = 4096
# The physical address space x64 (and PAE) can address: 52 bits. A run or bitmap claiming
# memory beyond it comes from a corrupt header, whatever the file size.
MAX_PHYSICAL_PAGES = 1 << (52 - 12)
# PhysicalMemoryBlockBuffer: where the run list sits in the dump header and how many runs
# fit before the next field (ContextRecord): 0x88..0x348 on 64-bit, 0x64..0x320 on 32-bit.
RUNS64 = (0x88, 0x98, 16, (0x348 - 0x98) // 16)  # descriptor, first run, run size, max runs
RUNS32 = (0x64, 0x6C, 8, (0x320 - 0x6C) // 8)

Segment = tuple[int, int, int, int]  # (address, file offset, length, length), Volatility's form


@dataclass(frozen=True)
class DumpHeader:
    """The facts of a crash dump header that matter to a pool scan and its report."""

    is64: bool
    major: int
    build: int  # MinorVersion is the build number (22000 = Windows 11 21H2)
    directory_table_base: int
    machine: int
    processors: int
    bugcheck: int
    bugcheck_parameters: tuple[int, ...]
    dump_type: int
    header_size: int  # where the dump's own data begins

    @property
    def architecture(self) -> str:
        return MACHINES.get(self.machine, f"machine {self.machine:#x}")

    @property
    def dump_type_name(self) -> str:
        return f"{DUMP_TYPES.get(self.dump_type, 'unknown')} ({self.dump_type})"

    def details(self) -> dict[str, object]:
        return {
            "dump_type": self.dump_type_name,
            "build": self.build,
            "bugcheck": f"{self.bugcheck:#x}",
            "bugcheck_parameters": [f"{p:#x}" for p in self.bugcheck_parameters],
            "processors": self.processors,
        }


def parse_header(path: str, head: bytes) -> DumpHeader:
    """Decode the dump header from the file's first bytes (at least 0x2000 of them)."""
    is64 = head[:8] == b"PAGEDU64"
    size = 0x2000 if is64 else 0x1000
    if len(head) < size:
        raise InputError(path, f"truncated crash dump: header needs {size} bytes")
    major, minor = struct.unpack_from("<II", head, 8)
    if is64:
        dtb, machine, cpus, code = struct.unpack_from("<Q", head, 0x10) + struct.unpack_from(
            "<III", head, 0x30
        )
        params = struct.unpack_from("<4Q", head, 0x40)
        (dump_type,) = struct.unpack_from("<I", head, 0xF98)
    else:
        dtb, machine, cpus, code = struct.unpack_from("<I", head, 0x10) + struct.unpack_from(
            "<III", head, 0x20
        )
        params = struct.unpack_from("<4I", head, 0x2C)
        (dump_type,) = struct.unpack_from("<I", head, 0xF88)
    return DumpHeader(is64, major, minor, dtb, machine, cpus, code, params, dump_type, size)


def open_crashdump(source: InputFile, head: bytes) -> MemoryImage:
    """Open any `PAGEDUMP`/`PAGEDU64` file: minidumps by our reader, the rest via Volatility."""
    path, file_size = source.path, source.size
    header = parse_header(path, head)
    if header.dump_type == TRIAGE:
        from pooltagscan.inputs.minidump import open_minidump

        return open_minidump(source, header)
    if header.dump_type not in SUPPORTED:
        raise InputError(
            path,
            f"Windows crash dump of type {header.dump_type_name} is not supported "
            "(full, bitmap and kernel minidump dumps are); convert it with WinDbg "
            "(.dump /f) or take a raw image",
        )
    notes: list[str] = []
    if header.dump_type in (BITMAP_FULL, BITMAP_KERNEL):
        _check_summary(source, header)
        try:
            segments = bitmap_segments(source.pread, header.header_size, PAGE, file_size, notes)
        except ValueError as exc:
            raise InputError(path, str(exc)) from None
    else:
        segments = full_segments(path, head, header, notes)
    if not segments:
        raise InputError(path, "crash dump that lists no physical memory")
    image = volmap.physical_image(
        source, "crashdump", functools.partial(_build_layer, header, segments), "crash dump"
    )
    image.notes[:0] = notes
    image.architecture = header.architecture
    image.page_table_root = header.directory_table_base or None
    runs = image.details.pop("segments")
    image.details.update(header.details())
    if header.dump_type == FULL:
        image.details["memory_runs"] = runs
    image.details["pages"] = image.scanned_bytes // PAGE
    return image


def full_segments(path: str, head: bytes, header: DumpHeader, notes: list[str]) -> list[Segment]:
    """The memory runs of a full dump (DumpType 1), checked before anything loops on them.

    The header's PhysicalMemoryBlockBuffer holds NumberOfRuns, NumberOfPages and the runs
    {BasePage, PageCount}; the pages of the runs follow the header back to back. A count
    larger than the buffer holds, a run beyond the physical address space, or runs out of
    order mean a corrupt header; empty runs are skipped (Volatility's mapping would
    never get past one).
    """
    at, first, size, most = RUNS64 if header.is64 else RUNS32
    (count,) = struct.unpack_from("<I", head, at)
    if count > most:
        raise InputError(
            path,
            f"crash dump header lists {count} physical memory runs; its run table holds "
            f"at most {most}",
        )
    fmt = "<QQ" if header.is64 else "<II"
    segments: list[Segment] = []
    offset = header.header_size
    end_page = empty = 0
    for index in range(count):
        base, pages = struct.unpack_from(fmt, head, first + index * size)
        if pages == 0:
            empty += 1
            continue
        if base + pages > MAX_PHYSICAL_PAGES:
            raise InputError(
                path,
                f"crash dump memory run {index} (page {base:#x}, {pages:#x} pages) lies "
                "beyond the 52-bit physical address space",
            )
        if base < end_page:
            raise InputError(
                path, f"crash dump memory runs overlap or are out of order (run {index})"
            )
        segments.append((base * PAGE, offset, pages * PAGE, pages * PAGE))
        offset += pages * PAGE
        end_page = base + pages
    if empty:
        notes.append(f"{empty} empty physical memory run(s) in the dump header are skipped")
    return segments


def _check_summary(source: InputFile, header: DumpHeader) -> None:
    """A bitmap dump must carry its summary header ("SDMP"/"FDMP", "DUMP") after the header."""
    at = header.header_size
    summary = source.pread(at, 8)
    if summary[:4] not in SUMMARY_SIGNATURES or summary[4:8] != b"DUMP":
        raise InputError(
            source.path,
            f"bitmap crash dump without its summary header (found {summary[:4]!r} at {at:#x})",
        )


def _build_layer(header: DumpHeader, segments: list[Segment], context: Any, base: str) -> Any:
    layer_class = _layer_classes()[header.is64]
    given = type(layer_class.__name__, (layer_class,), {"given_segments": segments})
    return volmap.stack_layer(context, given, base, "crashdump")


# Bitmap bytes decoded per step: bounds memory on dumps of machines with terabytes of RAM
# (and on hostile bitmaps whose bits alternate: at most 4M run edges per step).
BITMAP_CHUNK = 512 << 10


def bitmap_segments(
    read: Callable[[int, int], bytes],
    summary_at: int,
    page_size: int = PAGE,
    file_size: int | None = None,
    notes: list[str] | None = None,
) -> list[Segment]:
    """Segments (address, file offset, length, length) of a bitmap dump, vectorized.

    The summary header holds the file offset of the first stored page (+0x20), the number
    of pages present (+0x28) and the number of bits (+0x30); the bitmap follows at +0x38,
    one bit per physical page, least significant bit first; present pages are stored in
    ascending order. Volatility's own loader reads the bitmap one ULONG object at a time,
    about a minute for a machine with 64 GiB of address space; this takes milliseconds.

    With `file_size`, every number is held against the file first: the bitmap must lie
    inside it, and decoding stops at the last page the file can hold, so a hostile
    bitmap (alternating bits over a huge range) costs what the file's size allows, not
    what the header claims.
    """
    raw_header = read(summary_at + 0x20, 24)
    if len(raw_header) < 24:
        raise ValueError("bitmap crash dump whose summary header is cut short")
    first_page, present, bits = struct.unpack("<QQQ", raw_header)
    bitmap_at = summary_at + 0x38
    capacity = None
    if file_size is not None:
        if bits > MAX_PHYSICAL_PAGES:
            raise ValueError(
                f"bitmap crash dump claiming {bits} pages, beyond a 52-bit address space"
            )
        if bitmap_at + -(-bits // 8) > file_size:
            raise ValueError(
                f"bitmap crash dump whose bitmap of {bits} bits runs past the end of the "
                f"{file_size}-byte file"
            )
        if first_page >= file_size:
            raise ValueError(
                f"bitmap crash dump whose first page ({first_page:#x}) lies past its end"
            )
        capacity = (file_size - first_page) // page_size
    segments: list[Segment] = []
    offset = first_page
    stored = 0  # pages taken so far
    run_start: int | None = None
    done = 0
    set_bits = 0
    while done < bits:
        count = min(BITMAP_CHUNK * 8, bits - done)
        raw = np.frombuffer(read(bitmap_at + done // 8, -(-count // 8)), np.uint8)
        flags = np.unpackbits(raw, bitorder="little")[:count].astype(np.int8)
        set_bits += int(np.count_nonzero(flags))
        if capacity is not None and stored >= capacity:
            done += count
            continue  # only counting what the file cannot hold
        edges = np.flatnonzero(np.diff(flags, prepend=0, append=0))
        if capacity is not None:  # every run takes a page: later edges cannot matter
            edges = edges[: 2 * (capacity - stored) + 2]
        edges = edges.tolist()
        full = False
        for i in range(0, len(edges), 2):
            begin, end = edges[i] + done, edges[i + 1] + done
            if run_start is not None and begin == done:  # continues the previous chunk's run
                begin = run_start
                previous = segments.pop()[2] // page_size
                offset -= previous * page_size
                stored -= previous
            open_end = end == done + count
            if capacity is not None and stored + (end - begin) >= capacity:
                end, open_end, full = begin + (capacity - stored), False, True
            run_start = begin if open_end else None
            if end > begin:
                length = (end - begin) * page_size
                segments.append((begin * page_size, offset, length, length))
                offset += length
                stored += end - begin
            if full:
                break
        if not edges or edges[-1] + done != done + count:
            run_start = None
        done += count
    if notes is not None:
        if capacity is not None and set_bits > stored:
            notes.append(
                f"the file is truncated: the bitmap marks {set_bits} pages, the file holds "
                f"{stored}; the rest is not scanned"
            )
        if present != set_bits:
            notes.append(
                f"the summary header says {present} pages are present, its bitmap marks {set_bits}"
            )
    return segments


@functools.cache
def _layer_classes() -> dict[bool, type]:
    """Volatility's crash-dump layers, taught that DumpType 6 is a bitmap dump too.

    Volatility 3 accepts DumpType 1 and 5. A "bitmap kernel" dump (6; live kernel dumps,
    kernel dumps of recent Windows) stores its pages exactly like type 5: the same
    summary header and bitmap after the dump header (see kdmp-parser's bmp_physmem). The
    subclasses widen the accepted types and take the segments `open_crashdump` computed
    and checked (`full_segments`, `bitmap_segments`: the same result as Volatility's
    loaders on sound files, checked by the tests, far faster for bitmaps, and bounded by
    the file on corrupt ones). Without given segments, bitmaps are still decoded by
    `bitmap_segments` and full dumps by Volatility's loader. Everything else, mapping()
    included, is Volatility's.
    """
    from volatility3.framework.layers import crash

    def make(base: type) -> type:
        class BitmapAwareCrashLayer(base):  # type: ignore[misc, valid-type]
            supported_dumptypes = (FULL, BITMAP_FULL, BITMAP_KERNEL)
            given_segments: list[Segment] | None = None

            def _load_segments(self) -> None:
                if self.given_segments is not None:  # checked by open_crashdump
                    self._segments = list(self.given_segments)
                elif self.dump_type not in (BITMAP_FULL, BITMAP_KERNEL):
                    super()._load_segments()
                    return
                else:
                    base_layer = self.context.layers[self._base_layer]
                    self._segments = bitmap_segments(
                        base_layer.read, self._page_size * self.headerpages, self._page_size
                    )
                if not self._segments:
                    raise crash.WindowsCrashDumpFormatException(
                        self.name, f"No Crash segments defined in {self._base_layer}"
                    )

        BitmapAwareCrashLayer.__name__ = base.__name__ + "Bitmap"
        return BitmapAwareCrashLayer

    return {False: make(crash.WindowsCrashDump32Layer), True: make(crash.WindowsCrashDump64Layer)}
