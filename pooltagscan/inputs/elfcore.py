"""ELF core dumps of whole machines (QEMU dump-guest-memory, VirtualBox dumpvmcore).

Each PT_LOAD program header maps a stretch of guest physical memory (p_paddr) to the
file (p_offset). Volatility 3's Elf64Layer reads the program headers; we take its
physical map and mmap the bytes. p_offset need not be page aligned (notes come first),
which the mmap of a window handles.
"""

from __future__ import annotations

import struct
from typing import Any

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs import volmap
from pooltagscan.inputs.base import MemoryImage

# e_machine values of the guests whose kernels have Windows pools.
MACHINES = {3: "x86", 62: "x64", 183: "ARM64"}


PHDR_SIZE = 56  # sizeof(Elf64_Phdr)


def check_program_headers(source: InputFile, head: bytes) -> None:
    """The program header table must be what it says and lie inside the file.

    Volatility reads e_phnum headers one object at a time (about 0.1 ms each): a table
    that claims 65,535 entries of the wrong size or past the end of the file must be
    refused before that loop, not after it.
    """
    if len(head) < 64:
        raise InputError(source.path, "truncated ELF core dump: no complete ELF header")
    (phoff,) = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    if phnum == 0:
        raise InputError(source.path, "ELF core dump without program headers")
    if phentsize != PHDR_SIZE:
        raise InputError(
            source.path,
            f"malformed ELF core dump: program headers of {phentsize} bytes (ELF64 uses "
            f"{PHDR_SIZE})",
        )
    if phoff + phnum * PHDR_SIZE > source.size:
        raise InputError(
            source.path,
            f"malformed ELF core dump: its {phnum} program headers at {phoff:#x} run past "
            f"the end of the {source.size}-byte file",
        )


def open_elfcore(source: InputFile, head: bytes) -> MemoryImage:
    check_program_headers(source, head)
    image = volmap.physical_image(source, "elfcore", _build_layer, "ELF core dump")
    (machine,) = struct.unpack_from("<H", head, 18)
    image.architecture = MACHINES.get(machine, f"ELF machine {machine}")
    image.details["load_segments"] = image.details.pop("segments")
    return image


def _build_layer(context: Any, base: str) -> Any:
    from volatility3.framework.layers import elf

    return volmap.stack_layer(context, elf.Elf64Layer, base, "elfcore")
