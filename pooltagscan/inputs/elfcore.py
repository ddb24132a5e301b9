"""ELF core dumps of whole machines (QEMU dump-guest-memory, VirtualBox dumpvmcore).

Each PT_LOAD program header maps a stretch of guest physical memory (p_paddr) to the
file (p_offset). Volatility 3's Elf64Layer reads the program headers; we take its
physical map and mmap the bytes. p_offset need not be page aligned (notes come first),
which the mmap of a window handles.
"""

from __future__ import annotations

import struct
from typing import Any

from pooltagscan.files import InputFile
from pooltagscan.inputs import volmap
from pooltagscan.inputs.base import MemoryImage

# e_machine values of the guests whose kernels have Windows pools.
MACHINES = {3: "x86", 62: "x64", 183: "ARM64"}


def open_elfcore(source: InputFile, head: bytes) -> MemoryImage:
    image = volmap.physical_image(source, "elfcore", _build_layer, "ELF core dump")
    (machine,) = struct.unpack_from("<H", head, 18)
    image.architecture = MACHINES.get(machine, f"ELF machine {machine}")
    image.details["load_segments"] = image.details.pop("segments")
    return image


def _build_layer(context: Any, base: str) -> Any:
    from volatility3.framework.layers import elf

    return volmap.stack_layer(context, elf.Elf64Layer, base, "elfcore")
