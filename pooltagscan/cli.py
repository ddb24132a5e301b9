"""The `pooltagscan` command: a thin shell that parses options, calls the library, renders.

Errors caused by input become one line on stderr and exit code 2; nothing the user does
should produce a traceback (set POOLTAGSCAN_DEBUG=1 to see one for internal errors).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from pooltagscan import __version__
from pooltagscan.errors import InputError
from pooltagscan.filters import RecordFilter
from pooltagscan.inputs import open_image
from pooltagscan.progress import ProgressBar
from pooltagscan.records import CONFIDENCE_NAMES, POOL_NAMES, STATE_NAMES
from pooltagscan.render.records import FORMATS, make_writer
from pooltagscan.render.stats import write_stats
from pooltagscan.scan import LAYOUT_CHOICES, prepare, run
from pooltagscan.scanner.engine import default_jobs
from pooltagscan.stats import SORT_KEYS, TagStats
from pooltagscan.tags.database import TagDatabase

PROG = "pooltagscan"
EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad option values; reported like input errors."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Find Windows kernel pool allocations in memory dumps without symbols.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = sub.add_parser(
        "scan",
        help="list pool allocations in a dump (or per-tag statistics with --stats)",
        description="Scan raw memory dumps page by page for pool headers (x86, x64, "
        "Windows 10/11 segment heap), with no kernel symbols.",
    )
    scan.add_argument("dumps", nargs="+", metavar="DUMP", help="memory dump file(s)")
    scan.add_argument("--stats", action="store_true",
                      help="per-tag counts and bytes, paged/nonpaged/free, like !poolused")
    scan.add_argument("--tag", action="append", default=[], metavar="PATTERN",
                      help="only tags matching PATTERN (? and * wildcards, case-sensitive, "
                      "repeatable), like !poolfind")
    scan.add_argument("--min-confidence", choices=CONFIDENCE_NAMES, default="low",
                      help="drop records below this confidence (default: low, keep all)")
    scan.add_argument("--pool", action="append", default=[], choices=POOL_NAMES,
                      help="only this pool (repeatable)")
    scan.add_argument("--state", action="append", default=[], choices=STATE_NAMES,
                      help="only this state (repeatable)")
    scan.add_argument("--format", choices=FORMATS, default="table", help="output format")
    scan.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto",
                      help="header family (default: detected from the dump)")
    scan.add_argument("--pooltag", action="append", default=[], metavar="FILE",
                      help="WinDbg pooltag.txt or PoolMon localtag.txt (repeatable; also "
                      "POOLTAGSCAN_POOLTAG)")
    scan.add_argument("--sort", choices=SORT_KEYS, default="bytes",
                      help="order of --stats rows (default: bytes)")
    scan.add_argument("--jobs", type=int, default=default_jobs(),
                      help="worker processes for large dumps (default: all cores)")
    scan.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    scan.add_argument("-q", "--quiet", action="store_true",
                      help="no detection summary or progress on stderr")
    scan.set_defaults(func=cmd_scan)
    return parser


def _note(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {text}", file=sys.stderr)


def _error(text: str) -> None:
    print(f"{PROG}: error: {text}", file=sys.stderr)


def cmd_scan(args: argparse.Namespace, out: TextIO) -> int:
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    try:
        record_filter = RecordFilter.from_names(args.tag, args.min_confidence, args.pool,
                                                args.state)
    except ValueError as exc:
        raise UsageError(f"--tag: {exc}") from None
    db = TagDatabase.load(args.pooltag)
    several = len(args.dumps) > 1
    writer = None if args.stats else make_writer(args.format, out, {} if not several else None)
    status = EXIT_OK
    for path in args.dumps:
        try:
            image = open_image(path)
        except InputError as exc:
            _error(str(exc))
            status = EXIT_INPUT
            continue
        for note in image.notes:
            _note(args, f"{path}: {note}")
        prepared = prepare(image, args.layout, db)
        how = "chosen by --layout" if args.layout != "auto" else "detected"
        _note(args, f"{path}: {image.format} image, {image.scanned_bytes / 2**20:.1f} MiB "
                    f"scanned; layout {how}: {prepared.detection.describe()}")
        if args.layout == "auto" and not any(prepared.detection.evidence.values()):
            _note(args, f"{path}: warning: no pool structure proven in the sampled pages; "
                        "results are unlikely")
        meta = prepared.metadata()
        bar = ProgressBar(f"scanning {os.path.basename(path)}",
                          enabled=False if args.quiet else None)
        try:
            if args.stats:
                stats = TagStats()
                for records in run(prepared, record_filter, args.jobs, bar):
                    stats.add(records)
                bar.close()
                write_stats(args.format, out, stats.rows(db.describe, args.sort),
                            stats.totals(), meta)
            else:
                assert writer is not None
                if several:
                    writer.extra = {"dump": path}
                meta["max_address"] = max(r.address + r.length for r in image.runs)
                writer.begin(meta)
                for records in run(prepared, record_filter, args.jobs, bar):
                    writer.write(records)
                bar.close()
                writer.end()
        finally:
            bar.close()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with contextlib.ExitStack() as stack:
            out: TextIO = sys.stdout
            if getattr(args, "output", None):
                try:
                    out = stack.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
                except OSError as exc:
                    raise InputError(args.output, f"cannot write: {exc.strerror or exc}") from None
            return args.func(args, out)
    except (InputError, UsageError) as exc:
        _error(str(exc))
        return EXIT_INPUT
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error. Keep Python from complaining
        # again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:
        if os.environ.get("POOLTAGSCAN_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set POOLTAGSCAN_DEBUG=1 for details)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
