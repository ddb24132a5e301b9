"""The view of `scan --yara` hits: where a pattern is, and which pool tag holds it.

Hits come while the scan runs, so every format streams them: one JSON item per line, a
table of fixed widths whose heading comes with the first hit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pooltagscan.render.view import Column, Table, View
from pooltagscan.yarascan import YaraHit

FIELDS = (
    "rule",
    "string",
    "address",
    "data",
    "tag",
    "allocation",
    "allocation_size",
    "offset_in_allocation",
    "offset_in_allocation_hex",
    "length",
    "ascii",
    "utf16",
    "before",
    "after",
    "context",
    "virtual_address",
)
_COLUMNS = (
    # 18: a 64-bit kernel virtual address in full (minidump hits, big-pool allocations).
    Column("Address", right=True, width=18),
    Column("Rule", width=28, cut=""),
    Column("String", width=10, cut="", sep=" "),
    Column("Tag", width=6, cut=None, sep=" "),
    Column("Allocation", right=True, width=18, sep=" "),
    Column("+Off", right=True, width=7, sep=" "),
    Column("Context [match]"),
)


class YaraHitsView(View):
    """YARA hits of one dump, as they are found; `dump` names the dump on every hit (and
    above the table) when a run scans several."""

    fields = FIELDS
    rows_key = "yara_hits"
    stream_json = True

    def __init__(
        self, hits: Iterable[YaraHit], meta: dict[str, Any], dump: str | None = None
    ) -> None:
        super().__init__(hits, {"dump": dump} if dump else None, dump or None)
        self.meta = meta

    def records(self, row: YaraHit) -> Iterable[dict[str, Any]]:
        return (row.as_dict(),)

    def head(self) -> dict[str, Any]:
        return self.meta

    def table(self) -> Table:
        return Table(
            _COLUMNS,
            (_cells(hit) for hit in self.rows),
            empty="no YARA hits",
            fixed=True,
            dashes=False,
            rstrip=False,
        )


def _cells(hit: YaraHit) -> tuple[str, ...]:
    held = hit.allocation is not None
    return (
        f"{hit.address:#x}",
        hit.rule,
        hit.string,
        hit.tag or "-",
        f"{hit.allocation:#x}" if held else "-",
        f"+{hit.offset_in_allocation:#x}" if held else "-",
        hit.context,
    )
