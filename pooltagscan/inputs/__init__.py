"""Input layer: open a dump read-only as a MemoryImage of page-aligned runs.

`open_image` looks at the file's first bytes (never its name) and hands it to the reader
of its format:

| format | reader | addresses reported |
|---|---|---|
| raw / flat (`.raw`, `.mem`, `.bin`, a `.vmem` alone) | `raw` | file offset = physical |
| VMware `.vmem` with its `.vmss`/`.vmsn` beside it | `vmware` (Volatility's map) | physical |
| Windows crash dump, full or bitmap (`MEMORY.DMP`) | `crashdump` (Volatility's map) | physical |
| Windows kernel minidump (DumpType 4, `Minidump\\*.dmp`) | `minidump` (our reader) | kernel virtual |
| LiME | `lime` (Volatility's map) | physical |
| ELF core (QEMU, VirtualBox) | `elfcore` (Volatility's map) | physical |

Everything else with a known signature (process minidumps, archives, executables,
compressed files...) is refused with one line saying what the file is.
"""

from __future__ import annotations

import os

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs import sniff
from pooltagscan.inputs.base import MemoryImage, open_checked
from pooltagscan.inputs.raw import open_raw


def open_image(path: str | os.PathLike[str]) -> MemoryImage:
    """Open a memory dump for scanning; raises InputError with a one-line reason.

    The dump's descriptor stays open in the image (`MemoryImage.close` releases it).
    """
    source = open_checked(path)
    try:
        return _open_source(source)
    except BaseException:
        source.close()
        raise


def _open_source(source: InputFile) -> MemoryImage:
    path = source.path
    head = source.pread(0, sniff.HEAD_BYTES)
    found = sniff.sniff_bytes(head)
    if found.kind == sniff.FOREIGN:
        hint = f" ({found.hint})" if found.hint else ""
        raise InputError(path, f"this is a {found.what}, not a memory dump{hint}")
    if found.kind == sniff.CRASHDUMP:
        from pooltagscan.inputs.crashdump import open_crashdump

        return open_crashdump(source, head)
    if found.kind == sniff.LIME:
        from pooltagscan.inputs.lime import open_lime

        return open_lime(source)
    if found.kind == sniff.ELFCORE:
        from pooltagscan.inputs.elfcore import open_elfcore

        return open_elfcore(source, head)
    if found.kind == sniff.VMWARE_STATE:
        from pooltagscan.inputs.vmware import open_state_file

        return open_state_file(source)
    from pooltagscan.inputs.vmware import open_vmem, state_file_beside

    state = state_file_beside(path)
    if state is not None:
        return open_vmem(source, state)
    image = open_raw(source)
    image.looks_like = sniff.text_kind(head)
    return image


__all__ = ["MemoryImage", "open_image"]
