"""`pooltagscan extract`: each matching allocation's bytes in a file of its own."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from pooltagscan.commands.common import (
    EXIT_OK,
    UsageError,
    add_dump_options,
    check_jobs,
    named,
    note,
    tag_list_inputs,
    warn_forced_layout,
)
from pooltagscan.extract import extract
from pooltagscan.filters import RecordFilter
from pooltagscan.inputs import open_image
from pooltagscan.outputs import OutputFolder
from pooltagscan.progress import ProgressBar
from pooltagscan.records import CONFIDENCE_NAMES, STATE_NAMES
from pooltagscan.scan import prepare
from pooltagscan.tags.database import TagDatabase

if TYPE_CHECKING:
    from pooltagscan.outputs import Outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "extract",
        help="write each matching allocation's bytes to a file of its own, with a manifest",
        description="Write the bytes of every pool allocation whose tag matches (header "
        "included) to DIR/<tag>/<address>.bin, and DIR/manifest.json and manifest.csv "
        "with each file's address, tag, size and sha256.",
    )
    cmd.add_argument("dump", metavar="DUMP", help="memory dump file")
    cmd.add_argument(
        "--tag",
        action="append",
        required=True,
        metavar="PATTERN",
        help="tags to extract (? and * wildcards, case-sensitive, repeatable)",
    )
    cmd.add_argument("--out", required=True, metavar="DIR", help="folder to write (new or empty)")
    cmd.add_argument(
        "--force", action="store_true", help="write into DIR even when it is not empty"
    )
    cmd.add_argument(
        "--min-confidence",
        choices=CONFIDENCE_NAMES,
        default="low",
        help="drop records below this confidence (default: low, keep all)",
    )
    cmd.add_argument(
        "--state",
        action="append",
        default=[],
        choices=STATE_NAMES,
        help="only this state (repeatable)",
    )
    add_dump_options(cmd)
    cmd.add_argument("-q", "--quiet", action="store_true", help="no notes or progress on stderr")
    cmd.set_defaults(func=run_command, inputs=inputs)


def inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return named("dump", [args.dump]) + tag_list_inputs(args)


def run_command(args: argparse.Namespace, outputs: Outputs) -> int:
    check_jobs(args)
    try:
        record_filter = RecordFilter.from_names(args.tag, args.min_confidence, (), args.state)
    except ValueError as exc:
        raise UsageError(f"--tag: {exc}") from None
    folder = OutputFolder("--out", args.out, args.force)
    for what, path in inputs(args):
        folder.check_inputs([path], what)
    db = TagDatabase.load(args.pooltag)
    image = open_image(args.dump)
    try:
        for remark in image.notes:
            note(args, f"{args.dump}: {remark}")
        prepared = prepare(image, args.layout, db)
        how = "chosen by --layout" if args.layout != "auto" else "detected"
        note(
            args, f"{args.dump}: {image.describe()}; layout {how}: {prepared.detection.describe()}"
        )
        if prepared.forced:
            warn_forced_layout(
                args, args.dump, prepared.config.family.value, prepared.detection.evidence
            )
        meta = {
            "kind": "pooltagscan-extract",
            "dump": args.dump,
            "format": image.format,
            "layout": prepared.config.family.value,
            "tags": args.tag,
            "min_confidence": args.min_confidence,
            "states": args.state,
        }
        folder.create()
        bar = ProgressBar(
            f"extracting from {os.path.basename(args.dump)}",
            enabled=False if args.quiet else None,
        )
        try:
            result = extract(prepared, record_filter, folder, meta, args.jobs, bar)
        finally:
            bar.close()
    finally:
        folder.discard()
        image.close()
    note(
        args,
        f"{args.dump}: {result.files} allocation(s), {result.bytes:,} bytes written to "
        f"{args.out}; manifest: {os.path.join(args.out, 'manifest.json')} and manifest.csv",
    )
    if result.skipped_bigpool:
        note(
            args,
            f"{args.dump}: {result.skipped_bigpool} big-pool allocation(s) skipped: their "
            "addresses are kernel virtual addresses, which a physical dump cannot be read at "
            "without address translation, and no kernel page tables were found",
        )
    if result.clipped:
        note(
            args,
            f"{args.dump}: {result.clipped} block(s) run past their page's end; their files "
            "stop there (the next physical page is unrelated memory)",
        )
    if result.translated:
        note(
            args,
            f"{args.dump}: {result.translated} big-pool allocation(s) read through the "
            f"kernel page tables; {result.missing_bytes:,} of their bytes are in pages not "
            "mapped or not in the dump and were written as zeros (manifest: missing)",
        )
    if result.short:
        note(args, f"{args.dump}: {result.short} allocation(s) only partly held by the dump")
    return EXIT_OK
