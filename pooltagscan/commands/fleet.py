"""`pooltagscan fleet scan|stack|hunt|diff`: many dumps on a Dask cluster, as Parquet.

A thin shell over `pooltagscan.fleet`: it parses options, starts or joins the cluster,
and prints one line per dump on stderr (ok, failed with its error, skipped because an
earlier run scanned this very file). Dask and pyarrow are optional; without them the
fleet commands say how to install them, on one line.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from pooltagscan.commands.common import (
    EXIT_INPUT,
    EXIT_OK,
    UsageError,
    add_output_options,
    error,
    named,
    note,
    tag_list_inputs,
)

if TYPE_CHECKING:
    from pooltagscan.fleet.runner import DumpOutcome
    from pooltagscan.outputs import Outputs

DEFAULT_OUT = "pooltagscan-fleet"
MAX_LIST_BYTES = 64 << 20
VIEW_FORMATS = ("table", "json", "jsonl", "csv")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pooltagscan.scan import LAYOUT_CHOICES

    fleet = sub.add_parser(
        "fleet",
        help="scan many dumps on a Dask cluster into Parquet; stack, hunt and diff them",
        description="Fleet scale: scan hundreds of dumps as Dask tasks (an embedded local "
        "cluster, or --scheduler), keep per-tag statistics and provenance as Parquet, and "
        "ask fleet questions of them.",
    )
    verbs = fleet.add_subparsers(dest="verb", required=True, metavar="VERB")

    scan = verbs.add_parser(
        "scan",
        help="scan dumps into a fleet folder (incremental: unchanged dumps are skipped)",
        description="Scan every dump as Dask tasks (large dumps split into window ranges) "
        "and write per-tag statistics and provenance as Parquet to DIR.",
    )
    scan.add_argument("dumps", nargs="*", metavar="DUMP", help="memory dump file(s)")
    scan.add_argument("--list", metavar="FILE", help="a file of dump paths, one per line")
    scan.add_argument(
        "--out", metavar="DIR", default=DEFAULT_OUT, help=f"fleet folder (default: {DEFAULT_OUT})"
    )
    scan.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask scheduler (tcp://host:8786) whose workers see the same "
        "paths; default: a local cluster on this machine's cores",
    )
    scan.add_argument(
        "--workers", type=int, help="worker processes of the local cluster (default: all cores)"
    )
    scan.add_argument(
        "--records",
        action="store_true",
        help="also write every record as Parquet (written by the workers: they must see DIR)",
    )
    scan.add_argument(
        "--rescan", action="store_true", help="scan again dumps an earlier run already did"
    )
    scan.add_argument(
        "--no-hash",
        action="store_true",
        help="do not compute each dump's sha256 (it reads every dump a second time); the "
        "provenance row then holds null and the reason",
    )
    scan.add_argument(
        "--task-mib",
        type=int,
        default=256,
        metavar="MIB",
        help="MiB of a dump one task scans (default: 256)",
    )
    scan.add_argument(
        "--layout", choices=LAYOUT_CHOICES, default="auto", help="header family (default: detected)"
    )
    scan.add_argument(
        "--pooltag",
        action="append",
        default=[],
        metavar="FILE",
        help="WinDbg pooltag.txt or PoolMon localtag.txt (repeatable; also POOLTAGSCAN_POOLTAG)",
    )
    scan.add_argument(
        "--no-tables",
        action="store_true",
        help="do not search for the big-page and tracker tables (page headers only)",
    )
    scan.add_argument("-q", "--quiet", action="store_true", help="no notes or progress on stderr")
    scan.set_defaults(func=run_scan, inputs=scan_inputs)

    stack = verbs.add_parser(
        "stack", help="tags ranked by how few dumps hold them (rare tags first)"
    )
    _view_options(stack)
    stack.add_argument("--max-hosts", type=int, metavar="N", help="only tags on at most N dumps")
    stack.add_argument(
        "--min-confidence",
        choices=("low", "medium", "high"),
        default="low",
        help="a dump holds a tag only through blocks of this confidence or better",
    )
    stack.add_argument("--html", metavar="FILE", help="also write a heat map page of tags by dump")
    stack.set_defaults(func=run_stack, inputs=view_inputs)

    hunt = verbs.add_parser("hunt", help="which dumps hold tags matching a pattern")
    _view_options(hunt)
    hunt.add_argument(
        "--tag",
        action="append",
        required=True,
        metavar="PATTERN",
        help="tag pattern as for `scan --tag` (? and * wildcards, repeatable)",
    )
    hunt.set_defaults(func=run_hunt, inputs=view_inputs)

    diff = verbs.add_parser("diff", help="every dump's per-tag growth against a baseline dump")
    _view_options(diff)
    diff.add_argument(
        "--baseline",
        required=True,
        metavar="DUMP",
        help="the baseline: a dump of the fleet (its path, file name or dump_id)",
    )
    diff.add_argument("--all", action="store_true", help="also tags that did not change")
    diff.add_argument("--top", type=int, metavar="N", help="only each dump's N largest growths")
    diff.set_defaults(func=run_diff, inputs=view_inputs)


def _view_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a fleet folder written by `fleet scan`")
    parser.add_argument("--format", choices=VIEW_FORMATS, default="table", help="output format")
    add_output_options(parser)


def scan_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return named("dump", args.dumps) + named("dump list", [args.list]) + tag_list_inputs(args)


def view_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The store's files: `-o` and `--html` must never replace one of them."""
    found = []
    for folder, _dirs, files in os.walk(args.dir):
        found += [os.path.join(folder, f) for f in files if f.endswith((".parquet", ".json"))]
    return named("fleet file", found)


