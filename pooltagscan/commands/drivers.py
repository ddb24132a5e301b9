"""`pooltagscan drivers`: which driver allocates with which pool tag, from the binaries."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pooltagscan.commands.common import (
    EXIT_INPUT,
    EXIT_OK,
    UsageError,
    add_jobs_option,
    add_output_options,
    check_jobs,
    error,
    named,
    note,
)
from pooltagscan.drivers.render import FORMATS, DriversView
from pooltagscan.files import file_id
from pooltagscan.outputs import refusal
from pooltagscan.parallel import default_jobs
from pooltagscan.render.writers import write_view
from pooltagscan.tags.patterns import TagMatcher

if TYPE_CHECKING:
    from pooltagscan.drivers.attribution import Finding
    from pooltagscan.outputs import Outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    drivers = sub.add_parser(
        "drivers",
        help="attribute pool tags to drivers by analysing .sys files (x86 and x64)",
        description="Find the pool tags that Windows drivers pass to the pool APIs, from "
        "their binaries: import tables, disassembly and data flow to each call's tag "
        "argument (wrappers and globals included), with a YARA fallback. Folders are "
        "searched recursively. Exit code 2 when a file could not be analysed.",
    )
    drivers.add_argument(
        "paths", nargs="+", metavar="PATH", help="driver files or folders holding them"
    )
    drivers.add_argument(
        "--tag",
        "--tags",  # the Volatility plugin's name
        dest="tag",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only tags matching PATTERN (? and * wildcards, case-sensitive, repeatable): "
        "which drivers use this tag?",
    )
    drivers.add_argument("--format", choices=FORMATS, default="table", help="output format")
    drivers.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="FILE",
        help="extra YARA rule file (repeatable); rules tagged tag_immediate extend the "
        "low-confidence fallback, rules tagged pool_import the prefilter",
    )
    add_jobs_option(drivers, default_jobs(), "worker processes for large batches")
    add_output_options(drivers)
    drivers.set_defaults(func=run_command, inputs=inputs)


def _wanted(matcher: TagMatcher | None, finding: Finding) -> bool:
    """Whether a finding's tag fits --tag (as passed, or with the protected bit cleared)."""
    if matcher is None:
        return True
    return matcher.matches_value(finding.value) or matcher.matches_value(finding.value & 0x7FFFFFFF)


def inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return named("driver", args.paths) + named("YARA rules", args.rules)


def guard_expansion(files: list[str], outputs: Outputs) -> None:
    """Refuse to run when a file found in a folder is one of the outputs."""
    for path in files:
        identity = file_id(path)
        output = outputs.guards(identity) if identity else None
        if output is not None:
            raise refusal(output, "driver", path)


def run_command(args: argparse.Namespace, outputs: Outputs) -> int:
    # The driver analysis (capstone, pefile, YARA) loads only when this command runs, so
    # the other commands do not pay for it at start-up.
    from pooltagscan.drivers.attribution import (
        DriverFailure,
        DriverReport,
        DriverSkipped,
        expand_paths,
        folder_notes,
        scan_batch,
    )
    from pooltagscan.drivers.yarascan import RuleSet

    check_jobs(args)
    try:
        matcher = TagMatcher(args.tag) if args.tag else None
    except ValueError as exc:
        raise UsageError(f"--tag: {exc}") from None
    rules = RuleSet(args.rules)
    for remark in rules.notes:
        note(args, remark)
    expansion = expand_paths(args.paths)
    guard_expansion(expansion.files, outputs)
    outputs.check_opened()
    out = outputs.stream("-o")
    status = EXIT_OK
    for failure in expansion.failures:
        error(str(failure))
        status = EXIT_INPUT
    for remark in expansion.notes:
        note(args, remark)
    counts = {"analysed": 0, "with_tags": 0, "unresolved": 0}
    failures: list[DriverFailure] = []
    seen: list[DriverReport | DriverFailure | DriverSkipped] = []

    def results() -> Iterator[tuple[DriverReport, list[Finding]]]:
        nonlocal status
        for result in scan_batch(expansion.files, rules, args.jobs, walked=expansion.walked):
            seen.append(result)
            if isinstance(result, DriverSkipped):
                continue  # counted per folder below
            if isinstance(result, DriverFailure):
                error(str(result))
                failures.append(result)
                status = EXIT_INPUT
                continue
            assert isinstance(result, DriverReport)
            counts["analysed"] += 1
            counts["unresolved"] += len(result.unresolved)
            for remark in result.notes:
                note(args, f"{result.path}: {remark}")
            findings = [f for f in result.findings if _wanted(matcher, f)]
            if findings:
                counts["with_tags"] += 1
            if findings or matcher is None:
                yield result, findings

    rows = results()
    view = DriversView(rows, failures)
    try:
        write_view(args.format, out, view)
    finally:
        rows.close()  # an interrupted batch stops its workers now, not at exit
    for remark in folder_notes(expansion, seen):
        note(args, remark)
    analysed, with_tags, unresolved = counts["analysed"], counts["with_tags"], counts["unresolved"]
    if analysed:
        outputs.keep = True
    summary = f"{analysed} driver(s) analysed, {with_tags} with tags, {view.count} record(s)"
    if unresolved:
        summary += f"; {unresolved} pool API call(s) whose tag was not recovered (--format json)"
    if status != EXIT_OK:
        summary += "; some files could not be analysed"
    note(args, summary)
    return status
