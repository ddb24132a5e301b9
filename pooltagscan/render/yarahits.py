"""Renderers of `scan --yara` hits: where a pattern is, and which pool tag holds it."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

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
)


def write_hits(
    fmt: str, out: TextIO, hits: Iterable[YaraHit], meta: dict[str, Any], dump: str | None = None
) -> int:
    """Stream hits in `fmt`; returns how many were written."""
    extra = {"dump": dump} if dump else {}
    count = 0
    if fmt == "json":
        out.write(json.dumps(meta)[:-1] + ', "yara_hits": [')
        for count, hit in enumerate(hits, 1):
            out.write(("\n  " if count == 1 else ",\n  ") + json.dumps({**extra, **hit.as_dict()}))
        out.write(f'\n], "count": {count}}}\n')
    elif fmt == "jsonl":
        for count, hit in enumerate(hits, 1):
            out.write(json.dumps({**extra, **hit.as_dict()}) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*extra, *FIELDS])
        for count, hit in enumerate(hits, 1):
            writer.writerow([*extra.values(), *hit.as_dict().values()])
    else:
        if dump:
            out.write(f"== {dump}\n")
        header = (
            f"{'Address':>14}  {'Rule':<28} {'String':<10} {'Tag':<6} {'Allocation':>14} "
            f"{'+Off':>7}  Context [match]\n"
        )
        for count, hit in enumerate(hits, 1):
            if count == 1:
                out.write(header)
            alloc = f"{hit.allocation:#x}" if hit.allocation is not None else "-"
            off = f"+{hit.offset_in_allocation:#x}" if hit.allocation is not None else "-"
            out.write(
                f"{hit.address:>#14x}  {hit.rule[:28]:<28} {hit.string[:10]:<10} "
                f"{hit.tag or '-':<6} {alloc:>14} {off:>7}  {hit.context}\n"
            )
        if count == 0:
            out.write("no YARA hits\n")
    return count