def _require() -> None:
    from pooltagscan.fleet import FleetUnavailable, require

    try:
        require("dask", "distributed", "pyarrow")
    except FleetUnavailable as exc:
        raise UsageError(str(exc)) from None


def _read_list(path: str) -> list[str]:
    from pooltagscan.errors import InputError
    from pooltagscan.files import read_limited

    data = read_limited(path, MAX_LIST_BYTES, "a list of dump paths")
    if len(data) > MAX_LIST_BYTES:
        raise InputError(path, f"is larger than {MAX_LIST_BYTES >> 20} MiB; not a list of paths")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(path, "is not UTF-8 text (one dump path a line)") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def run_scan(args: argparse.Namespace, outputs: Outputs) -> int:
    _require()
    from pooltagscan.fleet.cluster import fleet_client
    from pooltagscan.fleet.progress import FleetProgress
    from pooltagscan.fleet.runner import FleetOptions, scan_fleet, select
    from pooltagscan.fleet.store import FleetStore
    from pooltagscan.provenance import document
    from pooltagscan.tags.database import TagDatabase

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.task_mib < 1:
        raise UsageError("--task-mib must be at least 1")
    if args.workers is not None and args.scheduler:
        raise UsageError("--workers sizes the local cluster; not with --scheduler")
    paths = list(args.dumps) + (_read_list(args.list) if args.list else [])
    if not paths:
        raise UsageError("no dumps: give DUMP paths or --list FILE")
    db = TagDatabase.load(args.pooltag)
    store = FleetStore(args.out)
    store.create(paths)
    options = FleetOptions(
        layout=args.layout,
        tables=not args.no_tables,
        records=args.records,
        rescan=args.rescan,
        task_bytes=args.task_mib << 20,
        hash=not args.no_hash,
    )
    # The run and the dumps in flight, on one redrawn line (terminals only).
    bar = FleetProgress("fleet scan", enabled=False if args.quiet else None)
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    scanned = 0

    def outcome(found: DumpOutcome) -> None:
        nonlocal scanned
        counts[found.status] = counts.get(found.status, 0) + 1
        bar.forget(found.path)
        bar.close()
        if found.status == "failed":
            error(found.error or f"{found.path}: failed")
            return
        if found.status == "skipped":
            note(args, f"{found.path}: skipped (unchanged since an earlier fleet scan)")
            return
        scanned += found.scanned_bytes
        for warning in found.warnings:
            note(args, f"{found.path}: warning: {warning}")
        note(
            args,
            f"{found.path}: {found.tags:,} tags, {found.records:,} records over "
            f"{found.scanned_bytes / 2**20:,.1f} MiB in {found.seconds:.2f} s of worker time",
        )

    started = time.perf_counter()
    command_line = document([])["command_line"]
    todo, skipped = select(store, paths, options.rescan)
    for found in skipped:
        outcome(found)
    if todo:  # no cluster is started for nothing
        options.rescan = True  # selected just now
        with fleet_client(
            args.scheduler, args.workers, lambda link: note(args, f"Dask dashboard: {link}")
        ) as client:
            scan_fleet(client, store, todo, db, options, outcome, bar, command_line, bar.dump)
    bar.close()
    elapsed = time.perf_counter() - started
    rate = scanned / elapsed / 1e9 if elapsed > 0 else 0.0
    note(
        args,
        f"fleet {args.out}: {counts['ok']} scanned, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; {scanned / 2**30:,.2f} GiB in {elapsed:.1f} s "
        f"({rate:.2f} GB/s)",
    )
    return EXIT_INPUT if counts["failed"] else EXIT_OK


