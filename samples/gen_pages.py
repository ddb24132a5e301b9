"""Non-pool pages: the decoys that test a scanner's precision.

Each maker returns one 4096-byte page. They are deliberately rich in what fools naive scanners
(the words Process/Thread/File at header-like offsets, kernel pointer arrays, tag immediates in
code, tag tables in big-pool data); the caller rejects the rare page that would really pass as
a header or a pool page, so the manifest stays exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gen_common import (
    ASCII_NAMES,
    CORE_TAGS,
    PAGE,
    THIRD_PARTY_TAGS,
    WIDE_NAMES,
    Spec,
    encode_name,
    fill,
    flag_words,
    kernel_ptrs,
    small_ints,
    user_ptrs,
)

_WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "on", "with", "that", "by", "this", "from",
    "as", "at", "are", "be", "was", "it", "an", "or", "not", "object", "list", "entry",
    "kernel", "driver", "system", "memory", "handle", "table", "pool", "page", "value",
    "count", "flags", "state", "owner", "lock", "queue", "event", "timer", "device", "request",
    "status", "error", "buffer", "address", "section", "image", "module", "cache", "service",
    "registry", "key", "name", "path", "security", "token", "session", "work", "item",
    "callback", "routine", "context", "stack", "frame", "when", "each", "while", "after",
    "before", "every", "other", "new", "old", "open", "close", "read", "write", "create",
    "delete", "wait", "signal",
)  # fmt: skip
_KEYWORDS = (
    "Process", "Thread", "File", "Proc", "Thre", "Processes", "Threads", "FileObject",
    "ProcessId", "ThreadId", "Process:", "Thread:", "File:", "PROCESS", "THREAD",
)  # fmt: skip


def text_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """English-like ASCII text; many key words start at 8/16-aligned offsets or at +4 of one
    (exactly where a tag sits after a header), the classic false positive."""
    buf = bytearray()
    n = 1500
    is_kw = rng.random(n) < 0.3
    wi = rng.integers(0, len(_WORDS), n)
    ki = rng.integers(0, len(_KEYWORDS), n)
    how = rng.random(n)
    sent_len = rng.integers(5, 16, n)
    i, in_sentence, s = 0, 0, 0
    while len(buf) < PAGE:
        j = i % n
        i += 1
        if is_kw[j]:
            word = _KEYWORDS[ki[j]]
            a = how[j]
            if a < 0.5:  # align: 8 or 16 boundary, at the boundary or 4 past it
                boundary = 8 if a < 0.25 else 16
                shift = 4 if (a * 100) % 2 < 1 else 0
                buf += b" " * ((shift - len(buf)) % boundary)
        else:
            word = _WORDS[wi[j]]
        if in_sentence == 0:
            word = word[:1].upper() + word[1:]
        buf += word.encode()
        in_sentence += 1
        if in_sentence >= sent_len[s % n]:
            buf += b".\r\n" if how[j] > 0.8 else b". "
            in_sentence = 0
            s += 1
        else:
            buf += b" "
    return bytes(buf[:PAGE])


_WIDE_TEMPLATES = (
    "Process {n} exited with status 0x{h:08X}",
    "Thread {n} started in Process {name}",
    "File {path} opened by Process {n}",
    "{path}",
    "{name}",
    "ProcessId={n} ThreadId={m}",
    "Failed to open File {path}",
)


def utf16_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """UTF-16LE strings (messages, paths, names), NUL-terminated, some 8/16-aligned."""
    buf = bytearray()
    while len(buf) < PAGE:
        tpl = _WIDE_TEMPLATES[int(rng.integers(len(_WIDE_TEMPLATES)))]
        s = tpl.format(
            n=int(rng.integers(4, 20000)),
            m=int(rng.integers(4, 20000)),
            h=int(rng.integers(0, 1 << 32)),
            name=ASCII_NAMES[int(rng.integers(len(ASCII_NAMES)))],
            path=WIDE_NAMES[int(rng.integers(len(WIDE_NAMES)))],
        )
        buf += encode_name(s, True, int(rng.choice([2, 8, 16])))
    return bytes(buf[:PAGE])


# ---------------------------------------------------------------- x64 code


def _i32(v: int) -> bytes:
    return (v & 0xFFFFFFFF).to_bytes(4, "little")


def _tag_imm(rng: np.random.Generator) -> bytes:
    pool = CORE_TAGS + THIRD_PARTY_TAGS
    return pool[int(rng.integers(len(pool)))].encode()


def _rel(rng: np.random.Generator) -> bytes:
    return _i32(int(rng.integers(-0x40000, 0x40000)))


_BODY: tuple[Callable[[np.random.Generator], bytes], ...] = (
    lambda r: b"\x41\xb8" + _tag_imm(r),  # mov r8d, 'tag' (ExAllocatePoolWithTag)
    lambda r: b"\xba" + _tag_imm(r),  # mov edx, 'tag' (ExFreePoolWithTag)
    lambda r: b"\xc7\x44\x24\x20" + _tag_imm(r),  # mov dword [rsp+20h], 'tag'
    lambda r: b"\xb9" + _i32(int(r.choice([0, 1, 0x200, 0x40, 0x100]))),  # mov ecx, imm32
    lambda r: b"\xba" + _i32(int(r.integers(0x10, 0x2000))),  # mov edx, size
    lambda r: b"\x48\x8d\x15" + _rel(r),  # lea rdx, [rip+rel32]
    lambda r: b"\x48\x8d\x0d" + _rel(r),  # lea rcx, [rip+rel32]
    lambda r: b"\xe8" + _rel(r),  # call rel32
    lambda r: b"\xff\x15" + _rel(r),  # call [rip+rel32]
    lambda r: b"\x48\x8b\xc8",  # mov rcx, rax
    lambda r: b"\x48\x8b\xd8",  # mov rbx, rax
    lambda r: b"\x48\x8b\x41" + bytes([int(r.integers(0, 0x80)) & 0xF8]),  # mov rax,[rcx+d8]
    lambda r: b"\x48\x89\x43" + bytes([int(r.integers(0, 0x80)) & 0xF8]),  # mov [rbx+d8],rax
    lambda r: b"\x48\xc7\x44\x24\x28" + _i32(int(r.integers(0, 0x100))),  # mov qword [rsp+28h]
    lambda r: b"\x48\x85\xc0",  # test rax, rax
    lambda r: b"\x85\xc0",  # test eax, eax
    lambda r: bytes([int(r.choice([0x74, 0x75, 0xEB])), int(r.integers(2, 0x60))]),  # jcc rel8
    lambda r: b"\x83\xf8" + bytes([int(r.integers(0, 0x20))]),  # cmp eax, imm8
    lambda r: b"\x33\xc0",  # xor eax, eax
    lambda r: b"\x33\xd2",  # xor edx, edx
    lambda r: b"\x45\x33\xc9",  # xor r9d, r9d
    lambda r: b"\x8b\x81" + _i32(int(r.integers(0, 0x800)) & ~3),  # mov eax, [rcx+disp32]
    lambda r: b"\x0f\xb7\x41" + bytes([int(r.integers(0, 0x40)) & 0xFE]),  # movzx eax,word[]
    lambda r: b"\x0f\x1f\x44\x00\x00",  # nop dword [rax+rax]
    lambda r: b"\xb8" + _i32(int(r.choice([0xC0000001, 0xC000009A, 0xC0000022, 0]))),
)


def _function(rng: np.random.Generator) -> bytes:
    """Prologue, a body of template instructions, epilogue, int3 padding to 16 bytes."""
    frame = int(rng.choice([0x28, 0x38, 0x48, 0x58]))
    saved = [b"\x53", b"\x56", b"\x57", b"\x41\x56"][: int(rng.integers(1, 5))]
    code = bytearray(b"\x48\x89\x5c\x24\x08" if rng.random() < 0.4 else b"")
    for reg in saved:
        code += reg
    code += b"\x48\x83\xec" + bytes([frame])
    for k in rng.integers(0, len(_BODY), int(rng.integers(4, 40))).tolist():
        code += _BODY[k](rng)
    code += b"\x48\x83\xc4" + bytes([frame])
    for reg in reversed(saved):
        code += reg[:-1] + bytes([reg[-1] + 8])  # push r -> pop r
    code += b"\xc3"
    code += b"\xcc" * (-len(code) % 16)
    return bytes(code)


def code_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """x64 machine code: functions back to back, as in a driver's .text section."""
    buf = bytearray()
    while len(buf) < PAGE:
        buf += _function(rng)
    return bytes(buf[:PAGE])


