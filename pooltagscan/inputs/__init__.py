"""Input layer: open a dump read-only as a MemoryImage of page-aligned runs."""

from __future__ import annotations

import os

from pooltagscan.inputs.base import MemoryImage
from pooltagscan.inputs.raw import open_raw


def open_image(path: str | os.PathLike[str]) -> MemoryImage:
    """Open a memory dump for scanning; raises InputError with a one-line reason."""
    return open_raw(path)


__all__ = ["MemoryImage", "open_image"]