def _load(args: argparse.Namespace):
    _require()
    from pooltagscan.fleet.views import Fleet

    fleet = Fleet.load(args.dir)
    if fleet.failed:
        note(
            args,
            f"{args.dir}: {len(fleet.failed)} dump(s) failed their scan and are not in this "
            "answer (`fleet stack --format json` lists them)",
        )
    return fleet


def run_stack(args: argparse.Namespace, outputs: Outputs) -> int:
    if args.max_hosts is not None and args.max_hosts < 1:
        raise UsageError("--max-hosts must be at least 1")
    fleet = _load(args)
    from pooltagscan.fleet.render import write_heat_map, write_view
    from pooltagscan.fleet.views import stack

    rows = stack(fleet, args.max_hosts, args.min_confidence)
    outputs.check_opened()
    table = (
        ("Tag", "Dumps", "Share", "Live", "Live Bytes", "Free", "Owner", "Description", "Where"),
        (
            "tag",
            "dumps",
            "share",
            "live_allocs",
            "live_bytes",
            "free_allocs",
            "owner",
            "description",
            "where",
        ),
        (False, True, True, True, True, True, False, False, False),
    )
    dicts = [r.as_dict() for r in rows]
    if args.format == "table":
        for d in dicts:
            d["where"] = d["per_dump"][:3]
    extra = {"max_hosts": args.max_hosts, "min_confidence": args.min_confidence}
    write_view(args.format, outputs.stream("-o"), "stack", fleet.header(), dicts, table, extra)
    if args.html:
        write_heat_map(outputs.stream("--html"), fleet.header(), rows, "pooltagscan fleet stack")
    return EXIT_OK


def run_hunt(args: argparse.Namespace, outputs: Outputs) -> int:
    fleet = _load(args)
    from pooltagscan.fleet.render import write_view
    from pooltagscan.fleet.views import HUNT_FIELDS, hunt

    try:
        rows = hunt(fleet, args.tag)
    except ValueError as exc:
        raise UsageError(f"--tag: {exc}") from None
    outputs.check_opened()
    headings = ("Dump", "Tag", "Live", "Live Bytes", "NP", "P", "Free", "Big", "High", "Med",
                "Low", "Owner", "Description")  # fmt: skip
    right = (False, False, *([True] * 9), False, False)
    held = len({r["dump"] for r in rows})
    note(args, f"{held} of {len(fleet.ok)} dumps hold a matching tag")
    write_view(
        args.format,
        outputs.stream("-o"),
        "hunt",
        fleet.header(),
        rows,
        (headings, HUNT_FIELDS, right),
        {"patterns": args.tag, "dumps_holding": held},
    )
    return EXIT_OK


def run_diff(args: argparse.Namespace, outputs: Outputs) -> int:
    if args.top is not None and args.top < 1:
        raise UsageError("--top must be at least 1")
    fleet = _load(args)
    from pooltagscan.fleet.render import write_view
    from pooltagscan.fleet.views import diff

    base, rows = diff(fleet, args.baseline, changed_only=not args.all, top=args.top)
    outputs.check_opened()
    keys = ("dump", "tag", "old_allocs", "new_allocs", "delta_allocs", "old_bytes",
            "new_bytes", "delta_bytes", "owner", "description")  # fmt: skip
    headings = ("Dump", "Tag", "Base Allocs", "Allocs", "Diff", "Base Bytes", "Bytes",
                "Diff Bytes", "Owner", "Description")  # fmt: skip
    right = (False, False, True, True, True, True, True, True, False, False)
    if args.format == "table":
        note(args, f"baseline: {base['path']}")
    write_view(
        args.format,
        outputs.stream("-o"),
        "diff",
        fleet.header(),
        rows,
        (headings, keys, right),
        {"baseline": base["path"], "baseline_sha256": base["sha256"]},
    )
    return EXIT_OK
