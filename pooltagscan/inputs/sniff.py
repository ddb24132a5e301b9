"""Tell what a dump file is from its first bytes, never from its name.

Analysts rename files freely (`MEMORY.DMP`, `host.mem`, `case42.bin`), so the name proves
nothing. Every format we read starts with a signature; a file with none of them is taken
as a flat image. Files that carry the signature of something that is not a memory dump
at all (a process minidump, an archive, an executable) are refused with their name,
because scanning their bytes as physical memory would print confident nonsense.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Enough for every signature below, including a PE header a few hundred bytes in.
HEAD_BYTES = 8192

RAW, CRASHDUMP, LIME, ELFCORE, VMWARE_STATE, FOREIGN = (
    "raw",
    "crashdump",
    "lime",
    "elfcore",
    "vmware-state",
    "foreign",
)

LIME_MAGIC = 0x4C694D45  # "EMiL" on disk
# Saved-state (.vmss) and snapshot (.vmsn) files: one magic per file format version.
VMWARE_MAGICS = (b"\xd0\xbe\xd2\xbe", b"\xd1\xba\xd1\xba", b"\xd2\xbe\xd2\xbe", b"\xd3\xbe\xd3\xbe")
ELF_TYPES = {0: "ELF file of no type", 1: "ELF relocatable object", 2: "ELF executable",
             3: "ELF shared object"}  # fmt: skip
ET_CORE = 4

# (signature, offset, what the file is, what to do instead). Checked in order.
_FOREIGN: tuple[tuple[bytes, int, str, str], ...] = (
    (b"MDMP", 0, "user-mode minidump (MDMP): a dump of one process",
     "kernel pool lives in kernel dumps such as MEMORY.DMP or C:\\Windows\\Minidump\\*.dmp"),
    (b"PK\x03\x04", 0, "zip archive", "extract the memory image first; AFF4 images are zips too"),
    (b"PK\x05\x06", 0, "zip archive (empty)", "extract the memory image first"),
    (b"\x1f\x8b", 0, "gzip-compressed file", "decompress it first"),
    (b"BZh", 0, "bzip2-compressed file", "decompress it first"),
    (b"\xfd7zXZ\x00", 0, "xz-compressed file", "decompress it first"),
    (b"\x28\xb5\x2f\xfd", 0, "zstd-compressed file", "decompress it first"),
    (b"\x04\x22\x4d\x18", 0, "lz4-compressed file", "decompress it first"),
    (b"7z\xbc\xaf\x27\x1c", 0, "7-Zip archive", "extract the memory image first"),
    (b"Rar!\x1a\x07", 0, "RAR archive", "extract the memory image first"),
    (b"ustar", 257, "tar archive", "extract the memory image first"),
    (b"EVF\x09\x0d\x0a\xff\x00", 0, "EnCase/EWF evidence file (E01)",
     "export the raw image from it, e.g. with ewfexport"),
    (b"EVF2\x0d\x0a\x81\x00", 0, "EnCase/EWF2 evidence file (Ex01)",
     "export the raw image from it"),
    (b"hibr", 0, "Windows hibernation file (hiberfil.sys)",
     "convert it to a raw image first, e.g. with hibr2bin"),
    (b"HIBR", 0, "Windows hibernation file (hiberfil.sys)", "convert it to a raw image first"),
    (b"wake", 0, "Windows hibernation file (hiberfil.sys, resumed)",
     "convert it to a raw image first"),
    (b"WAKE", 0, "Windows hibernation file (hiberfil.sys, resumed)",
     "convert it to a raw image first"),
    (b"RSTR", 0, "Windows hibernation file (hiberfil.sys, restore)",
     "convert it to a raw image first"),
    (b"AVML", 0, "AVML compressed memory image", "convert it with avml-convert first"),
    (b"QEVM", 0, "QEMU saved VM state", "take a raw or ELF dump (dump-guest-memory) instead"),
    (b"regf", 0, "Windows registry hive", "this is not a memory dump"),
    (b"%PDF-", 0, "PDF document", "this is not a memory dump"),
    (b"SQLite format 3\x00", 0, "SQLite database", "this is not a memory dump"),
    (b"KDMV", 0, "VMware virtual disk (VMDK)", "this is a disk image, not memory"),
    (b"conectix", 0, "Virtual PC/Hyper-V disk (VHD)", "this is a disk image, not memory"),
    (b"vhdxfile", 0, "Hyper-V disk (VHDX)", "this is a disk image, not memory"),
)  # fmt: skip


@dataclass(frozen=True)
class Sniffed:
    """What a file looks like: a kind from the constants above and a human description."""

    kind: str
    what: str
    hint: str = ""


def sniff_bytes(head: bytes) -> Sniffed:
    """Classify a file from its first HEAD_BYTES bytes (fewer if the file is shorter)."""
    if head[:8] in (b"PAGEDU64", b"PAGEDUMP"):
        return Sniffed(CRASHDUMP, "Windows crash dump")
    if head[:4] == b"PAGE" and len(head) >= 8:
        return Sniffed(
            FOREIGN,
            f"Windows crash dump header with an unknown ValidDump {head[4:8]!r}",
            "the file may be damaged",
        )
    if len(head) >= 8 and struct.unpack_from("<II", head) == (LIME_MAGIC, 1):
        return Sniffed(LIME, "LiME dump")
    if head[:4] == b"\x7fELF":
        return _sniff_elf(head)
    if head[:4] in VMWARE_MAGICS:
        return Sniffed(VMWARE_STATE, "VMware saved state (.vmss/.vmsn)")
    if head[:2] == b"MZ" and _has_pe_header(head):
        return Sniffed(FOREIGN, "Windows executable (PE)", "this is a program, not a memory dump")
    for magic, at, what, hint in _FOREIGN:
        if head[at : at + len(magic)] == magic:
            return Sniffed(FOREIGN, what, hint)
    return Sniffed(RAW, "raw image")


# Characters a text document is made of besides the printable ones.
_TEXT_SPACE = frozenset("\t\n\r\f\v")
# Share of printable characters above which a head is taken as text (a stray control
# character or two in a log file must not make it memory).
_TEXT_SHARE = 0.98


def text_kind(head: bytes) -> str | None:
    """What document the file is ("an HTML document", "a JSON document", "an XML document",
    "a text file") when its first bytes are text, else None.

    Text carries no signature, so `sniff_bytes` takes it for a flat image; a physical
    memory image, though, never holds kilobytes of text without a zero byte from its
    first page on. `scan` still scans such a file (with a warning) and `diff` refuses it:
    a saved HTML report given to `diff` would otherwise read as a dump of no tags.
    """
    if not head:
        return None
    if head[:2] == b"\xff\xfe":  # UTF-16LE with its byte-order mark (Notepad, PowerShell)
        text = head[2 : len(head) - len(head) % 2].decode("utf-16-le", "replace")
    else:
        body = head.removeprefix(b"\xef\xbb\xbf")
        if b"\0" in body:
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(body) - 3:  # not just a character cut by the head's end
                return None
            text = body[: exc.start].decode("utf-8")
    if not text:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in _TEXT_SPACE)
    if printable < _TEXT_SHARE * len(text):
        return None
    lead = text.lstrip()[:512].lower()
    if lead.startswith(("<!doctype html", "<html")) or "<html" in lead:
        return "an HTML document"
    if lead.startswith("<?xml"):
        return "an XML document"
    if lead.startswith(("{", "[")):
        return "a JSON document"
    return "a text file"


def _sniff_elf(head: bytes) -> Sniffed:
    if len(head) < 20:
        return Sniffed(FOREIGN, "truncated ELF file", "the file is too short")
    elf_class, data = head[4], head[5]
    if data != 1:
        return Sniffed(FOREIGN, "big-endian ELF file", "only little-endian cores are supported")
    (e_type,) = struct.unpack_from("<H", head, 16)
    if e_type != ET_CORE:
        what = ELF_TYPES.get(e_type, f"ELF file of type {e_type}")
        return Sniffed(FOREIGN, what, "only ELF core dumps hold memory images")
    if elf_class != 2:
        return Sniffed(
            FOREIGN, "32-bit ELF core dump", "only 64-bit ELF cores (QEMU, VirtualBox) are read"
        )
    return Sniffed(ELFCORE, "ELF core dump")


def _has_pe_header(head: bytes) -> bool:
    """An MZ stub whose e_lfanew points at a PE signature: a real executable.

    Requiring both keeps a physical page that merely starts with "MZ" from being refused.
    """
    if len(head) < 0x40:
        return False
    (lfanew,) = struct.unpack_from("<I", head, 0x3C)
    return 0x40 <= lfanew <= len(head) - 4 and head[lfanew : lfanew + 4] == b"PE\0\0"


def read_head(path: str) -> bytes:
    """The first HEAD_BYTES bytes of a file (read-only; InputError if it cannot be read)."""
    from pooltagscan.files import InputFile

    with InputFile.open(path) as source:
        return source.pread(0, HEAD_BYTES)
