"""`pooltagscan scan`: list allocations, or per-tag statistics, of one or more dumps."""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from pooltagscan.commands.common import (
    EXIT_INPUT,
    EXIT_OK,
    UsageError,
    add_dump_options,
    add_output_options,
    check_jobs,
    error,
    named,
    note,
    tag_list_inputs,
)
from pooltagscan.errors import InputError
from pooltagscan.filters import RecordFilter
from pooltagscan.inputs import open_image
from pooltagscan.objects import METHODS, decode_records, object_records
from pooltagscan.progress import ProgressBar
from pooltagscan.provenance import FileDigest
from pooltagscan.provenance import document as provenance
from pooltagscan.records import (
    CONFIDENCE_NAMES,
    POOL_NAMES,
    RECORD_DTYPE,
    SOURCE_NAMES,
    STATE_NAMES,
    concat,
)
from pooltagscan.render.records import FORMATS, make_writer
from pooltagscan.render.stats import StatsView, summary_line
from pooltagscan.render.summary import fit_path, scan_line
from pooltagscan.render.tracker import TrackerView
from pooltagscan.render.writers import make_writer as make_view_writer
from pooltagscan.render.writers import write_view
from pooltagscan.render.yarahits import YaraHitsView
from pooltagscan.scan import SORT_WITH_RECORDS, prepare
from pooltagscan.stats import SORT_KEYS
from pooltagscan.summary import ScanSummary, collect_records, collect_stats, collect_tracker
from pooltagscan.tags.database import TagDatabase
from pooltagscan.tracking import TrackerTotals
from pooltagscan.tracking import attach as attach_tracker
from pooltagscan.workers import WorkerError
from pooltagscan.yarascan import compile_rules, scan_yara

if TYPE_CHECKING:
    from pooltagscan.outputs import Outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    scan = sub.add_parser(
        "scan",
        help="list pool allocations in a dump (or per-tag statistics with --stats)",
        description="Scan raw memory dumps page by page for pool headers (x86, x64, "
        "Windows 10/11 segment heap), with no kernel symbols.",
    )
    scan.add_argument("dumps", nargs="+", metavar="DUMP", help="memory dump file(s)")
    scan.add_argument(
        "--stats",
        action="store_true",
        help="per-tag counts and bytes, paged/nonpaged/free, like !poolused",
    )
    scan.add_argument(
        "--tag",
        "--tags",  # the Volatility plugin's name: either works in both tools
        dest="tag",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only tags matching PATTERN (? and * wildcards, case-sensitive, "
        "repeatable), like !poolfind",
    )
    scan.add_argument(
        "--min-confidence",
        choices=CONFIDENCE_NAMES,
        default="low",
        help="drop records below this confidence (default: low, keep all)",
    )
    scan.add_argument(
        "--pool",
        action="append",
        default=[],
        choices=POOL_NAMES,
        help="only this pool (repeatable)",
    )
    scan.add_argument(
        "--state",
        action="append",
        default=[],
        choices=STATE_NAMES,
        help="only this state (repeatable)",
    )
    scan.add_argument(
        "--source",
        action="append",
        default=[],
        choices=SOURCE_NAMES,
        help="only blocks found in pool pages (page) or in the big-page table (bigpool)",
    )
    scan.add_argument(
        "--tracker",
        action="store_true",
        help="the kernel's own per-tag counters (PoolTrackTable) found in the dump, like PoolMon",
    )
    scan.add_argument(
        "--no-tables",
        action="store_true",
        help="do not search for the big-page and tracker tables (page headers only)",
    )
    scan.add_argument("--format", choices=FORMATS, default="table", help="output format")
    scan.add_argument(
        "--sort",
        choices=SORT_KEYS,
        help="order of --stats and --tracker rows (default: bytes); records come in scan "
        "order, so --sort is refused without --stats or --tracker",
    )
    add_dump_options(scan)
    add_output_options(scan)
    scan.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="detail lines on stderr besides the one-line summary per dump: the format "
        "and every evidence count, the pool-page share, the tracker table",
    )
    scan.add_argument(
        "--yara",
        action="append",
        default=[],
        metavar="RULES",
        help="run YARA rules (file or folder, repeatable) over the dump and report each hit "
        "with the pool allocation holding it (--tag then filters by that allocation's tag)",
    )
    scan.add_argument(
        "--objects",
        action="store_true",
        help="decode the Proc/Thre/Driv/File/Muta blocks: name, pid, ppid, tid, start, "
        "create/exit time, driver image base/size (fields added to those records)",
    )
    scan.add_argument(
        "--calibration",
        choices=METHODS,
        default="auto",
        help="with --objects: offsets from the public per-build table, else learned from the "
        "dump (auto), from the table only, or learned from the dump only (self)",
    )
    scan.set_defaults(func=run_command, inputs=inputs)


def inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return named("dump", args.dumps) + tag_list_inputs(args) + named("YARA rules", args.yara)


def run_command(args: argparse.Namespace, outputs: Outputs) -> int:
    check_jobs(args)
    try:
        record_filter = RecordFilter.from_names(
            args.tag, args.min_confidence, args.pool, args.state, args.source
        )
    except ValueError as exc:
        raise UsageError(f"--tag: {exc}") from None
    db = TagDatabase.load(args.pooltag)
    rules = compile_rules(args.yara) if args.yara else None
    if rules is not None and args.stats:
        raise UsageError("--yara and --stats do not go together")
    if args.tracker and (args.stats or rules is not None):
        raise UsageError("--tracker is a view of its own: not with --stats or --yara")
    if args.tracker and args.no_tables:
        raise UsageError("--tracker needs the table search that --no-tables turns off")
    if args.sort is not None and not (args.stats or args.tracker):
        # Sorting records would hold a whole dump's records in memory; say so rather
        # than ignore the option.
        raise UsageError(SORT_WITH_RECORDS)
    if args.objects and (args.stats or args.tracker or rules is not None):
        raise UsageError("--objects adds fields to records: not with --stats, --tracker or --yara")
    args.sort = args.sort or "bytes"
    outputs.check_opened()
    out = outputs.stream("-o")
    several = len(args.dumps) > 1
    if args.stats:
        writer = make_view_writer(args.format, out)  # one csv header for every dump
    elif args.tracker or rules:
        writer = None
    else:
        writer = make_writer(args.format, out, None, db)
    status = EXIT_OK
    for path in args.dumps:
        try:
            _scan_dump(args, path, outputs, out, writer, record_filter, db, rules, several)
        except (InputError, WorkerError) as exc:
            # One bad dump is reported, named, and skipped; the batch goes on.
            error(str(exc) if isinstance(exc, InputError) else f"{path}: scan failed: {exc}")
            status = max(status, EXIT_INPUT)
            continue
        outputs.keep = True
    if writer is not None:
        writer.finish()
    return status


def detail(args: argparse.Namespace, text: str) -> None:
    """A detail line: only with -v (and never with -q)."""
    if getattr(args, "verbose", False):
        note(args, text)


