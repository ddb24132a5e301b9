"""Names and ids of the objects in `Proc`/`Thre`/`Driv`/`File`/`Muta` blocks, without symbols.

A step after the scan and before the renderers: the records of these tags (a minority of
any dump) are read again, block by block, and decoded.

1. Find the object body the way pool scanners do (Volatility's psscan and its kin): after
   the POOL_HEADER come the optional object headers, then the OBJECT_HEADER, then the body.
   The OBJECT_HEADER's InfoMask says which optional headers precede it, so the first
   position at which the headers InfoMask announces fill exactly the gap from the pool
   header is the OBJECT_HEADER (`locate`).
2. Offsets inside the body: DRIVER_OBJECT and FILE_OBJECT are documented (wdm.h) and carry
   their own Type and Size, so they identify themselves. EPROCESS and ETHREAD change per
   build: `calibrate` tries the public per-build table (`offsets.BUILDS`) against every
   block of the tag and, when no build fits, learns the offsets from the blocks themselves
   by consistency (a printable NUL-terminated name at the same offset in every block, PIDs
   that are small multiples of 4 and unique, list links that point into other `Proc`
   blocks, creation times in a plausible FILETIME range, thread Cids whose PID is one of the
   processes'). The metadata says which method decided each tag.
3. Strings whose buffer is elsewhere (UNICODE_STRING) are read through the kernel address
   space; every Length, MaximumLength and pointer is checked before it drives a read, and
   a name that cannot be decided stays empty: never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pooltagscan.objects.offsets import (
    ARCH,
    DRIVER_TYPE,
    FILE_TYPE,
    INFO_PADDING,
    ArchFacts,
    Build,
    builds_for,
    name_info_offset,
    optional_size,
)

PAGE = 4096
# Tags (protected bit cleared) -> object kind.
KINDS = {"Proc": "process", "Thre": "thread", "Driv": "driver", "File": "file", "Muta": "mutant"}
# Fields each kind adds to its records, in output order.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "process": ("name", "pid", "ppid", "create_time", "exit_time", "linked"),
    "thread": ("tid", "pid", "start"),
    "driver": ("name", "image_base", "image_size"),
    "file": ("name",),
    "mutant": ("name",),
}
# Every object field, in the order of a csv row (`object` names the kind).
OBJECT_FIELDS = (
    "object",
    "name",
    "pid",
    "ppid",
    "tid",
    "start",
    "create_time",
    "exit_time",
    "image_base",
    "image_size",
    "linked",
)
MAX_ID = 1 << 24  # PIDs and TIDs are handle-table indexes: far below this
MAX_STRING = 0x2000  # bytes of a UNICODE_STRING we read (NT paths stop at 32 KiB; names far less)
MAX_PADDING = 0x100
# FILETIMEs (100 ns since 1601) from 2000-01-01 to 2040-01-01: a live system's times.
FILETIME_MIN, FILETIME_MAX = 125911584000000000, 138534624000000000
MIN_AGREE = 2  # blocks that must agree before an offset is learned from the dump
PUBLIC, SELF, DOCUMENTED = "public offsets", "self-calibrated", "documented layout"

ReadVirtual = Callable[[int, int], bytes | None]
Resolve = Callable[[int], int | None]


@dataclass
class Block:
    """One object-tag block: where it is, its bytes, and where its body starts."""

    offset: int  # POOL_HEADER address in the scanned space
    tag: str
    state: str
    data: bytes  # from the POOL_HEADER, bounded by the block and its page
    header: int | None = None  # OBJECT_HEADER position in data
    mask: int = 0


def _u(data: bytes, at: int, size: int) -> int | None:
    """A little-endian unsigned value, or None when the block is too short."""
    if at < 0 or at + size > len(data):
        return None
    return int.from_bytes(data[at : at + size], "little")


def locate(data: bytes, unit: int, facts: ArchFacts) -> tuple[int, int] | None:
    """(OBJECT_HEADER position, InfoMask) in a block that starts with its POOL_HEADER.

    Positions after the pool header are tried in order; one is taken when the optional
    headers its InfoMask announces (and the padding info says) end exactly there, its
    TypeIndex is not 0, its counts are in range, and a body fits after it."""
    limit = unit + sum(facts.optional) + MAX_PADDING
    for at in range(unit, min(limit, len(data) - facts.header_body) + 1, facts.ptr):
        mask = data[at + facts.info_mask]
        need = optional_size(facts, mask)
        if mask & INFO_PADDING:
            pad = _u(data, at - need - 4, 4)
            if pad is None or pad > MAX_PADDING:
                continue
            need += pad
        if unit + need != at:
            continue
        if not data[at + facts.info_mask - 2]:  # TypeIndex 0 is no type (raw or encoded)
            continue
        pointers = _u(data, at, facts.ptr)
        handles = _u(data, at + facts.ptr, facts.ptr)
        if pointers is None or handles is None or handles >= MAX_ID or pointers >= 1 << 40:
            continue
        return at, mask
    return None


def filetime(value: int | None) -> str | None:
    """ISO 8601 (UTC) of a plausible FILETIME, None for zero or an implausible value."""
    if value is None or not FILETIME_MIN <= value <= FILETIME_MAX:
        return None
    when = datetime(1601, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=value // 10)
    return when.isoformat().replace("+00:00", "Z")


def image_name(data: bytes, at: int) -> str | None:
    """The 15-byte ImageFileName at `at`: printable ASCII then NUL padding, else None."""
    raw = data[at : at + 15]
    if len(raw) < 15:
        return None
    text = raw.split(b"\0", 1)[0]
    if not text or any(b < 0x20 or b > 0x7E for b in text):
        return None
    if any(raw[len(text) :]):  # what follows the NUL is padding
        return None
    return text.decode("ascii")


def valid_id(value: int | None) -> bool:
    return value is not None and 0 < value < MAX_ID and value % 4 == 0


def unicode_string(data: bytes, at: int, facts: ArchFacts, read: ReadVirtual | None) -> str | None:
    """The text of the UNICODE_STRING at `at` in `data`, read through `read` (kernel
    virtual memory); None when any part of it is implausible or not in the dump."""
    length, maximum = _u(data, at, 2), _u(data, at + 2, 2)
    buffer = _u(data, at + facts.ptr, facts.ptr)
    if length is None or maximum is None or buffer is None or read is None:
        return None
    if not 0 < length <= maximum or length % 2 or length > MAX_STRING or buffer % 2:
        return None
    if buffer < (
        1 << 63 if facts.ptr == 8 else 1 << 31
    ):  # a kernel object's name is in kernel space
        return None
    raw = read(buffer, length)
    if raw is None or len(raw) != length:
        return None
    try:
        text = raw.decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return None
    return text


# ---------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """How one tag's offsets were decided, for the scan metadata."""

    kind: str
    method: str | None = None
    build: str | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    blocks: int = 0  # blocks of the tag read
    located: int = 0  # ... whose OBJECT_HEADER was found
    decoded: int = 0  # ... that gave a valid object
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": self.kind,
            "method": self.method,
            "blocks": self.blocks,
            "located": self.located,
            "decoded": self.decoded,
        }
        if self.build:
            out["build"] = self.build
        if self.offsets:
            out["offsets"] = {k: self.offsets[k] for k in sorted(self.offsets)}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _process_ok(body: bytes, offs: dict[str, int], ptr: int) -> bool:
    return image_name(body, offs["name"]) is not None and valid_id(_u(body, offs["pid"], ptr))


