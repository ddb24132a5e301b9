"""`pooltagscan diff OLD NEW`: per-tag growth between two dumps or saved statistics."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pooltagscan.commands.common import (
    EXIT_OK,
    add_dump_options,
    add_output_options,
    check_jobs,
    named,
    note,
    tag_list_inputs,
)
from pooltagscan.diff import DIFF_SORTS, VIEW_STATS, VIEW_TRACKER, diff, load_snapshot, mismatch
from pooltagscan.progress import ProgressBar
from pooltagscan.render.diff import DiffView
from pooltagscan.render.writers import formats, write_view
from pooltagscan.tags.database import TagDatabase

if TYPE_CHECKING:
    from pooltagscan.outputs import Outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "diff",
        help="per-tag growth between two dumps (or saved --stats json files), for leaks",
        description="Compare the per-tag allocation counts and bytes of two dumps, or of "
        "files saved with `scan --stats --format json`, sorted by growth like PoolMon.",
    )
    parser.add_argument("old", metavar="OLD", help="baseline dump or saved statistics")
    parser.add_argument("new", metavar="NEW", help="later dump or saved statistics")
    parser.add_argument(
        "--sort",
        choices=DIFF_SORTS,
        default="bytes",
        help="bytes or count growth, largest first, or tag (default: bytes)",
    )
    parser.add_argument("--changed", action="store_true", help="only tags whose counts changed")
    parser.add_argument(
        "--tracker",
        action="store_true",
        help="compare the kernel's own counters (PoolTrackTable) of two dumps, like "
        "PoolMon; saved `scan --tracker --format json` files are tracker views anyway",
    )
    parser.add_argument(
        "--format", choices=formats("table", "json", "jsonl", "csv"), default="table"
    )
    add_dump_options(parser)
    add_output_options(parser)
    parser.set_defaults(func=run_command, inputs=inputs)


def inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return named("dump or statistics file", [args.old, args.new]) + tag_list_inputs(args)


def run_command(args: argparse.Namespace, outputs: Outputs) -> int:
    check_jobs(args)
    db = TagDatabase.load(args.pooltag)
    snaps = []
    for path in (args.old, args.new):
        bar = ProgressBar(f"scanning {path}", enabled=False if args.quiet else None)
        view = VIEW_TRACKER if args.tracker else VIEW_STATS
        snaps.append(load_snapshot(path, args.layout, db, args.jobs, bar, view))
        bar.close()
        # A scanned dump's own warnings (a saved document's were said when it was saved).
        for warning in snaps[-1].warnings:
            note(args, f"{path}: warning: {warning}")
        note(args, f"{path}: {len(snaps[-1].allocs)} tags")
    rows = diff(*snaps, describe=db.describe, sort=args.sort)
    differ = mismatch(*snaps)
    if differ:
        note(args, f"warning: {differ}")
    out = outputs.stream("-o")
    if args.changed:
        rows = [r for r in rows if r.delta_allocs or r.delta_bytes]
    write_view(args.format, out, DiffView(*snaps, rows))
    return EXIT_OK
