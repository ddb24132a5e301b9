"""Sample images whose `Proc`/`Thre`/`Driv`/`File`/`Muta` blocks hold real object layouts.

`build_objects(build)` writes a small raw physical image (legacy pool pages, real kernel
page tables mapping the image at a kernel address) in which every object block is laid
out as Windows lays it out for that build: POOL_HEADER, the optional object headers the
OBJECT_HEADER's InfoMask announces, the OBJECT_HEADER, then the body with its fields at the
build's public offsets (`pooltagscan.objects.offsets`, facts from public symbol dumps).
Processes are chained by ActiveProcessLinks through a list head outside any `Proc` block;
one allocated process is unlinked (its neighbours skip it, as a DKOM rootkit leaves them)
and one is in a freed block. FILE_OBJECT and DRIVER_OBJECT names and mutant names are
UNICODE_STRINGs whose buffers lie in another page, reached through the page tables; one
file's buffer pointer leads to an unmapped address (its name cannot be decided). The
manifest lists every object block with the fields a decoder must find.

Builds: "win7sp1-x64", "win7sp1-x86", "win10-1809-x64". Same arguments, same bytes.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

PAGE = 4096
FILETIME_2019 = 131908896000000000  # 2019-01-01T00:00:00Z
BUILDS = {
    "win7sp1-x64": ("Windows 7 SP1 x64 (6.1.7601)", "x64", True),
    "win7sp1-x86": ("Windows 7 SP1 x86 (6.1.7601)", "x86", True),
    "win10-1809-x64": ("Windows 10 1809 x64 (10.0.17763)", "x64", False),
}
WINDOW = {"x64": 0xFFFF_C081_4000_0000, "x86": 0xC100_0000}
# (name, pid, ppid, state, linked)
PROCESSES = (
    ("System", 4, 0, "allocated", True),
    ("smss.exe", 268, 4, "allocated", True),
    ("csrss.exe", 356, 344, "allocated", True),
    ("wininit.exe", 408, 344, "allocated", True),
    ("services.exe", 504, 408, "allocated", True),
    ("lsass.exe", 512, 408, "allocated", True),
    ("evil.exe", 2208, 504, "allocated", False),  # unlinked by its neighbours
    ("explorer.exe", 1620, 1596, "allocated", True),
    ("oldtool.exe", 1812, 1620, "free", False),  # exited and freed
)
THREADS = ((4, 8), (4, 12), (268, 272), (356, 360), (504, 508), (2208, 2212), (1620, 1624))
DRIVERS = (("\\Driver\\Tcpip", "allocated"), ("\\Driver\\Ntfs", "allocated"),
           ("\\Driver\\rootkit", "free"))  # fmt: skip
FILES = ("\\Windows\\System32\\config\\SYSTEM", "\\Users\\admin\\Desktop\\notes.txt", None)
MUTANTS = ("ShimCacheMutex", None)


def _pool_header(x86: bool, prev: int, bs: int, ptype: int, tag: bytes) -> bytes:
    if x86:
        return struct.pack("<HH", prev, bs | ptype << 9) + tag
    return bytes((prev, 0, bs, ptype)) + tag + bytes(8)


def build_objects(build: str) -> tuple[bytes, dict[str, Any]]:
    """(image, manifest) of one build (see the module docstring)."""
    from pooltagscan.objects.offsets import ARCH, builds_for

    title, arch, protected = BUILDS[build]
    facts = ARCH[arch]
    offs = next(b for b in builds_for(arch) if b.name == title)
    x86 = arch == "x86"
    ptr, unit = facts.ptr, (8 if x86 else 16)
    pfmt = "<I" if x86 else "<Q"
    rng = np.random.default_rng(sum(build.encode()))
    pages = 96
    image = bytearray(pages * PAGE)
    window = WINDOW[arch]
    next_page = [8]  # pages 1..7: page tables

    def va(phys: int) -> int:
        return window + phys

    def put(at: int, fmt: str, value: int) -> None:
        struct.pack_into(fmt, image, at, value)

    def ptr_at(at: int, value: int) -> None:
        put(at, pfmt, value)

    # Name buffers: one page of UTF-16 strings.
    names_page = next_page[0] * PAGE
    next_page[0] += 1
    cursor = [names_page + 0x40]

    def string(text: str) -> tuple[int, int]:
        raw = text.encode("utf-16-le")
        at = cursor[0]
        image[at : at + len(raw) + 2] = raw + b"\0\0"
        cursor[0] += len(raw) + 2 + (-(len(raw) + 2) % 8)
        return va(at), len(raw)

    def unicode(at: int, text: str | None, bogus: bool = False) -> None:
        if text is None and not bogus:
            return
        if bogus:
            buffer, length = (0xFFFF_F6FB_0000_0000 if not x86 else 0xE000_0000), 40
        else:
            buffer, length = string(text)
        put(at, "<H", length)
        put(at + 2, "<H", length + 2)
        ptr_at(at + ptr, buffer)

    objects: list[dict[str, Any]] = []

    def block(tag: str, kind: str, body_size: int, mask: int, free: bool) -> tuple[int, int]:
        """A pool page whose first block is an object; (block address, body address)."""
        page = next_page[0] * PAGE
        next_page[0] += 1
        opt = sum(s for bit, s in enumerate(facts.optional) if mask >> bit & 1)
        size = unit + opt + facts.header_body + body_size
        size += -size % unit
        bs = size // unit
        rest = PAGE // unit - bs
        stored = tag.encode()
        if protected:
            stored = stored[:3] + bytes([stored[3] | 0x80])
        ptype = 0 if free else 2  # nonpaged, in use or free (Vista+ encoding)
        image[page : page + size] = bytes(size)
        image[page : page + unit] = _pool_header(x86, 0, bs, ptype, stored)
        filler = page + size
        image[filler : filler + unit] = _pool_header(x86, bs, rest, 2, b"Ntfx")
        image[filler + unit : page + PAGE] = rng.integers(0, 256, PAGE - size - unit,
                                                          dtype=np.uint8).tobytes()  # fmt: skip
        # The optional headers hold counts and pointers (never all zero).
        image[page + unit : page + unit + opt] = rng.integers(1, 256, opt, dtype=np.uint8).tobytes()
        header = page + unit + opt
        ptr_at(header, 3)  # PointerCount
        ptr_at(header + ptr, 1)  # HandleCount
        image[header + facts.info_mask - 2] = 7 + len(objects) % 30  # TypeIndex
        image[header + facts.info_mask] = mask
        objects.append({"offset": page, "tag": tag, "object": kind,
                        "state": "free" if free else "allocated"})  # fmt: skip
        return page, header + facts.header_body

    # Processes, then their ActiveProcessLinks.
    head = names_page + 0x10  # PsActiveProcessHead: outside any Proc block
    bodies = []
    for i, (name, pid, ppid, state, _linked) in enumerate(PROCESSES):
        _, body = block("Proc", "process", offs.process_size, 0x08, state == "free")
        p = offs.process
        image[body + p["name"] : body + p["name"] + len(name)] = name.encode()
        ptr_at(body + p["pid"], pid)
        ptr_at(body + p["ppid"], ppid)
        created = FILETIME_2019 + (i + 1) * 36_000_000_000
        put(body + p["create_time"], "<Q", created)
        exited = created + 600_000_000 if state == "free" else 0
        put(body + p["exit_time"], "<Q", exited)
        objects[-1] |= {"name": name, "pid": pid, "ppid": ppid, "create_time": created,
                        "exit_time": exited or None}  # fmt: skip
        bodies.append(body)
    chain = [head] + [b + offs.process["links"] for b, p in zip(bodies, PROCESSES) if p[4]]
    for k, entry in enumerate(chain):
        ptr_at(entry, va(chain[(k + 1) % len(chain)]))
        ptr_at(entry + ptr, va(chain[k - 1]))
    for body, proc in zip(bodies, PROCESSES):
        if proc[4]:
            continue
        # Still pointing at its old neighbours (the unlinked one) or at stale ones (freed).
        entry = body + offs.process["links"]
        ptr_at(entry, va(chain[2]))
        ptr_at(entry + ptr, va(chain[1]))
    for obj, proc in zip(objects, PROCESSES):
        obj["linked"] = proc[4]

    for pid, tid in THREADS:
        _, body = block("Thre", "thread", offs.thread_size, 0x08, False)
        ptr_at(body + offs.thread["cid"], pid)
        ptr_at(body + offs.thread["cid"] + ptr, tid)
        start = (0xFFFF_F800_0290_0000 if not x86 else 0x8280_0000) + tid * 0x10
        ptr_at(body + offs.thread["start"], start)
        objects[-1] |= {"tid": tid, "pid": pid, "start": start}

    d = facts.driver
    for i, (name, state) in enumerate(DRIVERS):
        _, body = block("Driv", "driver", d["size"], 0x02, state == "free")
        put(body, "<H", 4)
        put(body + 2, "<H", d["size"])
        base = (0xFFFF_F880_0140_0000 if not x86 else 0x8B40_0000) + i * 0x20_0000
        ptr_at(body + d["start"], base)
        put(body + d["image_size"], "<I", 0x1000 * (40 + i))
        unicode(body + d["name"], name)
        # The object manager's own name: the last component.
        unicode(body - facts.header_body - facts.optional[1] + facts.name_info_name,
                name.rsplit("\\", 1)[-1])  # fmt: skip
        objects[-1] |= {"name": name, "image_base": base, "image_size": 0x1000 * (40 + i)}

    f = facts.file
    for name in FILES:
        _, body = block("File", "file", f["size"], 0x00, False)
        put(body, "<H", 5)
        put(body + 2, "<H", f["size"])
        unicode(body + f["name"], name, bogus=name is None)
        objects[-1]["name"] = name or ""

    for name in MUTANTS:
        mask = 0x0A if name else 0x08
        _, body = block("Muta", "mutant", 0x40 if not x86 else 0x20, mask, False)
        if name:
            header = body - facts.header_body
            unicode(header - facts.optional[1] + facts.name_info_name, name)
        objects[-1]["name"] = name or ""

    # Plain pool pages of other tags so the layout is detected like a real dump's.
    while next_page[0] < pages - 8:
        page = next_page[0] * PAGE
        next_page[0] += 1
        sizes, left = [], PAGE // unit
        while left:
            bs = min(left, int(rng.integers(3, 40)))
            bs = left if left - bs < 3 else bs
            sizes.append(bs)
            left -= bs
        at, prev = page, 0
        for bs in sizes:
            image[at : at + unit] = _pool_header(x86, prev, bs, 2 | int(rng.integers(0, 2)),
                                                 (b"MmCa", b"Vad ", b"Irp ")[at % 3])  # fmt: skip
            image[at + unit : at + bs * unit] = rng.integers(0, 256, bs * unit - unit,
                                                             dtype=np.uint8).tobytes()  # fmt: skip
            prev, at = bs, at + bs * unit

    tables = _page_tables(image, arch, window)
    return bytes(image), {"build": title, "arch": arch, "window": window, **tables,
                          "objects": objects}  # fmt: skip


def _page_tables(image: bytearray, arch: str, window: int) -> dict[str, Any]:
    """Map the whole image at `window` with large pages; self-map as Windows does."""
    rw, large = 0x63, 0x80
    if arch == "x64":
        pml4, pdpt, pd = 1 * PAGE, 2 * PAGE, 3 * PAGE
        struct.pack_into("<Q", image, pml4 + 0x1ED * 8, pml4 | rw)  # Windows 7's self-map
        for index in (0x181, 0x1F0):
            struct.pack_into("<Q", image, pml4 + index * 8, pdpt | rw)
        struct.pack_into("<Q", image, pdpt + ((window >> 30) & 0x1FF) * 8, pd | rw)
        struct.pack_into("<Q", image, pd + ((window >> 21) & 0x1FF) * 8, 0 | rw | large)
        return {"paging": "x64", "dtb": pml4}
    pdpt, pds = 1 * PAGE, [2 * PAGE, 3 * PAGE, 4 * PAGE, 5 * PAGE]
    for i, pd in enumerate(pds):
        struct.pack_into("<Q", image, pdpt + i * 8, pd | 1)
        struct.pack_into("<Q", image, pds[3] + i * 8, pd | rw)  # PD3[0..3]: the self-map
    for k in range(4):  # the window and three more 2 MiB pages of the kernel half
        struct.pack_into("<Q", image, pds[3] + (((window >> 21) & 0x1FF) + k) * 8,
                         (k * (1 << 21)) | rw | large)  # fmt: skip
    return {"paging": "x86-pae", "dtb": pdpt}
