"""Flat physical memory images (.raw, .mem, .bin, .vmem without a state file...)."""

from __future__ import annotations

import os

from pooltagscan.errors import InputError
from pooltagscan.inputs.base import MemoryImage, Run, open_checked
from pooltagscan.layouts import PAGE_SIZE


def open_raw(path: str | os.PathLike[str]) -> MemoryImage:
    """A flat file: file offset = physical address; a trailing partial page is skipped."""
    path, size = open_checked(path)
    if size == 0:
        raise InputError(path, "empty file")
    if size < PAGE_SIZE:
        raise InputError(path, f"only {size} bytes, shorter than one {PAGE_SIZE}-byte page")
    usable = size - size % PAGE_SIZE
    image = MemoryImage(path=path, format="raw", runs=[Run(0, 0, usable)], file_size=size)
    if usable != size:
        image.notes.append(
            f"size {size} is not a multiple of {PAGE_SIZE}; "
            f"the last {size - usable} bytes are not scanned"
        )
    return image
