"""Where each physical page of a dump sits in its file, as Volatility 3's layers say.

Volatility 3 already understands the container formats analysts bring (Windows crash
dumps, LiME, ELF cores, VMware saved states). We borrow exactly one thing from it: the
physical address -> file offset map, obtained from `layer.mapping()` followed down to
the `FileLayer`. The bytes are then read by our own read-only mmap, window by window, so
scanning a crash dump costs what scanning a raw file costs and the records are the same.

Layers that do not map linearly onto one file (compressed formats, a layer built from
a buffer or a URL) cannot be mmapped; `LayerImage` reads those through `layer.read()`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs.base import MemoryImage, Run, Window
from pooltagscan.layouts import PAGE_SIZE


class NotFileBacked(Exception):
    """The layer's bytes are not a linear stretch of one local file."""


@dataclass(frozen=True)
class Piece:
    """A stretch of a layer's address space stored contiguously in a file layer."""

    address: int
    file_layer: str
    file_offset: int
    length: int


def new_context() -> Any:
    """A fresh Volatility context (imported lazily: raw dumps never pay for Volatility)."""
    from volatility3.framework import contexts

    return contexts.Context()


def add_file_layer(context: Any, path: str, name: str) -> str:
    """Add a read-only FileLayer for a local file; returns its layer name."""
    from volatility3.framework.layers import physical

    context.config[f"pooltagscan.{name}.location"] = Path(path).resolve().as_uri()
    context.add_layer(physical.FileLayer(context, f"pooltagscan.{name}", name))
    return name


def stack_layer(context: Any, layer_class: type, base_layer: str, name: str, **config: Any) -> Any:
    """Construct a translation layer over `base_layer` (and any extra config, e.g. meta_layer)."""
    context.config[f"pooltagscan.{name}.base_layer"] = base_layer
    for key, value in config.items():
        context.config[f"pooltagscan.{name}.{key}"] = value
    layer = layer_class(context, f"pooltagscan.{name}", name)
    context.add_layer(layer)
    return layer


def physical_layer_name(context: Any, layer_name: str) -> str:
    """The physical layer under `layer_name`: follow Intel layers down their memory_layer."""
    from volatility3.framework.layers import intel

    seen = set()
    layer = context.layers[layer_name]
    while isinstance(layer, intel.Intel):
        if layer.name in seen:  # a configuration loop; never expected
            break
        seen.add(layer.name)
        layer = context.layers[layer.config["memory_layer"]]
    return layer.name


def file_pieces(context: Any, layer_name: str) -> list[Piece]:
    """Every mapped stretch of a (physical) layer, followed down to file layers.

    Raises NotFileBacked when some stretch is not a linear copy of a file's bytes.
    """
    from volatility3.framework import interfaces
    from volatility3.framework.layers import intel, physical

    layer = context.layers[layer_name]
    if isinstance(layer, physical.FileLayer):
        return [Piece(0, layer_name, 0, layer.maximum_address + 1)]
    if isinstance(layer, intel.Intel):
        raise NotFileBacked(f"{layer_name} is a virtual (Intel) layer")
    if not isinstance(layer, interfaces.layers.TranslationLayerInterface):
        raise NotFileBacked(f"{layer_name} ({type(layer).__name__}) is not backed by a file")
    _check_segments(layer)
    low, high = layer.minimum_address, layer.maximum_address
    return sorted(_map_range(context, layer_name, low, high - low + 1), key=lambda p: p.address)


def _check_segments(layer: Any) -> None:
    """Refuse segment tables Volatility's `mapping()` cannot walk to an end.

    A segmented layer's table comes straight from the file's header: an empty
    segment makes `mapping()` loop without advancing, and overlapping ones make it
    revisit memory. Real dumps have neither.
    """
    segments = getattr(layer, "_segments", None)
    if not isinstance(segments, list):
        return
    segments.sort()  # Volatility's lookups bisect this table; ELF cores need not be sorted
    end = -1
    for address, _mapped, length, _mapped_length in segments:
        if length <= 0:
            raise ValueError(f"a memory range at {address:#x} is empty")
        if address < end:
            raise ValueError(f"memory ranges overlap or are out of order at {address:#x}")
        end = address + length


