"""Build deterministic synthetic physical memory images with planted pool allocations.

Each family image is a flat file of 4096-byte pages: ~40% pool pages (legacy small-pool chains
or segment heap LFH/VS subsegments scattered over physical pages) and ~60% decoy pages (text,
UTF-16, x64 code, pointer arrays, random, zeros, page tables, big-pool data). A JSON manifest
records every planted POOL_HEADER, so recall and precision of a scanner can be measured exactly.

    python samples/make_samples.py [--out DIR] [--family NAME ...]

Tests and benchmarks import this file by path: FAMILIES, build_family, write_bench_dump,
self_check, manifest_text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the gen_* helpers live next to this file, not in a package
    sys.path.insert(0, str(HERE))

from gen_common import PAGE, Spec, header_like, legacy_chain, page_is_clean, tag_text
from gen_images import plant_images
from gen_pages import NON_POOL_MAKERS, NON_POOL_WEIGHTS
from gen_paging import PAGING, plant_page_tables
from gen_pool import Record, legacy_page, lfh_subsegment, vs_subsegment
from gen_tables import BIG_FORMATS, TRACKER_FORMATS, big_page_table, tracker_table

SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("xp-x86", "x86", "xp", True, "tail", 0x5A3E01,
             (0x8100, 0x8600, 0x8900, 0xE100, 0xE200, 0xF700)),
        Spec("win7-x86", "x86", "vista", True, "tail", 0x5A3E02,
             (0x8200, 0x8400, 0x8500, 0x8700, 0x9000, 0xA000)),
        Spec("win7-x64", "x64", "vista", True, "pointer", 0x5A3E03,
             (0xFFFFFA80, 0xFFFFF8A0, 0xFFFFF800, 0xFFFFF880, 0xFFFFFA60)),
        Spec("win10-1809-x64", "x64", "vista", False, "encoded", 0x5A3E04,
             (0xFFFF8B0C, 0xFFFFA08F, 0xFFFFF802, 0xFFFFC081, 0xFFFF9E86)),
        Spec("win11-segheap-x64", "x64-segment-heap", "segment-heap", False, "encoded",
             0x5A3E05, (0xFFFF9A01, 0xFFFFB50E, 0xFFFFF806, 0xFFFFCE02, 0xFFFF8004)),
    )
}  # fmt: skip
FAMILIES: tuple[str, ...] = tuple(SPECS)
DEFAULT_PAGES = 512  # 2 MiB samples
POOL_SHARE = 0.4
POOL_KINDS = frozenset(("pool-legacy", "lfh", "vs"))
TABLE_KINDS = frozenset(("bigpage-table", "tracker-table"))
BENCH_UNIT_PAGES = 4096  # 16 MiB built once and repeated by write_bench_dump
_POOL_SLOT = "@pool"
_FIELDS = ("offset", "tag", "protected", "size", "pool", "state", "kind", "truth")


# ---------------------------------------------------------------- building


def _page_plan(rng: np.random.Generator, pages: int) -> list[str]:
    """Kind of every physical page: pool slots and each decoy kind at its share, shuffled."""
    n_pool = round(pages * POOL_SHARE)
    n_other = pages - n_pool
    counts = {k: max(1, int(w * n_other)) for k, w in NON_POOL_WEIGHTS.items()}
    counts["pointers"] += n_other - sum(counts.values())
    kinds = [_POOL_SLOT] * n_pool + [k for k, c in counts.items() for _ in range(c)]
    return [kinds[i] for i in rng.permutation(pages).tolist()]


def _clean_page(rng: np.random.Generator, spec: Spec, kind: str) -> bytes:
    """A decoy page that holds nothing a scanner may rightly take for a header (rare redraws)."""
    for _ in range(100):
        page = NON_POOL_MAKERS[kind](rng, spec)
        if page_is_clean(page, spec):
            return page
    raise RuntimeError(f"{spec.name}: cannot make a clean {kind} page")


def _segment_heap(rng: np.random.Generator, spec: Spec, n_pages: int
                  ) -> tuple[list[bytes], list[str], list[tuple[int, Record]]]:  # fmt: skip
    """Virtual pages of LFH and VS subsegments, their kinds and (virtual page, record) pairs."""
    vpages: list[bytes] = []
    vkinds: list[str] = []
    vrecs: list[tuple[int, Record]] = []
    while len(vpages) < n_pages:
        left = n_pages - len(vpages)
        if left == 1 or rng.random() < 0.55:
            data, recs = lfh_subsegment(rng, spec, left)
            kind = "lfh"
        else:
            data, recs = vs_subsegment(rng, spec, left)
            kind = "vs"
        first = len(vpages)
        for at in range(0, len(data), PAGE):
            vpages.append(data[at : at + PAGE])
            vkinds.append(kind)
        for rec in recs:
            vrecs.append((first + rec[0] // PAGE, (rec[0] % PAGE,) + rec[1:]))
    return vpages, vkinds, vrecs


def _build(spec: Spec, pages: int, seed: int, tables: bool = True, images: bool = False
           ) -> tuple[bytearray, list[str], list[Record], dict]:  # fmt: skip
    """Image, page kinds, allocation records (absolute offsets, sorted) and the kernel
    tables planted (big-page table entries, tracker rows; none with `tables` off: their
    pages stay decoys). With `images`, driver images loaded in kernel space on pages
    appended after `pages` (gen_images; the pages before keep their bytes)."""
    if pages < 64:
        raise ValueError("an image needs at least 64 pages to hold every page kind")
    rng = np.random.default_rng(seed)
    plan = _page_plan(rng, pages)
    image = bytearray(pages * PAGE)
    slots = [i for i, k in enumerate(plan) if k == _POOL_SLOT]
    recs: list[Record] = []
    if spec.layout == "x64-segment-heap":
        vpages, vkinds, vrecs = _segment_heap(rng, spec, len(slots))
        phys = [slots[i] for i in rng.permutation(len(slots)).tolist()]  # scatter
        for v, data in enumerate(vpages):
            image[phys[v] * PAGE : (phys[v] + 1) * PAGE] = data
            plan[phys[v]] = vkinds[v]
        recs = [(phys[v] * PAGE + r[0],) + r[1:] for v, r in vrecs]
    else:
        for p in slots:
            data, page_recs = legacy_page(rng, spec)
            image[p * PAGE : (p + 1) * PAGE] = data
            plan[p] = "pool-legacy"
            recs.extend((p * PAGE + r[0],) + r[1:] for r in page_recs)
    recs.sort()
    planted = _plant_tables(rng, spec, image, plan, recs) if tables else {}
    for p, kind in enumerate(plan):
        if kind not in POOL_KINDS and kind not in TABLE_KINDS:
            image[p * PAGE : (p + 1) * PAGE] = _clean_page(rng, spec, kind)
    if tables and spec.name in PAGING:
        # Last, with a generator of its own: every other byte stays as it was.
        made = plant_page_tables(seed, PAGING[spec.name], image, plan, planted["bigpool"])
        if made is not None:
            planted["kernel_space"], planted["kernel_mappings"] = made
            if images:
                extra, loaded = plant_images(
                    seed, spec.layout, PAGING[spec.name], image, planted["kernel_space"]
                )
                planted["loader_list"] = loaded["loader_list"]
                planted["kernel_images"] = loaded["images"]
                for kind, data in extra:
                    image += data
                    plan.append(kind)
    return image, plan, recs, planted


def _scatter(rng: np.random.Generator, plan: list[str], data: bytes, kind: str) -> list[int]:
    """Put a virtually contiguous table on random decoy pages; their physical numbers."""
    phys = []
    for _ in range(len(data) // PAGE):
        # Take a page of a decoy kind that keeps at least two, so every kind stays.
        counts: dict[str, int] = {}
        for k in plan:
            counts[k] = counts.get(k, 0) + 1
        spare = [i for i, k in enumerate(plan) if k in NON_POOL_MAKERS and counts[k] > 2]
        p = spare[int(rng.integers(len(spare)))]
        plan[p] = kind
        phys.append(p)
    return phys


def _entry_at(phys: list[int], virtual: int, size: int) -> tuple[int, bool]:
    """Physical address of a table entry and whether it runs into the next page."""
    return phys[virtual // PAGE] * PAGE + virtual % PAGE, virtual % PAGE + size > PAGE


def _plant_tables(rng: np.random.Generator, spec: Spec, image: bytearray, plan: list[str],
                  recs: list[Record]) -> dict[str, Any]:  # fmt: skip
    """A big-page table and a tracker table that agrees with what was planted, except
    for two tags made to disagree on purpose (manifest `tracker_anomalies`)."""
    big, big_entries = big_page_table(rng, spec)
    big_phys = _scatter(rng, plan, big, "bigpage-table")
    size = BIG_FORMATS[spec.name][0]
    for v, p in enumerate(big_phys):
        image[p * PAGE : (p + 1) * PAGE] = big[v * PAGE : (v + 1) * PAGE]
    bigpool = []
    for e in big_entries:
        entry, crosses = _entry_at(big_phys, e["index"] * size, size)
        bigpool.append({"offset": e["va"], "entry": entry, "tag": e["tag"],
                        "protected": e["protected"], "size": e["size"], "pool": e["pool"],
                        "state": e["state"], "crosses": crosses})  # fmt: skip
    # Outstanding blocks per tag and pool, as the kernel would count them.
    live: dict[str, dict[str, list[int]]] = {}
    observed_allocated: dict[str, int] = {}
    for r in recs:
        a = dict(zip(_FIELDS, r))
        if a["state"] == "allocated":
            observed_allocated[a["tag"]] = observed_allocated.get(a["tag"], 0) + 1
        if a["truth"] != "allocated":
            continue
        slot = live.setdefault(a["tag"], {}).setdefault(a["pool"], [0, 0])
        slot[0] += 1
        slot[1] += a["size"]
    for e in bigpool:
        if e["state"] == "allocated":
            observed_allocated[e["tag"]] = observed_allocated.get(e["tag"], 0) + 1
            pool = "paged" if e["pool"] == "paged" else "nonpaged"
            slot = live.setdefault(e["tag"], {}).setdefault(pool, [0, 0])
            slot[0] += 1
            slot[1] += e["size"]
    proven = sorted(t for t, n in observed_allocated.items() if n >= 2 and t in live)
    untracked, exceeds = proven[0], proven[-1]
    del live[untracked]
    live[exceeds] = {}
    table, rows = tracker_table(rng, spec, live, frozenset((untracked,)))
    track_phys = _scatter(rng, plan, table, "tracker-table")
    for v, p in enumerate(track_phys):
        image[p * PAGE : (p + 1) * PAGE] = table[v * PAGE : (v + 1) * PAGE]
    tsize = TRACKER_FORMATS[spec.name][0]
    tracker = []
    for row in rows:
        entry, crosses = _entry_at(track_phys, row.pop("index") * tsize, tsize)
        tracker.append({**row, "entry": entry, "crosses": crosses})
    return {
        "bigpool": sorted(bigpool, key=lambda e: e["entry"]),
        "tracker": sorted(tracker, key=lambda r: r["entry"]),
        "tracker_anomalies": {"untracked": untracked, "exceeds": exceeds},
    }


def build_family(name: str, pages: int = DEFAULT_PAGES, seed: int | None = None
                 ) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """(image, manifest) of one family; same arguments, same bytes."""
    spec = SPECS[name]
    seed = spec.seed if seed is None else seed
    image, plan, recs, tables = _build(spec, pages, seed, images=True)
    data = bytes(image)
    kinds: dict[str, int] = {}
    for kind in plan:
        kinds[kind] = kinds.get(kind, 0) + 1
    manifest = {
        "family": name,
        "layout": spec.layout,
        "pooltype_encoding": spec.encoding,
        "page_size": PAGE,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "seed": seed,
        "page_kinds": dict(sorted(kinds.items())),
        "pages": plan,
        **tables,
        "allocations": [dict(zip(_FIELDS, r)) for r in recs],
    }
    return data, manifest


def manifest_text(manifest: dict[str, Any]) -> str:
    """JSON with one allocation per line, so a regenerated manifest diffs readably."""
    listed = ("bigpool", "tracker", "kernel_mappings", "kernel_images", "allocations")
    head = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in manifest.items() if k not in listed]
    for key in listed:
        if key in manifest:
            items = ",\n".join(json.dumps(a) for a in manifest[key])
            head.append(f"{json.dumps(key)}: [\n{items}\n]")
    return "{\n" + ",\n".join(head) + "\n}\n"


def write_bench_dump(path: str | Path, family: str, size_bytes: int) -> dict[str, Any]:
    """Write a large dump by repeating one 16 MiB unit (bounded memory, seconds per GiB).

    Offsets of the planted headers repeat with the unit; "allocations" counts every planted
    header whose bytes lie inside the file (the last unit may be cut short). Like a real
    machine's memory, the dump holds one big-page table and one tracker table: in the
    first unit only (the others have decoys on those pages; same pool pages).
    """
    if size_bytes <= 0:
        raise ValueError("size_bytes must be positive")
    spec = SPECS[family]
    unit_pages = min(BENCH_UNIT_PAGES, max(64, -(-size_bytes // PAGE)))
    first, _plan, recs, planted = _build(spec, unit_pages, spec.seed)
    image = _build(spec, unit_pages, spec.seed, tables=False)[0]
    offsets = np.fromiter((r[0] for r in recs), dtype=np.int64, count=len(recs))
    del recs, _plan
    full, rest = divmod(size_bytes, len(image))
    with open(path, "wb") as out:
        out.writelines(first if i == 0 else image for i in range(full))
        if rest:
            out.write(memoryview(first if full == 0 else image)[:rest])
    count = full * len(offsets) + int(np.count_nonzero(offsets + spec.unit <= rest))
    big = sum(1 for e in planted["bigpool"] if not e["crosses"]) if full else 0
    return {"family": family, "size": size_bytes, "allocations": count,
            "unit_size": len(image), "bigpool": big}  # fmt: skip


# ---------------------------------------------------------------- self-check


def _decode(image: bytes, off: int, spec: Spec) -> tuple[bytes, int, int, int, int]:
    """(tag bytes, PreviousSize, PoolIndex, BlockSize, PoolType) of the header at off."""
    if spec.x86:
        w0, w1 = struct.unpack_from("<HH", image, off)
        return image[off + 4 : off + 8], w0 & 0x1FF, w0 >> 9, w1 & 0x1FF, w1 >> 9
    prev, index, bs, ptype = image[off : off + 4]
    return image[off + 4 : off + 8], prev, index, bs, ptype


def _observed(spec: Spec, ptype: int, kind: str) -> tuple[str, str]:
    """(pool, state) a symbol-less scanner can read from the PoolType byte."""
    if spec.encoding == "xp":
        if ptype == 0:
            return "unknown", "free"
        return ("nonpaged" if ptype & 1 else "paged"), "allocated"
    pool = "paged" if ptype & 1 else "nonpaged"
    if spec.encoding == "vista":
        return pool, "allocated" if ptype & 2 else "free"
    return pool, "allocated" if kind == "vs" else "unknown"


def _check_allocation(image: bytes, spec: Spec, a: dict[str, Any]) -> str | None:
    off = a["offset"]
    if off % spec.unit or off + spec.unit > len(image):
        return "misplaced"
    raw, prev, index, bs, ptype = _decode(image, off, spec)
    protected = spec.protected and raw[3] & 0x80 and all(0x20 <= b <= 0x7E for b in raw[:3])
    if protected:
        raw = raw[:3] + bytes([raw[3] & 0x7F])
    pool, state = _observed(spec, ptype, a["kind"])
    got = {"tag": tag_text(raw), "protected": bool(protected), "size": bs * spec.unit,
           "pool": pool, "state": state}  # fmt: skip
    diff = [f"{k} {a[k]!r} != {v!r}" for k, v in got.items() if a[k] != v]
    if spec.layout == "x64-segment-heap":
        if prev or index or (ptype & 0x92) != 2:
            diff.append(f"segment heap header fields {prev} {index} {ptype:#x}")
        if a["kind"] in ("vs", "vs-stale") and off % PAGE == PAGE - 16:
            diff.append("VS header in a page's last 16 bytes")
    truth_ok = a["truth"] == ("freed" if state == "free" else "allocated") or state == "unknown"
    if not truth_ok:
        diff.append(f"truth {a['truth']} with state {state}")
    return "; ".join(diff) or None


def self_check(image: bytes, manifest: dict[str, Any]) -> list[str]:
    """Problems in an image/manifest pair; empty when the ground truth is exact.

    Beyond consistency, it looks for headers nobody planted: for the segment heap, every
    16-byte slot passing the loose header test must be planted; for legacy layouts, every page
    whose offset-0 header starts a chain summing to 4096 must be a planted pool page.
    """
    problems: list[str] = []
    spec = SPECS.get(manifest.get("family", ""))
    if spec is None:
        return [f"unknown family {manifest.get('family')!r}"]
    if manifest["size"] != len(image) or len(image) % PAGE:
        problems.append(f"size {manifest['size']} vs image {len(image)}")
    if manifest["sha256"] != hashlib.sha256(image).hexdigest():
        problems.append("sha256 does not match the image")
    plan = manifest["pages"]
    if len(plan) != len(image) // PAGE:
        problems.append(f"{len(plan)} page kinds for {len(image) // PAGE} pages")
    counted: dict[str, int] = {}
    for kind in plan:
        counted[kind] = counted.get(kind, 0) + 1
    if counted != manifest["page_kinds"]:
        problems.append("page_kinds does not match pages")
    missing = set(NON_POOL_MAKERS) - set(counted)
    if missing:
        problems.append(f"page kinds missing: {sorted(missing)}")
    allocs = manifest["allocations"]
    offsets = [a["offset"] for a in allocs]
    if offsets != sorted(set(offsets)):
        problems.append("allocations not sorted or duplicated")
    by_page: dict[int, list[int]] = {}
    for a in allocs:
        page = a["offset"] // PAGE
        if page >= len(plan) or plan[page] not in POOL_KINDS:
            problems.append(f"{a['offset']:#x}: allocation outside a pool page")
            continue
        by_page.setdefault(page, []).append(a["offset"] % PAGE)
        bad = _check_allocation(image, spec, a)
        if bad:
            problems.append(f"{a['offset']:#x}: {bad}")
    if spec.layout == "x64-segment-heap":
        q = np.frombuffer(image, dtype="<u8", count=len(image) // 8)[::2]
        hits = (np.flatnonzero(header_like(q)) * 16).tolist()
        planted = set(offsets)
        problems += [f"{h:#x}: header-like slot nobody planted" for h in hits if h not in planted]
        printable = {a["offset"] for a in allocs if "\\x" not in a["tag"]}
        problems += [f"{o:#x}: planted header fails the loose test"
                     for o in sorted(printable - set(hits))]  # fmt: skip
    else:
        for p in range(len(image) // PAGE):
            chain = legacy_chain(memoryview(image)[p * PAGE : (p + 1) * PAGE], spec.x86)
            if plan[p] == "pool-legacy":
                if chain != by_page.get(p):
                    problems.append(f"page {p}: chain {chain} != planted {by_page.get(p)}")
            elif chain is not None:
                problems.append(f"page {p} ({plan[p]}): a pool chain nobody planted")
    return problems


# ---------------------------------------------------------------- command line


def _summary(manifest: dict[str, Any]) -> str:
    tally: dict[str, int] = {}
    for a in manifest["allocations"]:
        key = f"{a['kind']}/{a['state']}/{a['truth']}"
        tally[key] = tally.get(key, 0) + 1
    parts = ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
    return f"{len(manifest['allocations'])} allocations ({parts})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "dumps", help="output directory")
    parser.add_argument("--family", action="append", choices=FAMILIES,
                        help="family to build (repeatable; default: all)")  # fmt: skip
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    for name in args.family or FAMILIES:
        start = time.perf_counter()
        image, manifest = build_family(name)
        problems = self_check(image, manifest)
        (args.out / f"{name}.raw").write_bytes(image)
        (args.out / f"{name}.json").write_text(manifest_text(manifest), encoding="ascii")
        took = time.perf_counter() - start
        print(f"{name}: {_summary(manifest)} in {took:.2f}s")
        for problem in problems:
            print(f"  PROBLEM {problem}", file=sys.stderr)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
