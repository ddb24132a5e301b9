"""What every input format provides to the scanner: page-aligned runs mapped from a file.

The scanner never sees file formats. An input describes its address space as runs of
(address, file offset, length) and hands out read-only numpy views of windows of them;
for flat files and the container formats whose page map Volatility reads for us (crash
dumps, LiME, ELF cores, VMware) the bytes come straight from an mmap of the evidence.
Kernel minidumps override `words` to assemble pages from fragments (see `minidump`).
Subclasses must stay picklable when `parallel_ok`: worker processes receive the image.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from pooltagscan.errors import InputError
from pooltagscan.files import regular_file
from pooltagscan.layouts import PAGE_SIZE

# Human names of MemoryImage.format values (the values are what JSON outputs carry).
FORMAT_NAMES = {
    "raw": "raw image",
    "crashdump": "Windows crash dump",
    "minidump": "Windows kernel minidump",
    "lime": "LiME dump",
    "elfcore": "ELF core dump",
    "vmware": "VMware .vmem with saved state",
    "volatility-layer": "Volatility layer",
}
# `details` keys worth a word in the one-line summary the shells print.
SUMMARY_KEYS = ("dump_type", "build", "bugcheck", "data_blocks", "ranges", "segments", "regions")


@dataclass(frozen=True)
class Run:
    """A stretch of the address space stored contiguously in the file."""

    address: int  # page aligned
    file_offset: int
    length: int  # multiple of PAGE_SIZE


@dataclass(frozen=True)
class Window:
    """A slice of one run: the unit of work of a scan (and of one worker process)."""

    address: int
    file_offset: int
    length: int


@dataclass
class MemoryImage:
    """A dump opened read-only: its runs, a label for its format, and notes for the user."""

    path: str
    format: str
    runs: list[Run]
    architecture: str | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    file_size: int = 0

    @property
    def scanned_bytes(self) -> int:
        return sum(r.length for r in self.runs)

    @property
    def parallel_ok(self) -> bool:
        """Whether worker processes may scan this image (it must survive a fork or pickle)."""
        return True

    def describe(self) -> str:
        """One human line for the shells: format, architecture and the salient details."""
        parts = [FORMAT_NAMES.get(self.format, self.format)]
        if self.architecture:
            parts.append(self.architecture)
        parts += [
            f"{k.replace('_', ' ')} {v}" for k, v in self.details.items() if k in SUMMARY_KEYS
        ]
        return ", ".join(parts)

    def captured_only(self, records: np.ndarray) -> np.ndarray:
        """Drop records whose header bytes the dump does not hold.

        Flat and physical formats store whole pages, so every record is kept; formats
        that store fragments of pages (kernel minidumps) override this so that a
        header half made of the zeros padding a fragment is never reported.
        """
        return records

    def windows(self, window_bytes: int) -> Iterator[Window]:
        """Split the runs into windows of at most `window_bytes` (page multiples)."""
        step = max(PAGE_SIZE, window_bytes - window_bytes % PAGE_SIZE)
        for run in self.runs:
            for delta in range(0, run.length, step):
                yield Window(
                    run.address + delta, run.file_offset + delta, min(step, run.length - delta)
                )

    @contextmanager
    def words(self, window: Window) -> Iterator[np.ndarray]:
        """A read-only uint32 view (pages, 1024) of a window, unmapped on exit.

        Mapping window by window (instead of the whole file once) is what keeps the
        resident set bounded: pages of a closed mapping stop counting against us.
        """
        with map_file_range(self.path, window.file_offset, window.length) as buf:
            yield np.frombuffer(buf, dtype="<u4").reshape(-1, PAGE_SIZE // 4)

    def read(self, address: int, length: int) -> bytes:
        """Bytes at an address of the scanned space (short or empty outside the runs)."""
        for run in self.runs:
            if run.address <= address < run.address + run.length:
                length = min(length, run.address + run.length - address)
                with open(self.path, "rb") as f:
                    f.seek(run.file_offset + address - run.address)
                    return f.read(length)
        return b""


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


@contextmanager
def map_file_range(path: str, offset: int, length: int) -> Iterator[memoryview]:
    """mmap `length` bytes at `offset` read-only (offset need not be granule aligned)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    delta = offset - start
    fd = os.open(path, os.O_RDONLY)
    try:
        if _POPULATE:  # read-only shared mapping, faulted in at once: fewer page faults
            mm = mmap.mmap(
                fd,
                delta + length,
                flags=mmap.MAP_SHARED | _POPULATE,
                prot=mmap.PROT_READ,
                offset=start,
            )
        else:
            mm = mmap.mmap(fd, delta + length, offset=start, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot map bytes {offset:#x}-{offset + length:#x}: {exc}") from exc
    finally:
        os.close(fd)
    view = memoryview(mm)[delta : delta + length]
    try:
        yield view
    finally:
        view.release()
        try:
            mm.close()
        except BufferError:
            pass  # a caller kept a view; the mapping goes when it does


def open_checked(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Check that `path` is a readable regular file; return (path, size)."""
    path, size = regular_file(path, "a memory dump")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    return path, size