def _best(counts: dict[int, int]) -> int | None:
    """The offset most blocks agree on (the lowest of a tie), if at least MIN_AGREE do."""
    if not counts:
        return None
    top = max(counts.values())
    if top < MIN_AGREE:
        return None
    return min(o for o, c in counts.items() if c == top)


def self_calibrate_process(
    bodies: list[tuple[int, bytes]], ptr: int, resolve: Resolve | None
) -> dict[str, int]:
    """EPROCESS offsets learned from the blocks alone (see the module docstring).
    `bodies` are (body address in the scanned space, body bytes)."""
    found: dict[str, int] = {}
    longest = max((len(b) for _, b in bodies), default=0)
    names: dict[int, int] = {}
    for o in range(max(0, longest - 15)):
        n = sum(1 for _, b in bodies if image_name(b, o) is not None)
        if n:
            names[o] = n
    name = _best(names)
    if name is None:
        return found
    found["name"] = name
    named = [(a, b) for a, b in bodies if image_name(b, name) is not None]
    pids: dict[int, int] = {}
    for o in range(0, longest - ptr + 1, ptr):
        if name - ptr < o < name + 15:
            continue
        values = [_u(b, o, ptr) for _, b in named]
        good = [v for v in values if valid_id(v)]
        if len(good) == len(set(good)):  # PIDs are unique among live processes
            pids[o] = len(good)
    pid = _best(pids)
    if pid is None:
        return found
    found["pid"] = pid
    known = {_u(b, pid, ptr) for _, b in named} - {None}
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    links: dict[int, int] = {}
    link_targets = {a for a, _ in named}
    for o in range(0, longest - ptr + 1, ptr):
        if o == pid or name - ptr < o < name + 15:
            continue
        parents[o] = sum(
            1 for _, b in named if (v := _u(b, o, ptr)) in known and v != _u(b, pid, ptr)
        )
        if o % 8 == 0:
            times[o] = sum(1 for _, b in named if filetime(_u(b, o, 8)) is not None)
        if resolve is not None:
            n = 0
            for a, b in named:
                flink = _u(b, o, ptr)
                where = resolve(flink) if flink else None
                if where is not None and where - o in link_targets and where - o != a:
                    n += 1
            links[o] = n
    for key, counts in (("ppid", parents), ("create_time", times), ("links", links)):
        best = _best(counts)
        if best is not None:
            found[key] = best
    return found