def _map_range(context: Any, layer_name: str, address: int, length: int) -> Iterator[Piece]:
    from volatility3.framework.layers import intel, physical

    layer = context.layers[layer_name]
    for offset, size, mapped, mapped_size, sub in layer.mapping(
        address, length, ignore_errors=True
    ):
        if mapped_size != size:
            raise NotFileBacked(f"{layer_name} stores {sub} data transformed (compressed?)")
        below = context.layers[sub]
        if isinstance(below, physical.FileLayer):
            yield Piece(offset, sub, mapped, size)
        elif isinstance(below, intel.Intel):
            raise NotFileBacked(f"{layer_name} maps onto a virtual layer")
        else:
            for piece in _map_range(context, sub, mapped, size):
                yield Piece(
                    offset + piece.address - mapped,
                    piece.file_layer,
                    piece.file_offset,
                    piece.length,
                )


def file_layer_path(layer: Any) -> str | None:
    """The local path a FileLayer reads, if its bytes are exactly that file's bytes.

    Volatility opens URLs and transparently decompresses gzip/bzip2/xz files, in which
    case the layer's bytes are not the file's: the sizes and a probe of both ends must
    agree before we mmap the file in its place.
    """
    import urllib.parse
    import urllib.request  # here: 10 ms of every run's start-up, for Volatility's layers only

    parsed = urllib.parse.urlparse(layer.location)
    if parsed.scheme != "file" or "!" in parsed.path:
        return None
    path = urllib.request.url2pathname(parsed.path)
    try:
        with InputFile.open(path) as source:
            size = source.size
            if size != layer.maximum_address + 1 or size == 0:
                return None
            probe = min(PAGE_SIZE, size)
            head = source.pread(0, probe)
            tail = source.pread(size - probe, probe)
        if layer.read(0, probe) != head or layer.read(size - probe, probe) != tail:
            return None
    except (OSError, InputError):
        return None
    return path


# No machine addresses physical memory past 52 bits; a piece claiming to is a corrupt map.
PHYSICAL_LIMIT = 1 << 52


