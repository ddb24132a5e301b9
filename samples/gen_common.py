"""Shared pieces of the sample generator: family specs, tags, value makers, the data filler and
the header predicates that both the generator and its self-check rely on.

Everything draws from a caller-provided numpy Generator so images are reproducible.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

PAGE = 4096


@dataclass(frozen=True)
class Spec:
    """One sample family: header layout, PoolType encoding and what its pointers look like."""

    name: str
    layout: str  # "x86" | "x64" | "x64-segment-heap"
    encoding: str  # "xp" | "vista" | "segment-heap"
    protected: bool  # pre-Win8: object tags carry the high bit on their last byte
    billed: str  # quota ProcessBilled: "tail" (x86), "pointer" (Win7 x64), "encoded"
    seed: int
    kernel_hi: tuple[int, ...]  # x64: upper dword of kernel addresses; x86: upper word

    @property
    def x86(self) -> bool:
        return self.layout == "x86"

    @property
    def ptr_size(self) -> int:
        return 4 if self.x86 else 8

    @property
    def unit(self) -> int:
        """Bytes per BlockSize unit, which is also the POOL_HEADER size."""
        return 8 if self.x86 else 16


# Core Windows tags (as they read in memory) and the object tags that carried the protected
# bit before Windows 8.
CORE_TAGS: tuple[str, ...] = (
    "Proc", "Thre", "File", "Mute", "Even", "Sema", "Toke", "Driv", "Devi", "Symb", "Key ",
    "MmSt", "MmCa", "CcBc", "Irp ", "Io  ", "Vad ", "VadS", "ObNm", "ObDi", "Se  ", "FMfn",
    "Ntfx", "NtFs", "ALPC", "Wait", "TcpE", "Ntf0", "MmCi", "AlIn", "Obtb", "CM31",
)  # fmt: skip
OBJECT_TAGS = frozenset(
    ("Proc", "Thre", "File", "Mute", "Driv", "Symb", "Even", "Sema", "Toke", "Key ", "Devi")
)
# Invented third-party tags; checked to match no entry (wildcards included) of pooltag.txt.
THIRD_PARTY_TAGS: tuple[str, ...] = (
    "WdRv", "ZqX1", "Kb7m", "Qx9p", "Hv0z", "Fz3k", "Yp8w", "Jm2q", "Vx4r", "Nq7t", "Ub5e",
    "Xk0d", "Lw6s", "Rc9j", "Zv2u", "Pq4h",
)  # fmt: skip
# Tags with a non-printable byte (a driver passing a 2-char tag, a stray control byte, a
# high byte). The last byte never has bit 7 set, so it cannot be mistaken for "protected".
ODD_TAGS: tuple[bytes, ...] = (b"mK\x00\x00", b"Vr\x05d", b"\xa7Qw1")

_TAG_POOL: tuple[bytes, ...] = tuple(t.encode() for t in CORE_TAGS + THIRD_PARTY_TAGS)
_TAG_WEIGHTS = np.array([3.0] * len(CORE_TAGS) + [1.0] * len(THIRD_PARTY_TAGS))
_TAG_WEIGHTS /= _TAG_WEIGHTS.sum()


def pick_tags(rng: np.random.Generator, n: int, odd_rate: float = 0.0) -> list[bytes]:
    """n tags, core ones three times as likely as third-party ones, a few odd ones if asked."""
    idx = rng.choice(len(_TAG_POOL), size=n, p=_TAG_WEIGHTS)
    tags = [_TAG_POOL[i] for i in idx.tolist()]
    if odd_rate:
        for i in np.flatnonzero(rng.random(n) < odd_rate).tolist():
            tags[i] = ODD_TAGS[int(rng.integers(len(ODD_TAGS)))]
    return tags


def stored_tag(spec: Spec, tag: bytes) -> tuple[bytes, bool]:
    """Tag bytes as written in the header and whether the protected bit was set."""
    if spec.protected and tag.decode("latin-1") in OBJECT_TAGS:
        return tag[:3] + bytes([tag[3] | 0x80]), True
    return tag, False


def tag_text(tag: bytes) -> str:
    """Manifest form of a tag: printable bytes as-is, others as a lowercase \\xNN escape."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E else f"\\x{b:02x}" for b in tag)


