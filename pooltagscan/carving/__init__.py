"""Drivers carved from a dump's kernel address space, ready for the driver analysis.

`carve(image, space)` walks the present kernel-half mappings of the page tables
(`carving.walk`), looks at every page-aligned start for an image's first page
(`carving.images`: an `MZ`/`PE` header, or a section table whose headers were wiped),
reads each image back (pages not present or not in the dump read as zeros and are
noted), parses the export tables of all of them, and resolves every image's import
address table by the addresses its slots hold (an in-memory IAT holds addresses, not
names): the import directory's names are used too when still present, and when the
directory is gone, runs of slots that hold exported addresses are the IAT. Each image is
then rebuilt as a PE file (`images.rebuild`) that `drivers.pe.load_image` and the
analysis read as they read a file on disk, and that `--save-drivers` writes out.

Names: the loader's entry for the image (KLDR_DATA_TABLE_ENTRY, found by its DllBase,
SizeOfImage and EntryPoint: `loader_names`), else the export table's module name, else
the version resource's OriginalFilename, else `image_<base>.sys`.

Memory: images are capped at `images.MAX_IMAGE_BYTES` each and `MAX_TOTAL_BYTES` in
all; the walk reads table pages once and image pages in batches. Nothing here prints.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from pooltagscan.addressing import KernelSpace
from pooltagscan.addressing.paging import PAGE_SIZE, X64
from pooltagscan.carving.images import (
    HEADER,
    MAX_ENTRIES,
    Candidate,
    Import,
    exports,
    import_descriptors,
    layout_offsets,
    parse_header,
    parse_layout,
    rebuild,
)
from pooltagscan.carving.walk import WalkStats, kernel_mappings
from pooltagscan.inputs.base import MemoryImage

__all__ = ["CarveResult", "CarvedImage", "carve"]

MAX_TOTAL_BYTES = 1 << 30
MAX_IMAGES = 4096
_BATCH_PAGES = 2048
_HEAD = 0x400
_LOADER_CHUNK = 16 << 20
# Loader entries whose fixed fields fit that are read through the page tables, at most
# (a real kernel loads a few hundred modules; a hostile dump may repeat one everywhere).
_LOADER_CANDIDATES = 100_000
_EXAMINE_SLACK = 1 << 16
_NAME_OK = re.compile(r"^[\w.\-+$~ ]{1,128}$")


@dataclass
class CarvedImage:
    """One image found in kernel memory and rebuilt as a file (`data`)."""

    name: str
    base: int
    size: int
    arch: str
    found_by: str  # images.HEADER or images.LAYOUT
    named_by: str  # "loader entry", "export table", "version resource", "base address"
    data: bytes = field(repr=False)
    missing_pages: list[int] = field(default_factory=list)  # RVAs read as zeros
    imports: int = 0
    unresolved_slots: int = 0
    export_module: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.name} at {self.base:#x} ({self.size:#x} bytes, found by {self.found_by}"
        text += f", named by {self.named_by}, {self.imports} imports resolved"
        if self.missing_pages:
            text += f", {len(self.missing_pages)} page(s) missing, read as zeros"
        return text + ")"


@dataclass
class CarveResult:
    images: list[CarvedImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pages_walked: int = 0
    tables_read: int = 0
    seconds: float = 0.0


def carve(image: MemoryImage, space: KernelSpace) -> CarveResult:
    """Every PE image of the kernel half (see the module docstring)."""
    start = time.perf_counter()
    result = CarveResult()
    tables = space.tables
    if tables is None:
        result.notes.append("no drivers carved: " + space.describe())
        return result
    arch = "x64" if tables.mode == X64 else "x86"
    stats = WalkStats()
    skip = space.root.index if space.root is not None and tables.mode == X64 else None
    mappings = kernel_mappings(tables, image.read, image.max_address, skip, stats)
    found, exhausted = _find(image, mappings, arch)
    result.pages_walked, result.tables_read = stats.pages, stats.tables
    if stats.truncated:
        result.notes.append(
            "the page-table walk stopped at its table budget; images past it were not looked for"
        )
    if exhausted:
        result.notes.append(
            "the page-table walk stopped at its page budget (the dump's pages twice over); "
            "images past it were not looked for"
        )
    accepted: list[Candidate] = []
    for cand in sorted(found, key=lambda c: (c.base, c.found_by != HEADER)):
        if accepted and cand.base < accepted[-1].base + accepted[-1].size:
            continue  # inside an image already taken (a page of its own sections)
        accepted.append(cand)
        if len(accepted) >= MAX_IMAGES:
            result.notes.append(f"stopped at {MAX_IMAGES} images")
            break
    memories: list[tuple[Candidate, bytes, list[int]]] = []
    total = 0
    for cand in accepted:
        if total + cand.size > MAX_TOTAL_BYTES:
            result.notes.append(f"stopped reading images at {MAX_TOTAL_BYTES >> 20} MiB in all")
            break
        memory, missing = _read_image(tables, cand)
        total += cand.size
        memories.append((cand, memory, missing))
    # Every image's exports: address -> (module, name).
    exported: dict[int, tuple[str, str]] = {}
    export_tables = {}
    loader = loader_names(image, tables, arch, {c.base: c.size for c, _, _ in memories})
    for cand, memory, _missing in memories:
        table = exports(memory, cand.directories.get(0))
        export_tables[cand.base] = table
        module = table.module or (loader.get(cand.base) or (None, 0))[0]
        if module is None:
            continue
        for rva, name in table.names.items():
            exported.setdefault(cand.base + rva, (module, name))
    best: dict[int, tuple[tuple, CarvedImage]] = {}
    for cand, memory, missing in memories:
        carved = _finish(cand, memory, missing, exported, export_tables[cand.base], loader)
        if carved is None:
            result.notes.append(f"image at {cand.base:#x} could not be rebuilt")
            continue
        # The same physical first page seen at several addresses (a large page over
        # the same memory): the copy whose header states its own address (the loader
        # writes the load base there), with a loader entry, most imports resolved and
        # fewest pages missing is the image; the others are aliases.
        score = (cand.image_base == cand.base, cand.base in loader, carved.imports,
                 -len(missing), -cand.base)  # fmt: skip
        held = best.get(cand.physical)
        if held is None or score > held[0]:
            best[cand.physical] = (score, carved)
    aliases = len(memories) - len(best)
    if aliases:
        result.notes.append(f"{aliases} alias mapping(s) of an image's first page left out")
    used: dict[str, int] = {}
    for _score, carved in sorted(best.values(), key=lambda b: b[1].base):
        key = carved.name.lower()
        used[key] = used.get(key, 0) + 1
        if used[key] > 1:
            carved.name = f"{carved.name}@{carved.base:x}"
        result.images.append(carved)
    result.seconds = time.perf_counter() - start
    return result


def _find(image: MemoryImage, mappings, arch: str) -> tuple[list[Candidate], bool]:
    """Candidates from every page-aligned start of the mappings, in batches, and
    whether the page budget stopped the search."""
    found: list[Candidate] = []
    batch: list[tuple[int, int]] = []
    # Pages looked at, at most: the dump's pages a few times over (aliases of an image's
    # pages are legitimate, hostile large pages over the same memory by the thousand are
    # not) plus a constant for small dumps.
    budget = 2 * (image.max_address // PAGE_SIZE) + _EXAMINE_SLACK

    def flush() -> None:
        if not batch:
            return
        heads = np.zeros((len(batch), _HEAD), dtype=np.uint8)
        for k, (_va, physical) in enumerate(batch):
            data = image.read(physical, _HEAD)
            heads[k, : len(data)] = np.frombuffer(data, np.uint8)
        _judge(image, heads, batch, arch, found)
        batch.clear()

    for mapping in mappings:
        if len(found) >= MAX_IMAGES * 4 or budget <= 0:
            break
        if mapping.size == PAGE_SIZE:
            budget -= 1
            batch.append((mapping.virtual, mapping.physical))
            if len(batch) >= _BATCH_PAGES:
                flush()
            continue
        for offset in range(0, mapping.size, _BATCH_PAGES * PAGE_SIZE):
            length = min(_BATCH_PAGES * PAGE_SIZE, mapping.size - offset)
            if budget <= 0:
                break
            data = image.read(mapping.physical + offset, min(length, budget * PAGE_SIZE))
            whole = len(data) // PAGE_SIZE
            budget -= max(whole, 1)
            if not whole:
                continue
            heads = np.frombuffer(data, np.uint8, whole * PAGE_SIZE).reshape(whole, PAGE_SIZE)
            pages = [(mapping.virtual + offset + k * PAGE_SIZE, mapping.physical + offset + k * PAGE_SIZE)
                     for k in range(whole)]  # fmt: skip
            _judge(image, heads[:, :_HEAD], pages, arch, found)
    flush()
    return found, budget <= 0


def _judge(image: MemoryImage, heads: np.ndarray, pages: list[tuple[int, int]], arch: str,
           found: list[Candidate]) -> None:  # fmt: skip
    mz = np.flatnonzero((heads[:, 0] == ord("M")) & (heads[:, 1] == ord("Z")))
    for k in mz.tolist():
        va, physical = pages[k]
        cand = parse_header(va, image.read(physical, PAGE_SIZE))
        if cand is not None:
            cand.physical = physical
            found.append(cand)
    seen: set[int] = set()
    for k, at in layout_offsets(heads).tolist():
        if k in seen:
            continue
        va, physical = pages[k]
        cand = parse_layout(va, image.read(physical, PAGE_SIZE), at, arch)
        if cand is not None:
            cand.physical = physical
            seen.add(k)
            found.append(cand)


def _read_image(tables, cand: Candidate) -> tuple[bytes, list[int]]:
    out = bytearray()
    missing: list[int] = []
    for offset in range(0, cand.size, PAGE_SIZE):
        data, absent = tables.read(cand.base + offset, PAGE_SIZE)
        if absent == PAGE_SIZE:
            missing.append(offset)
        out += data
    return bytes(out), missing


def _finish(cand: Candidate, memory: bytes, missing: list[int], exported: dict[int, tuple[str, str]],
            table, loader: dict[int, tuple[str, int]]) -> CarvedImage | None:  # fmt: skip
    wide = cand.arch == "x64"
    width = 8 if wide else 4
    notes: list[str] = []
    imports: list[Import] = []
    unresolved = 0
    taken: set[int] = set()
    for descriptor in import_descriptors(memory, cand.directories.get(1), wide):
        for k in range(descriptor.count):
            slot = descriptor.iat + width * k
            (value,) = struct.unpack_from("<Q" if wide else "<I", memory, slot)
            hit = exported.get(value)
            listed = descriptor.names[k]
            if hit is not None:
                if listed is not None and listed != hit[1]:
                    notes.append(
                        f"IAT slot {slot:#x} holds the address of {hit[0]}!{hit[1]}, its "
                        f"import name table says {listed}"
                    )
                imports.append(Import(hit[0], hit[1], slot))
            elif listed is not None and descriptor.module:
                imports.append(Import(descriptor.module, listed, slot))
            else:
                unresolved += 1
                continue
            taken.add(slot)
    if not taken and exported:
        # No import directory left: slots holding exported addresses are the IAT.
        values = np.frombuffer(memory, "<u8" if wide else "<u4", len(memory) // width)
        keys = np.fromiter(exported, dtype=np.uint64, count=len(exported))
        hits = np.flatnonzero(np.isin(values.astype(np.uint64), keys))
        if len(hits) > MAX_ENTRIES:  # hostile memory full of exported addresses
            notes.append(f"{len(hits)} slots hold exported addresses: the first {MAX_ENTRIES} kept")
            hits = hits[:MAX_ENTRIES]
        for index in hits.tolist():
            module, name = exported[int(values[index])]
            imports.append(Import(module, name, index * width))
        if len(hits):
            notes.append(
                f"no import directory: {len(hits)} IAT slot(s) found by the addresses they hold"
            )
    if unresolved:
        notes.append(f"{unresolved} IAT slot(s) hold addresses no carved image exports")
    entry = cand.entry
    if cand.base in loader and not entry:
        entry = max(0, loader[cand.base][1])
    try:
        data = rebuild(cand, memory, imports, entry)
    except (ValueError, struct.error):
        return None
    name, named_by = _name(cand, data, table.module, loader.get(cand.base))
    return CarvedImage(name, cand.base, cand.size, cand.arch, cand.found_by, named_by, data,
                       missing, len(imports), unresolved, table.module, notes)  # fmt: skip


def _name(cand: Candidate, data: bytes, module: str | None, entry) -> tuple[str, str]:
    if entry is not None and _NAME_OK.match(entry[0]):
        return entry[0], "loader entry"
    if module and _NAME_OK.match(module):
        return module, "export table"
    original = _version_name(data)
    if original and _NAME_OK.match(original):
        return original, "version resource"
    return f"image_{cand.base:x}.sys", "base address"


def _version_name(data: bytes) -> str | None:
    """OriginalFilename from the version resource, if any (pefile parses it)."""
    try:
        import pefile

        from pooltagscan.drivers.fileinfo import version_strings

        pe = pefile.PE(data=data, fast_load=True)
        return version_strings(pe, []).get("OriginalFilename") or None
    except Exception:  # noqa: BLE001 - hostile resource data only costs the name
        return None


# -- loader entries ------------------------------------------------------------------------


def loader_names(
    image: MemoryImage, tables, arch: str, images: dict[int, int]
) -> dict[int, tuple[str, int]]:
    """Base -> (BaseDllName, EntryPoint RVA) from the KLDR_DATA_TABLE_ENTRY records
    found anywhere in the dump: a pointer-aligned DllBase equal to a carved image's
    base, followed by an EntryPoint inside it (or 0), SizeOfImage equal to the carved
    size, kernel-address list links, and a BaseDllName UNICODE_STRING (even length at
    most its maximum and 512 bytes) whose buffer translates to printable UTF-16.

    The dump is read in chunks that overlap by an entry, so an entry across a chunk
    boundary is seen (it is found twice at most, and kept once). The fixed fields are
    tested with numpy over every candidate word at once: a dump full of words equal to
    an image base costs a vector pass, not a Python call each; at most
    _LOADER_CANDIDATES entries that pass them are read through the page tables."""
    if not images:
        return {}
    x64 = arch == "x64"
    width = 8 if x64 else 4
    base_off, name_off = (0x30, 0x58) if x64 else (0x18, 0x2C)
    entry_bytes = name_off + 2 * width
    dtype = "<u8" if x64 else "<u4"
    keys = np.fromiter(images, dtype=np.uint64, count=len(images))
    order = np.argsort(keys)
    keys = keys[order]
    sizes = np.fromiter(images.values(), dtype=np.uint64, count=len(images))[order]
    kernel = np.uint64((1 << 63) if x64 else (1 << 31))
    found: dict[int, tuple[str, int]] = {}
    budget = _LOADER_CANDIDATES
    for run in image.runs:
        for offset in range(0, run.length, _LOADER_CHUNK):
            # from one entry before the chunk to one entry after it, within the run
            start = max(0, offset - entry_bytes)
            end = min(run.length, offset + _LOADER_CHUNK + entry_bytes)
            chunk = image.read(run.address + start, end - start)
            values = np.frombuffer(chunk, dtype, len(chunk) // width).astype(np.uint64)
            index = np.flatnonzero((values & np.uint64(0xFFF) == 0) & (values >= keys[0]))
            index = index[np.isin(values[index], keys)]
            index = index[
                (index * width >= base_off) & (index * width - base_off + entry_bytes <= len(chunk))
            ]
            if not index.size:
                continue
            first = index - base_off // width  # the entry's InLoadOrderLinks.Flink
            base = values[index]
            size = values[index + 2] & np.uint64(0xFFFFFFFF)
            entry = values[index + 1]
            wanted = sizes[np.searchsorted(keys, base)]
            rounded = (
                (size + np.uint64(PAGE_SIZE - 1)) // np.uint64(PAGE_SIZE) * np.uint64(PAGE_SIZE)
            )
            ok = ((values[first] & kernel) != 0) & ((values[first + 1] & kernel) != 0)
            ok &= rounded == wanted
            ok &= (entry == 0) | ((entry >= base) & (entry < base + size))
            for here in (first[ok] * width).tolist():
                if budget <= 0:
                    return found
                budget -= 1
                got = _entry(chunk, here, x64, images, tables)
                if got is not None:
                    found.setdefault(got[0], (got[1], got[2]))
    return found


def _entry(chunk: bytes, here: int, x64: bool, images: dict[int, int], tables):
    p = "<Q" if x64 else "<I"
    w = 8 if x64 else 4
    base_off, name_off = (0x30, 0x58) if x64 else (0x18, 0x2C)
    flink, blink = struct.unpack_from(p + p[1], chunk, here)
    base, entry = struct.unpack_from(p + p[1], chunk, here + base_off)
    (size,) = struct.unpack_from("<I", chunk, here + base_off + 2 * w)
    kernel = (1 << 63) if x64 else (1 << 31)
    if (
        not flink & kernel
        or not blink & kernel
        or images.get(base) != -(-size // PAGE_SIZE) * PAGE_SIZE
    ):
        return None
    if entry and not base <= entry < base + size:
        return None
    length, maximum = struct.unpack_from("<HH", chunk, here + name_off)
    (buffer,) = struct.unpack_from(p, chunk, here + name_off + w)
    if not length or length % 2 or length > maximum or length > 512 or not buffer & kernel:
        return None
    raw, absent = tables.read(buffer, length)
    if absent:
        return None
    try:
        name = raw.decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    if not _NAME_OK.match(name):
        return None
    return base, name, entry - base if entry else 0