# ---------------------------------------------------------------- data pages


def _words_to_page(vals: np.ndarray, spec: Spec) -> bytes:
    dtype = "<u4" if spec.x86 else "<u8"
    return vals.astype(dtype).tobytes()[:PAGE]


def pointer_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """Arrays of kernel pointers (LIST_ENTRY pairs, pointer tables) and some user pointers."""
    n = PAGE // spec.ptr_size
    runs = n // 4 + 1
    kinds = rng.choice(5, size=runs, p=[0.62, 0.14, 0.12, 0.07, 0.05])
    seq = np.resize(np.repeat(kinds, rng.integers(1, 9, size=runs)), n)
    vals = np.zeros(n, dtype=np.uint64)
    makers = (
        lambda k: kernel_ptrs(rng, spec, k, align16=0.85),
        lambda k: user_ptrs(rng, spec, k),
        None,
        lambda k: small_ints(rng, k),
        lambda k: flag_words(rng, spec, k),
    )
    for kind, make in enumerate(makers):
        where = np.flatnonzero(seq == kind)
        if make is not None and len(where):
            vals[where] = make(len(where))
    return _words_to_page(vals, spec)


def random_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """Compressed or encrypted data."""
    return rng.bytes(PAGE)


def zero_page(rng: np.random.Generator, spec: Spec) -> bytes:
    return bytes(PAGE)


