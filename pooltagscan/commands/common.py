"""Helpers shared by the command modules: messages, exit codes, options, inputs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable

from pooltagscan.errors import one_line

PROG = "pooltagscan"
EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad option values; reported like input errors (one line, exit code 2)."""


def note(args: argparse.Namespace, text: str) -> None:
    """An informational line on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {one_line(text)}", file=sys.stderr)


def warn_forced_layout(
    args: argparse.Namespace, path: str, layout: str, evidence: dict[str, int]
) -> None:
    """A note (not an error: the scan ran as asked) when the user's --layout goes against
    the dump's own evidence, whose records are then likely header-shaped noise."""
    from pooltagscan.scan import forced_layout_warning

    warning = forced_layout_warning(layout, evidence)
    if warning is not None:
        note(args, f"{path}: warning: {warning}")


def error(text: str) -> None:
    print(f"{PROG}: error: {one_line(text)}", file=sys.stderr, flush=True)


def tag_list_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The --pooltag files and those POOLTAGSCAN_POOLTAG names: inputs like any other."""
    from pooltagscan.tags.database import ENV_VAR

    listed = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return [("tag list", p) for p in [*getattr(args, "pooltag", []), *listed]]


def named(what: str, paths: Iterable[str | None]) -> list[tuple[str, str]]:
    return [(what, p) for p in paths if p]


def add_dump_options(parser: argparse.ArgumentParser) -> None:
    """--layout, --pooltag and --jobs: every command that scans a dump takes them."""
    from pooltagscan.parallel import default_jobs
    from pooltagscan.scan import LAYOUT_CHOICES

    parser.add_argument(
        "--layout",
        choices=LAYOUT_CHOICES,
        default="auto",
        help="header family (default: detected from the dump)",
    )
    parser.add_argument(
        "--pooltag",
        action="append",
        default=[],
        metavar="FILE",
        help="WinDbg pooltag.txt or PoolMon localtag.txt (repeatable; also POOLTAGSCAN_POOLTAG)",
    )
    add_jobs_option(parser, default_jobs(), "scan threads for large dumps")


def add_jobs_option(parser: argparse.ArgumentParser, default: int, what: str) -> None:
    parser.add_argument(
        "--jobs", type=int, default=default, help=f"{what} (default: all cores, {default})"
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """-o/--output and -q/--quiet, shared by every command."""
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no notes or progress on stderr")


def check_jobs(args: argparse.Namespace) -> None:
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
