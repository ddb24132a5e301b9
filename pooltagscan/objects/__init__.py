"""Object names for the records of `Proc`/`Thre`/`Driv`/`File`/`Muta` blocks.

`decode_records(prepared, records)` reads the blocks of these tags again (a minority of
any dump: one read of at most a page each) and decodes them (see `objects.decode`);
`hidden_objects` lists the processes and drivers found only in freed or unlinked blocks,
for the report. Nothing here prints.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pooltagscan.inputs.base import MemoryImage
from pooltagscan.layouts import LAYOUTS
from pooltagscan.objects.decode import (
    KIND_FIELDS,
    KINDS,
    OBJECT_FIELDS,
    Block,
    ObjectResult,
    ReadVirtual,
    Resolve,
    decode,
)
from pooltagscan.records import SOURCE_PAGE, STATE_NAMES, take
from pooltagscan.tags.patterns import tag_to_bytes

METHODS = ("auto", "table", "self")
OBJECT_TAG_VALUES = np.array(
    sorted(int.from_bytes(tag_to_bytes(t), "little") for t in KINDS), dtype=np.uint32
)


def object_records(records: np.ndarray) -> np.ndarray:
    """The records of object tags found in pool pages (big-pool ones are pages of other
    things: an object is far smaller than a page)."""
    keep = np.isin(records["tag"], OBJECT_TAG_VALUES) & (records["source"] == SOURCE_PAGE)
    return take(records, keep)


def _read_block(image: MemoryImage, offset: int, size: int) -> bytes:
    """The block's bytes, never past its page: the next physical page is unrelated
    memory (and a hostile BlockSize cannot make a large read)."""
    length = max(0, min(size, 4096 - offset % 4096))
    data = image.read(offset, length)
    return bytes(data[:length])


def accessors(prepared: Any) -> tuple[ReadVirtual | None, Resolve | None, list[str]]:
    """How to read kernel virtual memory and turn a kernel address into one of the
    scanned space: a minidump's space is already virtual; a physical dump needs its
    page tables (searched once, shared with the other views)."""
    image = prepared.image
    if image.format == "minidump":

        def read_min(va: int, length: int) -> bytes | None:
            data = image.read(va, length)
            return bytes(data) if len(data) == length else None

        def resolve_min(va: int) -> int | None:
            return va if len(image.read(va, 1)) == 1 else None

        return read_min, resolve_min, []
    space = prepared.kernel_space()
    if not space.available:
        return None, None, ["no kernel address space: " + "; ".join(space.notes)]
    tables = space.tables

    def read_phys(va: int, length: int) -> bytes | None:
        data, missing = tables.read(va, length)
        return None if missing else data

    def resolve_phys(va: int) -> int | None:
        t = tables.translate(va)
        return t.physical

    return read_phys, resolve_phys, []


def decode_records(
    prepared: Any, records: np.ndarray, method: str = "auto"
) -> tuple[ObjectResult, list[str]]:
    """Decode the object blocks among `records` (any records: the others are skipped);
    (result, notes)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {METHODS}")
    chosen = object_records(records)
    layout = LAYOUTS[prepared.config.family]
    arch = "x86" if layout.architecture == "x86" else "x64"
    blocks = []
    for offset, tag, size, state in zip(
        chosen["offset"].tolist(),
        chosen["tag"].tolist(),
        chosen["size"].tolist(),
        chosen["state"].tolist(),
    ):
        name = int(tag).to_bytes(4, "little").decode("latin-1")
        data = _read_block(prepared.image, offset, size)
        blocks.append(Block(offset, name, STATE_NAMES[state], data))
    notes: list[str] = []
    read = resolve = None
    if blocks:
        read, resolve, notes = accessors(prepared)
    return decode(blocks, arch, layout.unit, read, resolve, method), notes


def hidden_objects(result: ObjectResult) -> dict[str, list[dict[str, Any]]]:
    """Processes and drivers found only in freed or unlinked blocks.

    A process is known by (pid, name, create time) and a driver by (name, image base):
    one listed here has no allocated block that is still linked (a linked state of None,
    no address space to follow links with, counts as linked: no evidence of hiding)."""
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for offset, values in result.fields.items():
        kind = values["object"]
        if kind == "process":
            key = ("process", values["pid"], values["name"], values["create_time"])
        elif kind == "driver":
            key = ("driver", values["name"], values["image_base"])
        else:
            continue
        groups.setdefault(key, []).append((offset, values))
    out: dict[str, list[dict[str, Any]]] = {"processes": [], "drivers": []}
    for key, members in sorted(groups.items(), key=lambda kv: min(o for o, _ in kv[1])):
        live = [
            o for o, v in members if result.states.get(o) != "free" and v.get("linked") is not False
        ]
        if live:
            continue
        offset, values = min(members, key=lambda m: m[0])
        why = sorted(
            {"freed" if result.states.get(o) == "free" else "unlinked" for o, _ in members}
        )
        row = {k: values[k] for k in KIND_FIELDS[values["object"]] if k != "linked"}
        row |= {"offsets": sorted(o for o, _ in members), "found_in": why}
        out["processes" if key[0] == "process" else "drivers"].append(row)
    return out


__all__ = [
    "KINDS",
    "METHODS",
    "OBJECT_FIELDS",
    "ObjectResult",
    "decode_records",
    "hidden_objects",
    "object_records",
]
