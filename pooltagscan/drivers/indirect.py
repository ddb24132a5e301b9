"""Pool APIs a driver reaches without importing them, and the calls through them.

Three shapes, each common in a whole class of drivers:

- **Resolved at run time.** A driver that runs on old and new Windows asks
  `MmGetSystemRoutineAddress` for `ExAllocatePool2` (VideoPort miniports ask the
  `VideoPortGetProcAddress` callback for `VideoPortAllocatePool`), keeps the result in a
  global - or a structure of function pointers - and calls through it: `call [g]`,
  `mov reg, [g]` ... `call reg`, or through the Control Flow Guard pointers (x64
  `call [__guard_dispatch_icall_fptr]` with the target in rax; x86 `call
  [__guard_check_icall_fptr]` with the target in ecx, then `call reg`).
  Found from the routine's name: every reference to the name string (or to a static
  `UNICODE_STRING` pointing at it) is followed forward to the next call of a resolver
  routine, and its result to the global it is stored in.
- **KMDF.** The KMDF stub gives `WdfVersionBind` a `WDF_BIND_INFO` whose `FuncTable`
  member is the address of the driver's `WdfFunctions` variable; the framework fills
  it, and the driver calls `WdfFunctions[index]`. The index names the API
  (`apis.WDF_APIS`).
- **The CFG pointers** themselves, named by the load configuration directory or, when
  it is absent, recognised by their initial value: `_guard_dispatch_icall_nop` is a
  lone `jmp rax`, `_guard_check_icall_nop` a lone `ret`.

The result is a set of call sites with synthetic slot keys (the global's RVA for a
resolved routine, `WDF_KEY + index` for a table entry) that the data-flow resolver
treats like import calls. Everything read from the file is bounds-checked by the image
accessors; scans are bounded by the code size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import capstone
import numpy as np
from capstone import x86 as cs_x86

from pooltagscan.drivers.apis import POOL_APIS, WDF_APIS, WDF_BIND, PoolApi
from pooltagscan.drivers.dataflow import TagResolver
from pooltagscan.drivers.disasm import NO_FALLTHROUGH, ApiSite, CodeIndex
from pooltagscan.drivers.pe import _PEFILE_ERRORS, DriverImage

__all__ = ["WDF_KEY", "IndirectApis", "find_indirect"]

#: Synthetic slot keys of KMDF table entries: above every RVA.
WDF_KEY = 1 << 33
# Slots of the KMDF function table read (about 450 in KMDF 1.33; room for later ones).
WDF_TABLE_SLOTS = 4096
_MASK = 0xFFFFFFFF
_FORWARD_LIMIT = 48  # instructions followed forward from a name or a load
_STORE_LIMIT = 24  # instructions between a resolver call and the store of its result
_CHUNK = 1 << 20  # code bytes scanned for references at a time
_MAX_NAME_HITS = 256  # copies of one routine name considered (hostile files repeat them)
_REG, _MEM, _IMM = cs_x86.X86_OP_REG, cs_x86.X86_OP_MEM, cs_x86.X86_OP_IMM
_TABLE = "table"
_BIND_API = PoolApi(WDF_BIND.name, (), "bind", WDF_BIND.bind_info_index,
                    WDF_BIND.bind_info_index, WDF_BIND.x86_stack_bytes)  # fmt: skip


@dataclass
class IndirectApis:
    """What `find_indirect` found: call sites, the API behind each synthetic slot key,
    the indirect call sites' targets (for x86 stack arithmetic), and the routines
    resolved by name (global RVA -> name)."""

    sites: list[ApiSite] = field(default_factory=list)
    slots: dict[int, PoolApi] = field(default_factory=dict)
    targets: dict[int, int] = field(default_factory=dict)
    resolved: dict[int, str] = field(default_factory=dict)
    wdf_tables: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def api_names(self) -> tuple[str, ...]:
        return tuple(sorted({self.slots[site.slot].name for site in self.sites}))


# -- finding things in the file ----------------------------------------------------------


def _file_to_rva(image: DriverImage, offset: int) -> int | None:
    for section in image.sections:
        if section.raw_offset <= offset < section.raw_offset + section.loaded_size:
            return section.rva + offset - section.raw_offset
    return None


def _occurrences(data: bytes, needle: bytes, limit: int = _MAX_NAME_HITS) -> Iterable[int]:
    start = 0
    for _ in range(limit):
        found = data.find(needle, start)
        if found < 0:
            return
        yield found
        start = found + 1


def name_strings(image: DriverImage, names: Iterable[str]) -> dict[int, tuple[str, bool]]:
    """RVA -> (routine name, is UTF-16) of every NUL-terminated copy of a name, and of
    every static `UNICODE_STRING` whose Buffer points at a UTF-16 copy."""
    data = image.data
    found: dict[int, tuple[str, bool]] = {}
    pointer = image.pointer_size
    for name in names:
        for wide, encoded in ((False, name.encode()), (True, name.encode("utf-16-le"))):
            terminator = b"\0\0" if wide else b"\0"
            width = 2 if wide else 1
            for offset in _occurrences(data, encoded + terminator):
                before = data[offset - width : offset] if offset >= width else b""
                if (
                    before
                    and (chr(before[0]).isalnum() or before[0] == ord("_"))
                    and (not wide or before[1] == 0)
                ):
                    continue  # the end of a longer name
                rva = _file_to_rva(image, offset)
                if rva is None:
                    continue
                found[rva] = (name, wide)
                if not wide:
                    continue
                # A static UNICODE_STRING {USHORT Length, MaximumLength; PWSTR Buffer}:
                # Buffer at 8 on x64 (after padding), at 4 on x86.
                address = (image.image_base + rva).to_bytes(pointer, "little")
                buffer_at = 8 if pointer == 8 else 4
                for hit in _occurrences(data, address):
                    head = hit - buffer_at
                    if head < 0:
                        continue
                    length = int.from_bytes(data[head : head + 2], "little")
                    maximum = int.from_bytes(data[head + 2 : head + 4], "little")
                    if length == 2 * len(name) and maximum >= length:
                        struct_rva = _file_to_rva(image, head)
                        if struct_rva is not None:
                            found[struct_rva] = (name, True)
    return found


def data_references(image: DriverImage, index: CodeIndex, targets: Iterable[int]) -> list[int]:
    """Instructions that name one of `targets` by address: a `[rip+disp]` operand on
    x64, an absolute address (memory operand or immediate) on x86. Sorted RVAs."""
    wanted = np.array(sorted(set(targets)), dtype=np.int64)
    if not len(wanted):
        return []
    hits: set[int] = set()
    for section in image.executable_sections():
        start, size = section.raw_offset, section.loaded_size
        for chunk_start in range(0, size, _CHUNK):
            # Overlap by 3 so a 4-byte field across the boundary is seen once.
            chunk = image.data[start + chunk_start : start + min(size, chunk_start + _CHUNK + 3)]
            if len(chunk) < 4:
                continue
            raw = np.frombuffer(chunk, np.uint8).astype(np.uint32)
            words = raw[:-3] | raw[1:-2] << 8 | raw[2:-1] << 16 | raw[3:] << 24
            positions = np.arange(len(words), dtype=np.int64) + section.rva + chunk_start
            if index.is64:
                values = positions + 4 + words.astype(np.int32).astype(np.int64)
            else:
                values = (words.astype(np.int64) - image.image_base) & _MASK
            for position in positions[np.isin(values, wanted)]:
                hits.add(int(position))
    result = set()
    for rva in sorted(hits):
        position = index.containing(rva)
        if position is not None:
            result.add(index.starts[position])
    return sorted(result)


def _memory_address(index: CodeIndex, insn: capstone.CsInsn, operand) -> int | None:
    """RVA named by a `[rip+disp]` / `[abs32]` operand, else None."""
    mem = operand.mem
    if mem.index or mem.segment:
        return None
    if mem.base == cs_x86.X86_REG_RIP:
        return (insn.address + insn.size + mem.disp) & _MASK
    if mem.base == 0 and not index.is64:
        return (mem.disp - index.image.image_base) & _MASK
    return None


def guard_pointers(image: DriverImage, index: CodeIndex) -> tuple[set[int], set[int]]:
    """RVAs of the CFG dispatch (x64) and check pointers.

    From the load configuration directory when it names them, else every
    pointer-sized value in a non-executable section that points at a lone `jmp rax`
    (x64) or `ret` (x86) and is used by a call."""
    dispatch: set[int] = set()
    check: set[int] = set()
    try:
        image.pe.parse_data_directories(directories=[10])
        config = getattr(image.pe, "DIRECTORY_ENTRY_LOAD_CONFIG", None)
        struct = getattr(config, "struct", None)
    except _PEFILE_ERRORS:  # a corrupt directory: fall back to the heuristic
        struct = None
    for attribute, into in (
        ("GuardCFDispatchFunctionPointer", dispatch),
        ("GuardCFCheckFunctionPointer", check),
    ):
        value = getattr(struct, attribute, 0) or 0
        rva = (value - image.image_base) & 0xFFFFFFFFFFFFFFFF
        if value and rva < (1 << 32) and image.section_at(rva) is not None:
            into.add(rva)
    if dispatch or check:
        return dispatch, check
    pointer = image.pointer_size
    stub = b"\xff\xe0" if index.is64 else b"\xc3"
    for section in image.sections:
        if section.executable or not section.loaded_size:
            continue
        raw = image.data[section.raw_offset : section.raw_offset + section.loaded_size]
        count = len(raw) // pointer
        if not count:
            continue
        kind = np.uint64 if pointer == 8 else np.uint32
        values = np.frombuffer(raw[: count * pointer], kind).astype(np.uint64)
        low, high = image.image_base, image.image_base + (1 << 32)
        for offset in np.nonzero((values >= low) & (values < high))[0]:
            target = int(values[offset]) - image.image_base
            target_section = image.section_at(target)
            if target_section is None or not target_section.executable:
                continue
            if image.file_bytes(target, len(stub)) == stub and index.is_instruction(target):
                (dispatch if index.is64 else check).add(section.rva + int(offset) * pointer)
    return dispatch, check


# -- following values forward -------------------------------------------------------------


class _Forward:
    """Short forward scans over the index (fall-through only), on detailed decodes."""

    def __init__(self, index: CodeIndex, resolver: TagResolver):
        self.index = index
        self.resolver = resolver
        self.volatile = resolver._volatile
        self.ptr = resolver.ptr

    def family(self, reg: int) -> str | None:
        return self.resolver._family(reg)

    def following(self, rva: int, limit: int) -> Iterable[capstone.CsInsn]:
        """Up to `limit` instructions after `rva` in fall-through order."""
        index = self.index
        position = index.index_of(rva)
        if position is None or index.flags[position] & NO_FALLTHROUGH:
            return
        for cursor in range(position + 1, min(len(index.starts), position + 1 + limit)):
            previous = cursor - 1
            if index.starts[previous] + index.sizes[previous] != index.starts[cursor]:
                return
            insn = index.decode(index.starts[cursor])
            if insn is None:
                return
            yield insn
            if index.flags[cursor] & NO_FALLTHROUGH:
                return

    def written(self, insn: capstone.CsInsn) -> set[str]:
        try:
            _, registers = insn.regs_access()
        except capstone.CsError:
            return set(self.volatile)
        return {f for f in map(self.family, registers) if f is not None}

    def call_slot(self, insn: capstone.CsInsn) -> tuple[str, int | None]:
        """What a call goes to: ("slot", rva of the pointer it reads), ("local", None)
        for a direct call into the driver, ("pointer", None) through a register or a
        structure whose value is not known."""
        operand = insn.operands[0] if insn.operands else None
        if operand is None:
            return "pointer", None
        if operand.type == _IMM:
            thunk = self.index.thunk_slot(operand.imm & _MASK)
            return ("slot", thunk) if thunk is not None else ("local", None)
        if operand.type == _MEM:
            address = _memory_address(self.index, insn, operand)
            return ("slot", address) if address is not None else ("pointer", None)
        if operand.type == _REG:
            family = self.family(operand.reg)
            if family is not None:
                slots = {
                    v.value
                    for v in self.resolver.walk(insn.address, ("reg", family))
                    if v.kind == "global" and not v.ops
                }
                if len(slots) == 1:
                    return "slot", slots.pop()
        return "pointer", None

    def stored_result(self, call: int) -> tuple[int, int, str] | None:
        """(global, store instruction, register stored) when a call's return value is
        stored in a global (`mov [g], rax`, or through a copy) before the next call."""
        tracked = {"rax"}
        for insn in self.following(call, _STORE_LIMIT):
            if insn.mnemonic in ("call", "ret", "jmp"):
                return None
            operands = insn.operands
            if insn.mnemonic == "mov" and len(operands) == 2:
                destination, source = operands
                if (
                    destination.type == _MEM
                    and source.type == _REG
                    and self.family(source.reg) in tracked
                    and destination.size == self.ptr
                ):
                    address = _memory_address(self.index, insn, destination)
                    family = self.family(source.reg)
                    if address is not None and family is not None:
                        return address, insn.address, family
                if (
                    destination.type == _REG
                    and source.type == _REG
                    and self.family(source.reg) in tracked
                    and destination.size == self.ptr
                ):
                    tracked.add(self.family(destination.reg) or "")
                    continue
            tracked -= self.written(insn)
            if not tracked:
                return None
        return None


def _resolve_names(
    image: DriverImage,
    index: CodeIndex,
    forward: _Forward,
    resolver_slots: Mapping[int, bool],
    import_slots: frozenset[int],
    stores: list[tuple[int, int, str]],
) -> dict[int, str]:
    """Global RVA -> pool API name, for routines resolved by name at run time. The
    stores of the results (global, instruction, register) are appended to `stores`:
    the register still holds the routine after them."""
    strings = name_strings(image, POOL_APIS)
    if not strings:
        return {}
    resolved: dict[int, str] = {}
    for reference in data_references(image, index, strings):
        insn = index.decode(reference)
        if insn is None:
            continue
        names = set()
        for operand in insn.operands:
            address = None
            if operand.type == _MEM:
                address = _memory_address(index, insn, operand)
            elif operand.type == _IMM and not index.is64:
                address = (operand.imm - image.image_base) & _MASK
            if address in strings:
                names.add(strings[address])
        if len(names) != 1:
            continue
        ((name, wide),) = names
        for later in forward.following(reference, _FORWARD_LIMIT):
            if later.mnemonic != "call":
                continue
            kind, slot = forward.call_slot(later)
            if kind == "slot" and slot in resolver_slots:
                is_resolver = resolver_slots[slot] == wide
            elif kind == "pointer" or (kind == "slot" and slot not in import_slots):
                # VideoPortGetProcAddress comes from VIDEO_PORT_CONFIG_INFO, not an
                # import, and takes an ANSI name.
                is_resolver = not wide
            else:
                is_resolver = False
            if not is_resolver:
                continue
            stored = forward.stored_result(later.address)
            if stored is not None and stored[0] not in import_slots:
                resolved.setdefault(stored[0], name)
                stores.append(stored)
            break
    return resolved


def _wdf_tables(
    image: DriverImage, index: CodeIndex, resolver: TagResolver, bind_slots: set[int]
) -> list[int]:
    """RVAs of the `WdfFunctions` variables named by `WdfVersionBind` calls."""
    tables = set()
    offset = WDF_BIND.func_table_offset[0 if index.is64 else 1]
    for site in index.api_sites:
        if site.slot not in bind_slots:
            continue
        calls = [(site.rva, site.jump)]
        if site.jump and index.is_function_start(site.rva):
            calls = index.callers(site.rva)  # an import thunk: its callers
        for call, jump in calls:
            location = resolver.argument(_BIND_API, jump)
            for value in resolver.pointer_values(call, location):
                if value.kind != "address":
                    continue
                raw = image.file_bytes(value.value + offset, image.pointer_size)
                if raw is None:
                    continue
                table = int.from_bytes(raw, "little") - image.image_base
                if 0 <= table < (1 << 32) and image.section_at(table) is not None:
                    tables.add(table)
    return sorted(tables)


def _calls_through(
    index: CodeIndex,
    forward: _Forward,
    references: list[int],
    keys: Mapping[int, int | str],
    dispatch: set[int],
    check: set[int],
    starts: list[tuple[int, str, int]],
) -> list[tuple[int, int, bool]]:
    """(site, key, is jump) of every call through the globals in `keys` (global RVA ->
    slot key, or _TABLE for a KMDF function table). `starts` are more places where a
    register holds a key: (instruction, register, key)."""
    sites: list[tuple[int, int, bool]] = []
    for rva, family, key in starts:
        _track(index, forward, rva, {family: key}, dispatch, check, sites)
    for reference in references:
        insn = index.decode(reference)
        if insn is None or not insn.operands:
            continue
        operands = insn.operands
        if insn.mnemonic in ("call", "jmp") and operands[0].type == _MEM:
            address = _memory_address(index, insn, operands[0])
            key = keys.get(address) if address is not None else None
            if isinstance(key, int):
                sites.append((insn.address, key, insn.mnemonic == "jmp"))
            continue
        if insn.mnemonic != "mov" or len(operands) != 2 or operands[0].type != _REG:
            continue
        if operands[1].type != _MEM:
            continue
        address = _memory_address(index, insn, operands[1])
        if address not in keys:
            continue
        destination = forward.family(operands[0].reg)
        if destination is None:
            continue
        _track(index, forward, insn.address, {destination: keys[address]}, dispatch, check, sites)
    return sites


def _track(
    index: CodeIndex,
    forward: _Forward,
    start: int,
    state: dict[str, int | str],
    dispatch: set[int],
    check: set[int],
    sites: list[tuple[int, int, bool]],
) -> None:
    """Follow registers holding routines (or a KMDF table) forward from `start` and
    append the calls made through them to `sites`."""
    ptr = forward.ptr
    for later in forward.following(start, _FORWARD_LIMIT):
        mnemonic = later.mnemonic
        operand = later.operands[0] if later.operands else None
        if mnemonic in ("call", "jmp") and operand is not None:
            key = None
            if operand.type == _REG:
                value = state.get(forward.family(operand.reg) or "")
                key = value if isinstance(value, int) else None
            elif operand.type == _MEM:
                mem = operand.mem
                base = forward.family(mem.base) if mem.base else None
                address = _memory_address(index, later, operand)
                if address in check:
                    continue  # the CFG check: returns, leaves registers alone
                if address in dispatch:
                    value = state.get("rax")
                    key = value if isinstance(value, int) else None
                elif base in state and state[base] == _TABLE and not mem.index:
                    key = _table_key(mem.disp, ptr)
            if key is not None:
                sites.append((later.address, key, mnemonic == "jmp"))
            if mnemonic == "jmp":
                break
            for family in forward.volatile:
                state.pop(family, None)
            if not state:
                break
            continue
        if mnemonic == "mov" and len(later.operands) == 2 and operand is not None:
            source = later.operands[1]
            target = forward.family(operand.reg) if operand.type == _REG else None
            if target is not None:
                value = None
                if source.type == _REG:
                    value = state.get(forward.family(source.reg) or "")
                elif source.type == _MEM and not source.mem.index and source.mem.base:
                    base = forward.family(source.mem.base)
                    if state.get(base or "") == _TABLE:
                        value = _table_key(source.mem.disp, ptr)
                if value is not None:
                    state[target] = value
                    continue
        for family in forward.written(later):
            state.pop(family, None)
        if not state:
            break


def _table_key(disp: int, ptr: int) -> int | None:
    """The key of the KMDF table entry at byte `disp` of the table, if it can be one: a
    whole pointer slot, at or after the start, within the table (a mutated or hostile
    displacement gave a key below WDF_KEY, taken for a resolved routine)."""
    if disp < 0 or disp % ptr or disp // ptr >= WDF_TABLE_SLOTS:
        return None
    return WDF_KEY + disp // ptr


def find_indirect(
    image: DriverImage,
    index: CodeIndex,
    resolver: TagResolver,
    resolver_slots: Mapping[int, bool],
    bind_slots: set[int],
    import_slots: frozenset[int],
) -> IndirectApis:
    """Every call to a pool API that goes through a resolved pointer or the KMDF table.

    `resolver_slots` are the IAT slots of the name resolvers the driver imports
    (slot -> takes a UNICODE_STRING), `bind_slots` those of `WdfVersionBind`,
    `import_slots` every IAT slot (a call to another import is not a resolver)."""
    found = IndirectApis()
    forward = _Forward(index, resolver)
    stores: list[tuple[int, int, str]] = []
    resolved = _resolve_names(image, index, forward, resolver_slots, import_slots, stores)
    tables = _wdf_tables(image, index, resolver, bind_slots) if bind_slots else []
    if not resolved and not tables:
        return found
    found.resolved = resolved
    found.wdf_tables = tables
    dispatch, check = guard_pointers(image, index)
    keys: dict[int, int | str] = {rva: rva for rva in resolved}
    keys.update({rva: _TABLE for rva in tables})
    references = data_references(image, index, keys)
    starts = [(rva, family, address) for address, rva, family in stores]
    calls = _calls_through(index, forward, references, keys, dispatch, check, starts)
    for site, key, jump in dict.fromkeys(calls):
        if key >= WDF_KEY:
            api = WDF_APIS.get(key - WDF_KEY)
        else:
            api = POOL_APIS.get(resolved.get(key, ""))
        if api is None:
            continue  # a KMDF function, or a resolved routine, that takes no tag
        found.slots[key] = api
        found.targets[site] = key
        found.sites.append(ApiSite(site, key, jump))
    return found
