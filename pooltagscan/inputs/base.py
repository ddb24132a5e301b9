"""What every input format provides to the scanner: page-aligned runs read from a file.

The scanner never sees file formats. An input describes its address space as runs of
(address, file offset, length) and hands out read-only numpy views of windows of them;
for flat files and the container formats whose page map Volatility reads for us (crash
dumps, LiME, ELF cores, VMware) the bytes come straight from the evidence file.
Kernel minidumps override `words` to assemble pages from fragments (see `minidump`).

Windows are mapped from the one descriptor opened for the dump (see `pooltagscan.files`)
under the SIGBUS guard of `mapguard`: a file that shrinks under the scan stops it with a
one-line error instead of killing the process. Where the guard is not built they are read
with `pread` into a buffer reused from window to window, one per thread (a short read is
the same error). Scan threads share an image when it is `parallel_ok`; images stay
picklable for the fleet's tasks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs import mapguard
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
DUMP = "a memory dump"


@dataclass(frozen=True, slots=True)
class Run:
    """A stretch of the address space stored contiguously in the file."""

    address: int  # page aligned
    file_offset: int
    length: int  # multiple of PAGE_SIZE


@dataclass(frozen=True)
class Window:
    """A slice of the address space: the unit of work of a scan (and of one worker).

    Usually one stretch of one run. A format that stores scattered pages (kernel
    minidumps) gathers many of them into one window instead: `pages` then holds the
    address of each page of the window's buffer, in ascending order, and `address` is
    the first of them. Every scanner check stays inside one page, so gathered pages
    scan exactly as they would one by one, at a fraction of the per-window cost.
    """

    address: int
    file_offset: int
    length: int
    pages: np.ndarray | None = field(default=None, compare=False)

    def addresses(self, offsets: np.ndarray) -> np.ndarray:
        """Addresses (uint64) of byte offsets into the window's buffer."""
        offsets = np.asarray(offsets, np.uint64)
        if self.pages is None:
            return offsets + np.uint64(self.address)
        return self.pages[offsets // np.uint64(PAGE_SIZE)] + offsets % np.uint64(PAGE_SIZE)

    def address_at(self, offset: int) -> int:
        if self.pages is None:
            return self.address + offset
        return int(self.pages[offset // PAGE_SIZE]) + offset % PAGE_SIZE


@dataclass
class MemoryImage:
    """A dump opened read-only: its runs, a label for its format, and notes for the user.

    `source` is the dump's one read-only descriptor (opened from `path` on first use
    when the image was built without it).
    """

    path: str
    format: str
    runs: list[Run]
    architecture: str | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    file_size: int = 0
    source: InputFile | None = field(default=None, repr=False)
    # A flat file whose first bytes read as a document ("an HTML document"): scanned as
    # asked, but the shells warn, and `diff` refuses it (see sniff.text_kind).
    looks_like: str | None = None
    # The page-table root (CR3) the dump's own header states (crash dumps), if any: the
    # kernel address space is then built from it rather than searched for (`addressing`).
    page_table_root: int | None = None

    @property
    def scanned_bytes(self) -> int:
        return sum(r.length for r in self.runs)

    @property
    def captured_bytes(self) -> int:
        """Bytes of memory the dump really holds. The scanned pages for formats that store
        whole pages; less for kernel minidumps, whose pages are rebuilt around fragments
        with zero padding that no summary should count as evidence."""
        return self.scanned_bytes

    @property
    def max_address(self) -> int:
        return max((r.address + r.length for r in self.runs), default=0)

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

    def captured(self, addresses: np.ndarray, length: int) -> np.ndarray:
        """Which of `length` bytes at each address the dump really holds (all, for
        formats that store whole pages)."""
        return np.ones(np.shape(addresses), bool)

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

    def page_window(self, address: int) -> Window | None:
        """The one-page window holding `address`, or None when the dump has no such page.

        Lets a view of one address (`pooltagscan pool`) scan that page alone instead of
        the whole dump: every scanner check stays inside one page, so the page scans to
        exactly the records a full scan finds there.
        """
        page = address - address % PAGE_SIZE
        for run in self.runs:
            if run.address <= page < run.address + run.length:
                return Window(page, run.file_offset + page - run.address, PAGE_SIZE)
        return None

    # -- reading ------------------------------------------------------------------------

    @property
    def file(self) -> InputFile:
        if self.source is None:
            self.source = InputFile.open(self.path, DUMP)
        return self.source

    def _buffer(self, length: int) -> memoryview:
        """A reusable read buffer of at least `length` bytes, one per image and thread:
        scan threads read their windows side by side."""
        bufs = self.__dict__.setdefault("_bufs", {})
        key = threading.get_ident()
        buf = bufs.get(key)
        if buf is None or len(buf) < length:
            buf = bytearray(length)
            bufs[key] = buf
        return memoryview(buf)[:length]

    def release_buffers(self) -> None:
        """Drop the read buffers (those of the scan threads, which are gone)."""
        self.__dict__.pop("_bufs", None)

    @contextmanager
    def file_range(self, offset: int, length: int) -> Iterator[memoryview]:
        """`length` file bytes at `offset`, valid inside the block; InputError when the
        file no longer holds them (it shrank after it was opened).

        Mapped where the SIGBUS guard is built (inputs/mapguard.py): no copy out of the
        page cache, which cost as much as the scan itself. Else read into the thread's
        buffer, reused from window to window.
        """
        guard = mapguard.available()
        if not guard or self.__dict__.get("_unmappable"):
            yield self._read_range(offset, length)
            return
        try:
            with ExitStack() as stack:
                try:
                    view = stack.enter_context(mapguard.mapped(self.file.fd, offset, length, guard))
                except (OSError, ValueError):
                    # A file that cannot be mapped (a FUSE mount of an E01 with direct
                    # I/O, say) is read instead, from here on.
                    self.__dict__["_unmappable"] = True
                    view = self._read_range(offset, length)
                yield view
        except mapguard.Faulted as fault:
            raise self.shrank(fault.offset) from None

    def _read_range(self, offset: int, length: int) -> memoryview:
        view = self._buffer(length)
        got = self.file.readinto(view, offset)
        if got < length:
            raise self.shrank(offset + got)
        return view

    def shrank(self, at: int) -> InputError:
        try:
            now = os.fstat(self.file.fd).st_size
        except OSError:
            now = at
        return InputError(
            self.path,
            f"the file shrank during the scan (it was {self.file.size} bytes, it is now "
            f"{now}); the scan stopped at offset {at:#x}",
        )

    @contextmanager
    def words(self, window: Window) -> Iterator[np.ndarray]:
        """A read-only uint32 view (pages, 1024) of a window, valid inside the block."""
        with self.file_range(window.file_offset, window.length) as view:
            words = np.frombuffer(view, dtype="<u4").reshape(-1, PAGE_SIZE // 4)
            words.flags.writeable = False
            yield words

    def read(self, address: int, length: int) -> bytes:
        """Bytes at an address of the scanned space (short or empty outside the runs)."""
        for run in self.runs:
            if run.address <= address < run.address + run.length:
                length = min(length, run.address + run.length - address)
                return self.file.pread(run.file_offset + address - run.address, length)
        return b""

    def check_unchanged(self) -> None:
        """InputError if the dump changed since it was opened (size, mtime, identity)."""
        if self.source is not None:
            _raise_if_changed(self.source)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        self.release_buffers()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_bufs", None)
        return state


def _raise_if_changed(source: InputFile) -> None:
    problem = source.changed()
    if problem:
        raise InputError(
            source.path, f"the file {problem} during the scan; its results cannot be trusted"
        )


def open_checked(path: str | os.PathLike[str]) -> InputFile:
    """Open `path` read-only as a dump (a readable regular file) and keep it open."""
    return InputFile.open(path, DUMP)