# ---------------------------------------------------------------- values


def random_u64(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(8 * n), dtype="<u8").copy()


def kernel_ptrs(rng: np.random.Generator, spec: Spec, n: int, align16: float = 0.7) -> np.ndarray:
    """Kernel addresses of the family's regions; most 16-byte aligned like pool blocks."""
    bases = np.array(spec.kernel_hi, dtype=np.uint64)
    hi = bases[rng.integers(0, len(bases), n)]
    if spec.x86:
        hi = hi + rng.integers(0, 0x80, n).astype(np.uint64)
        lo = rng.integers(0, 0x10000, n).astype(np.uint64)
        val = (hi << 16) | lo
    else:
        hi = hi + rng.integers(0, 4, n).astype(np.uint64)
        lo = rng.integers(0, 1 << 32, n, dtype=np.uint64)
        val = (hi << 32) | lo
    mask = np.where(rng.random(n) < align16, ~np.uint64(0xF), ~np.uint64(0x7))
    return val & mask


def user_ptrs(rng: np.random.Generator, spec: Spec, n: int) -> np.ndarray:
    """User-mode addresses: heaps and DLL images."""
    if spec.x86:
        val = rng.integers(0x10000, 0x7FFE0000, n, dtype=np.uint64)
    else:
        dll = rng.random(n) < 0.5
        hi = np.where(dll, 0x7FF0 + rng.integers(0, 0x10, n), 0x100 + rng.integers(0, 0x300, n))
        val = (hi.astype(np.uint64) << np.uint64(32)) | rng.integers(0, 1 << 32, n, dtype=np.uint64)
    return val & ~np.uint64(0x7)


def small_ints(rng: np.random.Generator, n: int) -> np.ndarray:
    """Counts, sizes, flags and ids: mostly tiny, some up to 64K."""
    big = rng.random(n) < 0.3
    return np.where(big, rng.integers(0, 0x10000, n), rng.integers(0, 0x40, n)).astype(np.uint64)


def flag_words(rng: np.random.Generator, spec: Spec, n: int) -> np.ndarray:
    """Access masks, status codes and small (lo, hi) pairs as found in kernel structures."""
    masks = np.array([0x1FFFFF, 0x120089, 0x100001, 0x1F0003, 0xC0000034, 0x80000005, 0x10,
                      0x1, 0x3, 0x8000, 0xFFFFFFFF], dtype=np.uint64)  # fmt: skip
    lo = masks[rng.integers(0, len(masks), n)]
    if spec.x86:
        return lo
    hi = rng.integers(0, 0x20, n).astype(np.uint64)
    return (hi << np.uint64(32)) | lo


# ---------------------------------------------------------------- names in data and pages

ASCII_NAMES: tuple[str, ...] = (
    "System", "smss.exe", "csrss.exe", "wininit.exe", "services.exe", "lsass.exe", "svchost.exe",
    "explorer.exe", "winlogon.exe", "spoolsv.exe", "ntoskrnl.exe", "hal.dll", "tcpip.sys",
    "ntfs.sys", "ProcessHeap", "ThreadPool", "FileSystem", "Ntfs", "MountMgr", "PnpManager",
)  # fmt: skip
WIDE_NAMES: tuple[str, ...] = (
    "\\Device\\HarddiskVolume2\\Windows\\System32\\ntdll.dll",
    "\\Device\\HarddiskVolume2\\Users\\admin\\AppData\\Local\\Temp\\setup.log",
    "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\Tcpip\\Parameters",
    "\\Driver\\Tcpip", "\\FileSystem\\Ntfs", "\\Device\\Afd", "\\BaseNamedObjects\\SM0:1234",
    "\\Windows\\System32\\svchost.exe", "Process", "Thread", "File", "\\KnownDlls\\kernel32.dll",
)  # fmt: skip


def encode_name(name: str, wide: bool, align: int) -> bytes:
    """NUL-terminated ASCII or UTF-16LE name padded with zeros to a multiple of align."""
    raw = name.encode("utf-16-le") + b"\0\0" if wide else name.encode("ascii") + b"\0"
    return raw + b"\0" * (-len(raw) % align)


# ---------------------------------------------------------------- data filler