def self_calibrate_thread(bodies: list[bytes], ptr: int, pids: set[int]) -> dict[str, int]:
    """The ETHREAD Cid (UniqueProcess, UniqueThread) offset learned from the blocks: a
    pair of ids whose process id is one of the processes found (when any were) and whose
    thread ids are unique."""
    longest = max((len(b) for b in bodies), default=0)
    counts: dict[int, int] = {}
    for o in range(0, longest - 2 * ptr + 1, ptr):
        pairs = [(_u(b, o, ptr), _u(b, o + ptr, ptr)) for b in bodies]
        good = [(p, t) for p, t in pairs if valid_id(p) and valid_id(t) and (not pids or p in pids)]
        tids = [t for _, t in good]
        if len(tids) == len(set(tids)):
            counts[o] = len(good)
    cid = _best(counts)
    return {} if cid is None else {"cid": cid}


# ---------------------------------------------------------------- the decoder


@dataclass
class ObjectResult:
    """Decoded fields per block offset, and how each tag was calibrated."""

    fields: dict[int, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Calibration] = field(default_factory=dict)
    states: dict[int, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {tag: c.as_dict() for tag, c in sorted(self.calibration.items())}


def _pick_build(
    builds: Iterable[Build], bodies: list[bytes], ptr: int, part: str
) -> tuple[Build | None, int]:
    """The table build whose offsets decode the most blocks (None when none decodes two)."""
    best, score = None, 0
    for build in builds:
        if part == "process":
            n = sum(1 for b in bodies if _process_ok(b, build.process, ptr))
        else:
            cid = build.thread["cid"]
            n = sum(
                1 for b in bodies if valid_id(_u(b, cid, ptr)) and valid_id(_u(b, cid + ptr, ptr))
            )
        if n > score:
            best, score = build, n
    return (best, score) if score >= MIN_AGREE else (None, score)


def _calibrate(
    cal: Calibration,
    method: str,
    arch: str,
    bodies: list[bytes],
    ptr: int,
    part: str,
    learn: Callable[[], dict[str, int]],
    what: str,
) -> dict[str, int]:
    """Offsets for one kind of object, recorded in `cal`: the public table's build that
    decodes the blocks (`method` auto or table), else what `learn` finds in the blocks
    themselves (auto or self), else none, with a note that `what` stay empty."""
    offsets: dict[str, int] = {}
    if method in ("auto", "table"):
        build, _ = _pick_build(builds_for(arch), bodies, ptr, part)
        if build is not None:
            offsets = dict(getattr(build, part))
            cal.method, cal.build = PUBLIC, build.name
    if not offsets and method in ("auto", "self"):
        offsets = learn()
        if offsets:
            cal.method = SELF
    if not offsets:
        cal.notes.append(f"no offsets fit the blocks: {what} left empty")
    cal.offsets = offsets
    return offsets


def decode(
    blocks: list[Block],
    arch: str,
    unit: int,
    read: ReadVirtual | None,
    resolve: Resolve | None,
    method: str = "auto",
) -> ObjectResult:
    """Decode every block (see the module docstring). `arch` is "x64" (also ARM64: the
    same 64-bit object headers) or "x86"; `unit` the POOL_HEADER size; `read` reads
    kernel virtual memory (None: strings elsewhere stay empty); `resolve` turns a kernel
    virtual address into one of the scanned space (None: list links are not followed);
    `method`: "auto" (the public table, else self-calibration), "table" or "self"."""
    facts = ARCH[arch]
    ptr = facts.ptr
    result = ObjectResult()
    by_kind: dict[str, list[tuple[Block, bytes, int]]] = {}
    for block in blocks:
        kind = KINDS.get(block.tag)
        if kind is None:
            continue
        cal = result.calibration.setdefault(block.tag, Calibration(kind))
        cal.blocks += 1
        found = locate(block.data, unit, facts)
        if found is None:
            continue
        cal.located += 1
        block.header, block.mask = found
        at = block.header + facts.header_body
        by_kind.setdefault(kind, []).append((block, block.data[at:], block.offset + at))
        result.states[block.offset] = block.state

    def put(block: Block, kind: str, values: dict[str, Any]) -> None:
        result.fields[block.offset] = {"object": kind, **values}
        result.calibration[block.tag].decoded += 1

    def object_name(block: Block) -> str | None:
        below = name_info_offset(facts, block.mask)
        if below is None or block.header is None:
            return None
        return unicode_string(block.data, block.header - below + facts.name_info_name, facts, read)

    # Processes.
    procs = by_kind.get("process", [])
    pids: set[int] = set()
    if procs:
        cal = result.calibration[procs[0][0].tag]

        def learn_process() -> dict[str, int]:
            offs = self_calibrate_process([(a, b) for _, b, a in procs], ptr, resolve)
            return offs if "name" in offs and "pid" in offs else {}

        offs = _calibrate(cal, method, arch, [b for _, b, _ in procs], ptr, "process",
                          learn_process, "names")  # fmt: skip
        if offs:
            bodies_at = {a for _, _, a in procs}
            pointed: set[int] = set()
            link = offs.get("links")
            if link is not None and resolve is not None:
                for _, body, addr in procs:
                    for value in (_u(body, link, ptr), _u(body, link + ptr, ptr)):
                        where = resolve(value) if value else None
                        if where is not None and where - link in bodies_at and where - link != addr:
                            pointed.add(where - link)
            elif link is not None:
                cal.notes.append("no kernel address space: list links not followed")
            for block, body, addr in procs:
                if not _process_ok(body, offs, ptr):
                    continue
                pid = _u(body, offs["pid"], ptr)
                ppid = _u(body, offs["ppid"], ptr) if "ppid" in offs else None
                values = {
                    "name": image_name(body, offs["name"]) or "",
                    "pid": pid,
                    "ppid": ppid if ppid is not None and ppid < MAX_ID and ppid % 4 == 0 else None,
                    "create_time": filetime(_u(body, offs["create_time"], 8))
                    if "create_time" in offs
                    else None,
                    "exit_time": filetime(_u(body, offs["exit_time"], 8))
                    if "exit_time" in offs
                    else None,
                    "linked": (addr in pointed)
                    if link is not None and resolve is not None
                    else None,
                }
                pids.add(pid)
                put(block, "process", values)

    # Threads.
    threads = by_kind.get("thread", [])
    if threads:
        cal = result.calibration[threads[0][0].tag]
        bodies = [b for _, b, _ in threads]
        toffs = _calibrate(cal, method, arch, bodies, ptr, "thread",
                           lambda: self_calibrate_thread(bodies, ptr, pids), "ids")  # fmt: skip
        if toffs:
            cid = toffs["cid"]
            for block, body, _ in threads:
                pid, tid = _u(body, cid, ptr), _u(body, cid + ptr, ptr)
                if not (valid_id(pid) and valid_id(tid)):
                    continue
                start = _u(body, toffs["start"], ptr) if "start" in toffs else None
                put(block, "thread", {"tid": tid, "pid": pid, "start": start or None})

    # Drivers and files: documented layouts that say what they are.
    for kind, layout, type_code in (
        ("driver", facts.driver, DRIVER_TYPE),
        ("file", facts.file, FILE_TYPE),
    ):
        items = by_kind.get(kind, [])
        if not items:
            continue
        cal = result.calibration[items[0][0].tag]
        cal.method = DOCUMENTED
        cal.offsets = dict(layout)
        for block, body, _ in items:
            if _u(body, 0, 2) != type_code or _u(body, 2, 2) != layout["size"]:
                continue
            name = unicode_string(body, layout["name"], facts, read) or ""
            if kind == "file":
                put(block, kind, {"name": name})
            else:
                put(
                    block,
                    kind,
                    {
                        "name": name,
                        "image_base": _u(body, layout["start"], ptr) or None,
                        "image_size": _u(body, layout["image_size"], 4) or None,
                    },
                )
        if read is None:
            cal.notes.append("no kernel address space: names held elsewhere left empty")

    # Mutants: only the object manager's name info.
    for block, _, _ in by_kind.get("mutant", []):
        cal = result.calibration[block.tag]
        cal.method = DOCUMENTED
        name = object_name(block)
        put(block, "mutant", {"name": name or ""})
    return result
