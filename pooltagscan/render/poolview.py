"""The view of `pooltagscan pool`, in text and JSON (see pooltagscan.poolview)."""

from __future__ import annotations

from typing import Any

from pooltagscan.poolview import PoolBlock, PoolView
from pooltagscan.render.hexdump import hexdump_lines
from pooltagscan.render.view import Column, Table, View
from pooltagscan.render.writers import formats

FORMATS = formats("table", "json")
_COLUMNS = (
    Column(""),
    *(Column(h, right=True) for h in ("Address", "Size", "PrevSize")),
    *(Column(h) for h in ("State", "Pool", "Tag", "Confidence", "Owner")),
    Column("Description", width=48),
)


def headline(view: PoolView, dump: str) -> str:
    """One sentence: where the address lies, or that nothing holds it."""
    held = view.holding
    translated = f"{view.address:#x} {view.translation_text}; " if view.translation_text else ""
    if held is None:
        if view.translation_text and view.page is None:
            where = view.translation_text
        elif view.page is None:
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
        if view.translation_text and view.page is not None:
            where = f"it {view.translation_text}, where {where}"
        return f"{dump}: no pool allocation holds {view.address:#x}: {where}{table}"
    if held.source == "bigpool":
        return (
            f"{view.address:#x} is {view.offset_in_block:#x} bytes into the big-pool "
            f"allocation at {held.offset:#x} ({held.size:#x} bytes; big-page table entry at "
            f"{held.entry:#x}; found by a full scan of {dump})"
        )
    return (
        f"{translated}{view.address:#x} is {view.offset_in_block:#x} bytes into the block at "
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


class PoolPageView(View):
    """The block holding an address and the blocks of its page (`pool`): a JSON
    document, or a headline above the `!pool`-like table and the hexdump below it."""

    json_indent = 2

    def __init__(self, view: PoolView, meta: dict[str, Any], hexdump: bool) -> None:
        super().__init__(view.blocks)
        self.view, self.meta, self.hexdump = view, meta, hexdump

    def document(self) -> dict[str, Any]:
        return as_document(self.view, self.meta, self.hexdump)

    def table(self) -> Table:
        view, dump = self.view, self.meta["dump"]
        lines = [headline(view, dump)] if view.holding is not None else []
        if view.blocks and view.holding is None:
            lines.append(f"page {view.page:#x} of {dump} (no block holds {view.address:#x}):")
        after = []
        if self.hexdump and view.holding is not None:
            after.append("")
            after.append(f"block {view.holding.offset:#x}, {view.holding.size:#x} bytes:")
            after.extend(f"({note})" for note in view.data_notes)
            if view.data:
                after.extend(hexdump_lines(view.holding.offset, view.data))
        rows = [_row(b) for b in view.blocks]
        return Table(_COLUMNS, rows, preamble=lines, postscript=after, empty="")


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
        "translation": view.translation,
    }
    if hexdump:
        doc["hexdump"] = {
            "address": view.holding.offset if view.holding else None,
            "data": view.data.hex() if view.data is not None else None,
            "notes": view.data_notes,
        }
    return doc