_PTE_FLAGS = np.array([0x863, 0x867, 0x963, 0x121, 0x025, 0x8A1, 0x005], dtype=np.uint64)
_SOFT_PTE = np.array([0x80, 0x4C0, 0x880, 0x3E0], dtype=np.uint64)


def page_table_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """512 PAE/x64 PTEs: runs of valid entries over consecutive frames, empty and paged-out ones."""
    vals = np.zeros(512, dtype=np.uint64)
    i = 0
    while i < 512:
        run = min(int(rng.integers(1, 64)), 512 - i)
        kind = rng.random()
        if kind < 0.6:
            pfn = int(rng.integers(0x1000, 0x7FFFFF))
            flags = _PTE_FLAGS[int(rng.integers(len(_PTE_FLAGS)))]
            nx = np.uint64(1 << 63) if rng.random() < 0.7 else np.uint64(0)
            frames = np.arange(pfn, pfn + run, dtype=np.uint64) << np.uint64(12)
            vals[i : i + run] = nx | frames | flags
        elif kind < 0.85:
            pass  # not present
        else:
            slot = rng.integers(1, 0x100000, run).astype(np.uint64) << np.uint64(32)
            vals[i : i + run] = slot | _SOFT_PTE[int(rng.integers(len(_SOFT_PTE)))]
        i += run
    return vals.astype("<u8").tobytes()