def _scan_dump(args, path, outputs, out, writer, record_filter, db, rules, several) -> None:
    image = open_image(path)
    digest = None
    try:
        outputs.check_opened()  # the dump may have brought a companion (a .vmss)
        for remark in image.notes:
            note(args, f"{path}: {remark}")
        summary = ScanSummary(image.scanned_bytes)  # the clock includes detection
        # The sha256 of the provenance, computed alongside the scan (json documents).
        digest = FileDigest(image.file) if args.format == "json" else None
        prepared = prepare(image, args.layout, db, tables=not args.no_tables)
        how = "chosen by --layout" if args.layout != "auto" else prepared.how
        detail(
            args,
            f"{path}: {image.describe()}; {image.scanned_bytes / 2**20:.1f} MiB "
            f"scanned; layout {how}: {prepared.detection.describe()}",
        )
        for warning in prepared.warnings():
            note(args, f"{path}: warning: {warning}")
        space = None
        if not args.no_tables and (args.verbose or args.format == "json"):
            # A pass over the dump: only when its answer is shown (-v, JSON metadata).
            space = prepared.kernel_space().describe()
        meta = prepared.metadata()
        bar = ProgressBar(
            f"scanning {os.path.basename(path)}", enabled=False if args.quiet else None
        )
        found = None  # what the summary line counts, when not records
        details: list[str] = []  # lines for -v after the summary
        try:
            if rules is not None:
                scan = scan_yara(prepared, rules, bar)
                hits = iter(scan)
                if record_filter.tags is not None:
                    hits = (
                        h for h in hits if h.tag is not None and record_filter.tags.matches(h.tag)
                    )
                count = write_view(
                    args.format, out, YaraHitsView(hits, meta, path if several else None)
                )
                bar.close()
                summary.finish()
                found = f"{count:,} YARA hit{'s' if count != 1 else ''}"
                for remark in scan.notes:
                    note(args, f"{path}: {remark}")
            elif args.tracker:
                totals = TrackerTotals()
                collect_tracker(prepared, totals.add, args.jobs, bar)
                bar.close()
                summary.finish()
                rows = totals.rows(db.describe, args.sort)
                if digest is not None:
                    meta["provenance"] = provenance([digest.result()])
                # A session per dump: the csv header comes again above each dump's rows.
                write_view(
                    args.format, out, TrackerView(totals, rows, meta, path if several else None)
                )
                found = f"{len(rows):,} tracked tags, {totals.pages} table pages"
                if not totals.found:
                    note(args, f"{path}: no pool tracker table found")
            elif args.stats:
                totals = TrackerTotals()
                stats = collect_stats(prepared, summary, record_filter, args.jobs, bar, totals.add)
                bar.close()
                rows = stats.rows(db.describe, args.sort)
                attach_tracker(rows, totals)
                details.append(summary_line(summary))
                if totals.found:
                    meta["tracker_pages"] = totals.pages
                    flagged = sum(1 for r in rows if r.tracker and r.tracker["tracker_flag"])
                    details.append(
                        f"kernel tracker table found ({totals.pages} pages); "
                        f"{flagged} tag(s) disagree with it"
                    )
                if digest is not None:
                    meta["provenance"] = provenance([digest.result()])
                dump = meta.get("dump", "") if several else None
                writer.write(StatsView(rows, stats.totals(), meta, summary, dump))
            else:
                assert writer is not None
                if several:
                    writer.extra = {"dump": path}
                meta["max_address"] = image.max_address
                if args.objects:
                    _write_with_objects(args, prepared, summary, record_filter, bar, writer, meta)
                else:
                    writer.begin(meta)
                    try:
                        for kept in collect_records(
                            prepared, summary, record_filter, args.jobs, bar
                        ):
                            writer.write(kept)
                    except (InputError, WorkerError) as exc:
                        writer.abort(str(exc))
                        raise
                bar.close()
                if digest is not None and hasattr(writer, "trailer"):
                    writer.trailer = provenance([digest.result()])
                writer.end()
                details.append(summary_line(summary))
        finally:
            bar.close()
        line = scan_line(prepared, summary, found)
        note(args, f"{fit_path(path, line)}: {line}")
        for line in [*details, *([space] if space is not None else [])]:
            detail(args, f"{path}: {line}")
    finally:
        if digest is not None:
            digest.cancel()  # stops an unneeded or interrupted digest before the close
        image.close()


SPILL_ROWS = 1 << 16  # records read back at a time from the spill file


def _write_with_objects(args, prepared, summary, record_filter, bar, writer, meta) -> None:
    """`scan --objects`: the object blocks are decoded after the scan (calibration needs
    every block of a tag), so the records wait in a temporary file (memory stays flat)
    and are written once the object fields are known."""
    parts = []
    with tempfile.TemporaryFile() as spill:
        for kept in collect_records(prepared, summary, record_filter, args.jobs, bar):
            spill.write(kept.tobytes())
            parts.append(object_records(kept))
        result, notes = decode_records(prepared, concat(parts), args.calibration)
        for remark in notes:
            note(args, f"{prepared.image.path}: objects: {remark}")
        meta["objects"] = result.metadata()
        writer.set_objects(result.fields)
        writer.begin(meta)
        spill.seek(0)
        size = RECORD_DTYPE.itemsize
        while chunk := spill.read(size * SPILL_ROWS):
            writer.write(np.frombuffer(chunk, dtype=RECORD_DTYPE))
