"""Volatility 3's own symbol-less pool scan, as the speed and precision baseline.

Runs `PoolHeaderScanner` with the 15 constraints of `PoolScanner.builtin_constraints`
over a plain `FileLayer`, decoding headers with the handmade `poolheader-x64.json` (and
the Vista header class), which is what `windows.poolscanner` would use on Windows 10
if it were given no kernel symbols.
"""

from __future__ import annotations

import collections
import pathlib
import time
from collections.abc import Callable

from volatility3.framework import contexts
from volatility3.framework.layers import physical
from volatility3.framework.symbols import intermed
from volatility3.framework.symbols.windows.extensions import pool  # before poolscanner
from volatility3.plugins.windows import poolscanner


def volatility_pool_scan(
    path: str,
    isf: str = "poolheader-x64",
    progress: Callable[[float, str], None] | None = None,
    limit: int = 0,
) -> dict:
    """Scan `path` (its first `limit` bytes if set); return hits, hits per tag, seconds, MB/s.

    Volatility turns every literal tag hit into an object, which costs about half a
    millisecond, so on dumps full of text a whole GiB takes tens of minutes; the limit
    lets the benchmark measure a representative prefix of a repetitive dump instead.
    """
    ctx = contexts.Context()
    ctx.config["bench.layer.location"] = pathlib.Path(path).resolve().as_uri()
    layer = physical.FileLayer(ctx, "bench.layer", "raw")
    ctx.add_layer(layer)
    table = intermed.IntermediateSymbolTable.create(
        ctx,
        "bench.poolheader",
        "windows",
        isf,
        class_types={"_POOL_HEADER": pool.POOL_HEADER_VISTA},
    )
    constraints = poolscanner.PoolScanner.builtin_constraints(table)
    scanner = poolscanner.PoolHeaderScanner(
        ctx.module(table, layer_name="raw", offset=0),
        {c.tag: c for c in constraints},
        8 if isf == "poolheader-x86" else 16,
    )
    start = time.perf_counter()
    per_tag: collections.Counter[bytes] = collections.Counter()
    offsets = []
    size = layer.maximum_address + 1
    if limit:
        size = min(size, limit)
    sections = [(0, size)]
    for constraint, header in layer.scan(ctx, scanner, progress or (lambda *_: None), sections):
        per_tag[constraint.tag] += 1
        offsets.append(header.vol.offset)
    seconds = time.perf_counter() - start
    return {
        "constraints": len(constraints),
        "hits": len(offsets),
        "per_tag": {k.decode("latin-1"): v for k, v in sorted(per_tag.items())},
        "offsets": offsets,
        "scanned_bytes": size,
        "seconds": seconds,
        "mb_per_s": size / 1e6 / seconds,
    }


def main() -> None:
    """Run as a script so the benchmark can time Volatility in a fresh process: inside a
    process already holding millions of objects, its per-hit object creation slows down
    by an order of magnitude (garbage-collection passes over everything alive)."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("dump")
    ap.add_argument("--limit-mib", type=int, default=0)
    ap.add_argument("--isf", default="poolheader-x64")
    args = ap.parse_args()
    print(json.dumps(volatility_pool_scan(args.dump, args.isf, limit=args.limit_mib << 20)))


if __name__ == "__main__":
    main()