def big_pool_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """One page of a large (page-aligned, header-less) allocation in one of four shapes."""
    style = int(rng.integers(4))
    ps = spec.ptr_size
    if style == 0:  # pool tracker table: tag + alloc/free counts + bytes, full of real tags
        buf = bytearray()
        tags = CORE_TAGS + THIRD_PARTY_TAGS
        while len(buf) < PAGE:
            tag = tags[int(rng.integers(len(tags)))].encode()
            na, nf = int(rng.integers(0, 1 << 20)), int(rng.integers(0, 1 << 20))
            pa, pf = int(rng.integers(0, 1 << 20)), int(rng.integers(0, 1 << 20))
            nb, pb = int(rng.integers(0, 1 << 26)), int(rng.integers(0, 1 << 26))
            if ps == 4:
                buf += tag + np.array([na, nf, nb, pa, pf, pb], "<u4").tobytes()
            else:
                buf += tag + np.array([na, nf, 0], "<u4").tobytes() + nb.to_bytes(8, "little")
                buf += np.array([pa, pf], "<u4").tobytes() + pb.to_bytes(8, "little")
        return bytes(buf[:PAGE])
    if style == 1:  # array of one structure: template of field kinds repeated
        fields = rng.integers(0, 4, int(rng.integers(3, 12)))
        n = PAGE // ps
        reps = -(-n // len(fields))
        kinds = np.tile(fields, reps)[:n]
        vals = np.zeros(n, dtype=np.uint64)
        for kind, make in enumerate(
            (None, lambda k: kernel_ptrs(rng, spec, k), lambda k: small_ints(rng, k),
             lambda k: flag_words(rng, spec, k))
        ):  # fmt: skip
            where = np.flatnonzero(kinds == kind)
            if make is not None and len(where):
                vals[where] = make(len(where))
        return _words_to_page(vals, spec)
    if style == 2:  # sparse: mostly zero, a few values
        buf = np.zeros(PAGE, dtype=np.uint8)
        for _ in range(int(rng.integers(4, 40))):
            at = int(rng.integers(0, PAGE // 64)) * 64
            buf[at : at + 64] = fill(rng, spec, 64, names=0.5)
        return buf.tobytes()
    # byte map: runs of 0xFF / 0x00 / small bytes (bitmaps, reference counts)
    out = bytearray()
    while len(out) < PAGE:
        run = int(rng.integers(8, 256))
        v = rng.random()
        out += (
            b"\xff" if v < 0.35 else b"\x00" if v < 0.7 else bytes([int(rng.integers(1, 9))])
        ) * run
    return bytes(out[:PAGE])


def pointer_text_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """Runs of page-aligned kernel pointers (section and MDL arrays) followed by ASCII:
    what a big-page table's Va and Key columns look like to a careless scanner."""
    out = bytearray()
    while len(out) < PAGE:
        vals = kernel_ptrs(rng, spec, int(rng.integers(2, 12))) & ~np.uint64(0xFFF)
        out += _words_to_page(vals, spec)[: len(vals) * spec.ptr_size]
        out += text_page(rng, spec)[: int(rng.integers(8, 120))]
    return bytes(out[:PAGE])


def handle_table_page(rng: np.random.Generator, spec: Spec) -> bytes:
    """A handle table page: {object pointer with attribute bits, granted access} entries."""
    n = PAGE // (2 * spec.ptr_size)
    obj = kernel_ptrs(rng, spec, n, align16=1.0)
    if not spec.x86:  # Windows 8+: the pointer shifted left by 16, lock and audit bits
        obj = (obj << np.uint64(16)) | rng.integers(0, 8, n).astype(np.uint64) | np.uint64(1)
    else:
        obj = obj | rng.integers(0, 8, n).astype(np.uint64)
    access = flag_words(rng, spec, n)
    empty = rng.random(n) < 0.3
    obj[empty] = 0
    access[empty] = 0
    vals = np.empty(2 * n, np.uint64)
    vals[0::2], vals[1::2] = obj, access
    return _words_to_page(vals, spec)


NON_POOL_MAKERS: dict[str, Callable[[np.random.Generator, Spec], bytes]] = {
    "text": text_page,
    "utf16": utf16_page,
    "code-x64": code_page,
    "pointers": pointer_page,
    "random": random_page,
    "zeros": zero_page,
    "page-table": page_table_page,
    "big-pool": big_pool_page,
    "pointer-text": pointer_text_page,
    "handle-table": handle_table_page,
}
# Share of the non-pool pages per kind.
NON_POOL_WEIGHTS: dict[str, float] = {
    "text": 0.14, "utf16": 0.10, "code-x64": 0.15, "pointers": 0.16, "random": 0.09,
    "zeros": 0.12, "page-table": 0.06, "big-pool": 0.12, "pointer-text": 0.03,
    "handle-table": 0.03,
}  # fmt: skip
