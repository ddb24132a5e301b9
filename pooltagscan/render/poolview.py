"""Text and JSON views of `pooltagscan pool` (see pooltagscan.poolview)."""

from __future__ import annotations

import json
from typing import Any, TextIO

from pooltagscan.poolview import PoolBlock, PoolView
from pooltagscan.render.hexdump import hexdump_lines
from pooltagscan.render.table import format_table

FORMATS = ("table", "json")
HEADERS = ("", "Address", "Size", "PrevSize", "State", "Pool", "Tag", "Confidence", "Owner",
           "Description")  # fmt: skip
RIGHT = (False, True, True, True, False, False, False, False, False, False)


def headline(view: PoolView, dump: str) -> str:
    """One sentence: where the address lies, or that nothing holds it."""
    held = view.holding
    if held is None:
        if view.page is None:
            where = "the dump holds no page there"
        elif view.blocks:
            where = f"none of the {len(view.blocks)} block(s) of page {view.page:#x} spans it"
        else:
            where = f"page {view.page:#x} holds no pool header"
        table = (
            "; no big-page table entry spans it"
            if "bigpool" in view.searched
            else "; not a kernel virtual address, so the big-page table was not searched"
        )
        return f"{dump}: no pool allocation holds {view.address:#x}: {where}{table}"
    if held.source == "bigpool":
        return (
            f"{view.address:#x} is {view.offset_in_block:#x} bytes into the big-pool "
            f"allocation at {held.offset:#x} ({held.size:#x} bytes; big-page table entry at "
            f"{held.entry:#x}; found by a full scan of {dump})"
        )
    return (
        f"{view.address:#x} is {view.offset_in_block:#x} bytes into the block at "
        f"{held.offset:#x} ({held.size:#x} bytes); page {view.page:#x} of {dump} holds "
        f"{len(view.blocks)} block(s):"
    )


def _row(block: PoolBlock) -> list[str]:
    prev = "-" if block.previous_size is None else f"{block.previous_size:#x}"
    tag = block.tag + (" (protected)" if block.protected else "")
    return [
        "*" if block.holding else "",
        f"{block.offset:#x}",
        f"{block.size:#x}",
        prev,
        block.state,
        block.pool,
        tag,
        block.confidence,
        block.owner,
        block.description,
    ]


def render_table(view: PoolView, dump: str, hexdump: bool) -> str:
    lines = [headline(view, dump)] if view.holding is not None else []
    if view.blocks:
        if view.holding is None:
            lines.append(f"page {view.page:#x} of {dump} (no block holds {view.address:#x}):")
        lines.append(
            format_table(HEADERS, [_row(b) for b in view.blocks], RIGHT, max_width={9: 48})
        )
    if hexdump and view.holding is not None:
        lines.append("")
        lines.append(f"block {view.holding.offset:#x}, {view.holding.size:#x} bytes:")
        lines.extend(f"({note})" for note in view.data_notes)
        if view.data:
            lines.extend(hexdump_lines(view.holding.offset, view.data))
    return "\n".join(lines) + "\n" if lines else ""


def as_document(view: PoolView, meta: dict[str, Any], hexdump: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "pooltagscan-pool",
        "dump": meta["dump"],
        "format": meta["format"],
        "layout": meta["layout"],
        "address": view.address,
        "page": view.page,
        "searched": view.searched,
        "holding": view.holding.as_dict() if view.holding else None,
        "offset_in_block": view.offset_in_block,
        "blocks": [b.as_dict() for b in view.blocks],
    }
    if hexdump:
        doc["hexdump"] = {
            "address": view.holding.offset if view.holding else None,
            "data": view.data.hex() if view.data is not None else None,
            "notes": view.data_notes,
        }
    return doc


def write_pool_view(
    fmt: str, out: TextIO, view: PoolView, meta: dict[str, Any], hexdump: bool
) -> None:
    if fmt == "json":
        json.dump(as_document(view, meta, hexdump), out, indent=2)
        out.write("\n")
    else:
        out.write(render_table(view, meta["dump"], hexdump))
