"""Our reading of the header layouts, checked against an outside decoder.

Volatility 3 ships handmade ISF descriptions of `_POOL_HEADER` (x86, x64, x64-win7) with
header classes that say free/paged/nonpaged. Every header our scanner reports on the
samples must decode through them to the same BlockSize, PoolType class and tag.
"""

from __future__ import annotations

import pytest
from conftest import DUMPS
from test_scan_samples import FAMILIES, scan_family

pytest.importorskip("volatility3")

from volatility3.framework import contexts
from volatility3.framework.layers import physical
from volatility3.framework.symbols import intermed
from volatility3.framework.symbols.windows.extensions import pool

from pooltagscan.tags.patterns import tag_to_bytes

# Which handmade ISF and header class Volatility itself would pick for each family.
VOLATILITY_TYPES = {
    "xp-x86": ("poolheader-x86", pool.POOL_HEADER, 8),
    "win7-x86": ("poolheader-x86", pool.POOL_HEADER_VISTA, 8),
    "win7-x64": ("poolheader-x64-win7", pool.POOL_HEADER_VISTA, 16),
    "win10-1809-x64": ("poolheader-x64", pool.POOL_HEADER_VISTA, 16),
    "win11-segheap-x64": ("poolheader-x64", pool.POOL_HEADER_VISTA, 16),
}


def volatility_headers(family: str):
    ctx = contexts.Context()
    ctx.config["xcheck.layer.location"] = (DUMPS / f"{family}.raw").resolve().as_uri()
    ctx.add_layer(physical.FileLayer(ctx, "xcheck.layer", "raw"))
    isf, cls, unit = VOLATILITY_TYPES[family]
    table = intermed.IntermediateSymbolTable.create(
        ctx, "xcheck.table", "windows", isf, class_types={"_POOL_HEADER": cls}
    )
    return lambda offset: ctx.object(table + "!_POOL_HEADER", "raw", offset), unit


@pytest.mark.parametrize("family", FAMILIES)
def test_headers_decode_alike(family):
    header_at, unit = volatility_headers(family)
    _, found = scan_family(family)
    assert found
    for offset, record in found.items():
        header = header_at(offset)
        assert header.BlockSize * unit == record["size"], hex(offset)
        raw_tag = int(header.PoolTag).to_bytes(4, "little")
        if record["protected"]:
            assert raw_tag[3] & 0x80
            raw_tag = raw_tag[:3] + bytes([raw_tag[3] & 0x7F])
        assert tag_to_bytes(record["tag"]) == raw_tag, hex(offset)
        if header.is_free_pool():
            assert record["state"] == "free", hex(offset)
        elif header.is_paged_pool():
            assert record["pool"] == "paged", hex(offset)
        else:
            assert header.is_nonpaged_pool()
            assert record["pool"] == "nonpaged", hex(offset)
