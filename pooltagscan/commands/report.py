"""`pooltagscan report DUMP --drivers PATH...`: which driver owns each tag in a dump."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

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
    warn_forced_layout,
)
from pooltagscan.outputs import OutputFolder
from pooltagscan.progress import ProgressBar
from pooltagscan.render.writers import formats, write_view
from pooltagscan.tags.database import TagDatabase

if TYPE_CHECKING:
    from pooltagscan.outputs import Outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="attribution report: every tag in a dump with its likely owner driver",
        description="Scan a dump and a set of drivers, and list every pool tag found in "
        "the dump with its usage, the tag database's owner and description, and the "
        "scanned drivers that allocate with it. Tags no database knows but a driver uses "
        "come first, then tags nobody can explain, then known tags, then unexplained tags "
        "seen only in low-confidence records (unconfirmed).",
    )
    parser.add_argument("dump", metavar="DUMP")
    parser.add_argument(
        "--drivers",
        nargs="+",
        default=[],
        metavar="PATH",
        help="driver files or folders to attribute tags to",
    )
    parser.add_argument(
        "--drivers-from-dump",
        action="store_true",
        help="also carve the drivers loaded in the dump's kernel space (needs its page "
        "tables) and attribute tags to them, with no driver files at hand",
    )
    parser.add_argument(
        "--save-drivers",
        metavar="DIR",
        help="with --drivers-from-dump: write the carved drivers (rebuilt as PE files) to DIR",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into --save-drivers DIR even when not empty"
    )
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    parser.add_argument(
        "--baseline",
        metavar="OLD",
        help="earlier dump or saved `scan --stats --format json`: adds growth",
    )
    parser.add_argument("--format", choices=formats("table", "json", "csv"), default="table")
    parser.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="FILE",
        help="extra YARA rule file for the driver scan (repeatable)",
    )
    parser.add_argument(
        "--objects",
        action="store_true",
        help="decode Proc/Thre/Driv/File/Muta blocks and list the processes and drivers "
        "found only in freed or unlinked blocks",
    )
    add_dump_options(parser)
    add_output_options(parser)
    parser.set_defaults(func=run_command, inputs=inputs)


def inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return (
        named("dump", [args.dump])
        + named("driver", args.drivers)
        + named("baseline", [args.baseline])
        + tag_list_inputs(args)
        + named("YARA rules", args.rules)
    )


def run_command(args: argparse.Namespace, outputs: Outputs) -> int:
    check_jobs(args)
    folder = None
    if args.save_drivers:
        if not args.drivers_from_dump:
            raise UsageError("--save-drivers needs --drivers-from-dump")
        folder = OutputFolder("--save-drivers", args.save_drivers, args.force)
        for what, path in inputs(args):
            folder.check_inputs([path], what)
        folder.create()
    db = TagDatabase.load(args.pooltag)
    from pooltagscan.commands.drivers import guard_expansion
    from pooltagscan.report.build import make_report  # loads the driver analysis
    from pooltagscan.report.text import ReportView

    bar = ProgressBar(
        f"scanning {os.path.basename(args.dump)}", enabled=False if args.quiet else None
    )
    try:
        report = make_report(
            args.dump,
            args.drivers,
            db,
            args.baseline,
            args.layout,
            args.jobs,
            args.rules,
            bar,
            check_files=lambda files: guard_expansion(files, outputs),
            objects=args.objects,
            from_dump=args.drivers_from_dump,
            save_to=folder,
        )
    finally:
        bar.close()
        if folder is not None:
            folder.discard()
    if args.layout != "auto":
        warn_forced_layout(args, args.dump, args.layout, report.meta.get("evidence") or {})
    for problem in report.problems:
        error(problem)
    for remark in report.notes:
        note(args, remark)
    write_view(args.format, outputs.stream("-o"), ReportView(report))
    if args.html:
        from pooltagscan.report.html import write_html

        write_html(report, outputs.stream("--html"))
    outputs.keep = True  # the report stands; driver files that failed are named above
    if args.html:
        note(args, f"HTML report written to {args.html}")
    return EXIT_INPUT if report.problems else EXIT_OK
