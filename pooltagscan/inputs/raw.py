"""Flat physical memory images (.raw, .mem, .bin, .vmem without a state file...)."""

from __future__ import annotations

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs.base import MemoryImage, Run
from pooltagscan.layouts import PAGE_SIZE


def open_raw(source: InputFile) -> MemoryImage:
    """A flat file: file offset = physical address; a trailing partial page is skipped."""
    path, size = source.path, source.size
    if size == 0:
        raise InputError(path, "empty file")
    if size < PAGE_SIZE:
        raise InputError(path, f"only {size} bytes, shorter than one {PAGE_SIZE}-byte page")
    usable = size - size % PAGE_SIZE
    image = MemoryImage(
        path=path, format="raw", runs=[Run(0, 0, usable)], file_size=size, source=source
    )
    if usable != size:
        image.notes.append(
            f"size {size} is not a multiple of {PAGE_SIZE}; "
            f"the last {size - usable} bytes are not scanned"
        )
    return image