def runs_from_pieces(
    pieces: Iterable[Piece], file_size: int, address_limit: int = PHYSICAL_LIMIT
) -> tuple[list[Run], list[str]]:
    """Page-aligned runs (contiguous pieces merged) and notes on what had to be left out.

    A piece that starts or ends inside a page loses that partial page: the scanner judges
    whole 4096-byte pages, and in physical formats such fragments are rare (format
    padding, a BIOS hole not on a page boundary). Pieces running past the end of the file
    (a truncated dump) are cut at the last whole page the file holds.
    """
    runs: list[Run] = []
    partial = truncated = beyond = 0
    for piece in pieces:
        start = -(-piece.address // PAGE_SIZE) * PAGE_SIZE
        end = (piece.address + piece.length) // PAGE_SIZE * PAGE_SIZE
        if end > address_limit:
            beyond += end - max(start, address_limit)
            end = address_limit
        file_start = piece.file_offset + (start - piece.address)
        if end <= start:
            partial += piece.length
            continue
        partial += piece.length - (end - start)
        available = max(0, file_size - file_start) // PAGE_SIZE * PAGE_SIZE
        if end - start > available:
            truncated += end - start - available
            end = start + available
            if end <= start:
                continue
        if runs:
            last = runs[-1]
            if last.address + last.length == start and last.file_offset + last.length == file_start:
                runs[-1] = Run(last.address, last.file_offset, last.length + end - start)
                continue
        runs.append(Run(start, file_start, end - start))
    notes = []
    if beyond:
        notes.append(
            f"{beyond} bytes mapped beyond the 52-bit physical address space are not scanned"
        )
    if partial:
        notes.append(f"{partial} bytes in partial pages at range edges are not scanned")
    if truncated:
        notes.append(
            f"the file is truncated: {truncated // PAGE_SIZE} pages the dump describes are "
            "missing and not scanned"
        )
    return runs, notes


def physical_image(
    source: InputFile,
    fmt: str,
    build: Callable[[Any, str], Any],
    what: str,
) -> MemoryImage:
    """A MemoryImage of a container format: Volatility's layer gives the map, we read the
    bytes.

    `build(context, file_layer_name)` constructs the format's layer; its format errors
    become one-line InputErrors naming the file. Our readers check every count and size
    a header states before Volatility loops over it; whatever Volatility still trips on
    in a corrupt file is a malformed file, never a traceback.
    """
    path, file_size = source.path, source.size
    context = new_context()
    base = add_file_layer(context, path, "evidence")
    try:
        layer = build(context, base)
        pieces = file_pieces(context, layer.name)
    except InputError:
        raise
    except NotFileBacked as exc:
        raise InputError(path, f"{what} cannot be read directly: {exc}") from None
    except RecursionError:
        raise InputError(path, f"malformed {what}: its structures nest without end") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure of hostile input
        raise InputError(path, f"malformed {what}: {_plain(exc)}") from None
    if any(p.file_layer != base for p in pieces):
        raise InputError(path, f"{what}: memory stored outside this file is not supported")
    runs, notes = runs_from_pieces(pieces, file_size)
    if not runs:
        raise InputError(path, f"{what} holds no whole page of memory")
    image = MemoryImage(path=path, format=fmt, runs=runs, file_size=file_size, source=source)
    image.details["segments"] = len(pieces)
    image.notes.extend(notes)
    return image


def _plain(exc: Exception) -> str:
    """Volatility's message when it has one; else what kind of value was wrong."""
    text = str(exc).strip()
    kind = {
        "OverflowError": "a value is out of range",
        "struct.error": "a structure is cut short",
        "IndexError": "a structure is cut short",
        "ZeroDivisionError": "a size is zero",
        "MemoryError": "a size is impossibly large",
    }.get(type(exc).__name__ if not isinstance(exc, struct.error) else "struct.error")
    if kind:
        return kind
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class LayerImage(MemoryImage):
    """A MemoryImage read through a Volatility layer, for layers not backed by one file.

    Slower than mmap (every window is copied by `layer.read`), and tied to a live
    Volatility context, so it is scanned in this process only.
    """

    context: Any = None
    layer_name: str = ""
    pieces: list[Piece] = field(default_factory=list)

    @property
    def parallel_ok(self) -> bool:
        return False

    @contextmanager
    def words(self, window: Window) -> Iterator[np.ndarray]:
        data = self.context.layers[self.layer_name].read(window.address, window.length, pad=True)
        yield np.frombuffer(data, dtype="<u4").reshape(-1, PAGE_SIZE // 4)

    def read(self, address: int, length: int) -> bytes:
        for run in self.runs:
            if run.address <= address < run.address + run.length:
                length = min(length, run.address + run.length - address)
                return self.context.layers[self.layer_name].read(address, length, pad=True)
        return b""


def layer_image(context: Any, layer_name: str, label: str) -> LayerImage:
    """Runs of the valid, page-aligned stretches of any layer, read through the layer."""
    from volatility3.framework import interfaces

    layer = context.layers[layer_name]
    low, high = layer.minimum_address, layer.maximum_address
    if isinstance(layer, interfaces.layers.TranslationLayerInterface):
        spans = [
            Piece(offset, sub, offset, size)
            for offset, size, _m, _ms, sub in layer.mapping(low, high - low + 1, ignore_errors=True)
        ]
    else:
        spans = [Piece(low, layer_name, low, high - low + 1)]
    runs, notes = runs_from_pieces(spans, 1 << 64)
    # File offsets mean nothing here; windows carry the address and reads go to the layer.
    image = LayerImage(
        path=label, format="volatility-layer", runs=runs, context=context, layer_name=layer_name
    )
    image.notes.extend(notes)
    return image