# value kinds: zero, kernel pointer, small int, user pointer, random-looking, flag words
_FILL_P = np.array([0.30, 0.28, 0.18, 0.06, 0.08, 0.10])


def fill(rng: np.random.Generator, spec: Spec, nbytes: int, names: float = 1.0) -> np.ndarray:
    """Plausible allocation contents (uint8 array) that never looks like a segment heap header.

    Values come in short runs of one kind (pointer arrays, zeroed fields, counters) with names
    dropped at word-aligned positions; random-looking words that happen to resemble a POOL_HEADER
    qword get bit 0 flipped so the ground truth stays exact.
    """
    ps = spec.ptr_size
    n = nbytes // ps
    runs = n // 2 + 1
    seq = np.resize(np.repeat(rng.choice(len(_FILL_P), size=runs, p=_FILL_P),
                              rng.integers(1, 6, size=runs)), n)  # fmt: skip
    vals = np.zeros(n, dtype=np.uint64)
    makers = (
        None,
        lambda k: kernel_ptrs(rng, spec, k),
        lambda k: small_ints(rng, k),
        lambda k: user_ptrs(rng, spec, k),
        lambda k: random_u64(rng, k),
        lambda k: flag_words(rng, spec, k),
    )
    for kind, make in enumerate(makers):
        if make is None:
            continue
        where = np.flatnonzero(seq == kind)
        if len(where):
            vals[where] = make(len(where))
    if spec.x86:
        out = vals.astype("<u4").view(np.uint8)
    else:
        out = vals.astype("<u8").view(np.uint8)
    out = out.copy()
    for _ in range(int(rng.poisson(names * nbytes / 768))):
        wide = bool(rng.random() < 0.5)
        pool = WIDE_NAMES if wide else ASCII_NAMES
        raw = encode_name(pool[int(rng.integers(len(pool)))], wide, ps)
        at = int(rng.integers(0, max(1, n))) * ps
        raw = raw[: max(0, nbytes - at)]
        out[at : at + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    if not spec.x86:
        sanitize(out)
    return out


# ---------------------------------------------------------------- predicates


def header_like(q: np.ndarray) -> np.ndarray:
    """Mask of qwords that read as a segment heap POOL_HEADER's first 8 bytes.

    PreviousSize and PoolIndex 0, BlockSize > 0, PoolType with bit 1 set and bits 4/7 clear,
    four printable tag bytes: the loosest check a symbol-less scanner would make.
    """
    q = q.astype(np.uint64, copy=False)
    ok = ((q & 0xFFFF) == 0) & (((q >> 16) & 0xFF) != 0) & (((q >> 24) & 0x92) == 2)
    for shift in (32, 40, 48, 56):
        b = (q >> shift) & 0xFF
        ok &= (b >= 0x20) & (b <= 0x7E)
    return ok


def sanitize(buf: np.ndarray) -> None:
    """Break every header-like qword in a uint8 buffer (length a multiple of 8), in place."""
    q = buf[: len(buf) // 8 * 8].view("<u8")
    bad = header_like(q)
    if bad.any():
        q[bad] ^= np.uint64(1)


def legacy_chain(page: bytes | bytearray | memoryview, x86: bool) -> list[int] | None:
    """Header offsets of a legacy chain starting at offset 0 and ending exactly at 4096.

    Only the structure is checked (BlockSize > 0, PreviousSize = previous BlockSize, 0 first),
    so anything that passes is a page a scanner would accept as a pool page.
    """
    unit = 8 if x86 else 16
    off, prev_bs, offs = 0, 0, []
    while off < PAGE:
        if x86:
            w0, w1 = struct.unpack_from("<HH", page, off)
            prev, bs = w0 & 0x1FF, w1 & 0x1FF
        else:
            prev, bs = page[off], page[off + 2]
        if bs == 0 or prev != prev_bs:
            return None
        offs.append(off)
        prev_bs = bs
        off += bs * unit
    return offs if off == PAGE else None


def page_is_clean(page: bytes | bytearray, spec: Spec) -> bool:
    """True when a non-pool page holds nothing a scanner could take for a planted header."""
    if spec.layout == "x64-segment-heap":
        q = np.frombuffer(bytes(page), dtype="<u8")[::2]
        return not header_like(q).any()
    return legacy_chain(page, spec.x86) is None
