"""`pooltagscan pool`: the pool block holding one address and its page, like `!pool`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from pooltagscan.commands.common import (
    EXIT_OK,
    PROG,
    UsageError,
    add_dump_options,
    add_output_options,
    check_jobs,
    named,
    note,
    tag_list_inputs,
    warn_forced_layout,
)
from pooltagscan.errors import one_line
from pooltagscan.inputs import open_image
from pooltagscan.poolview import AddressError, check_address, find, parse_address
from pooltagscan.progress import ProgressBar
from pooltagscan.render.poolview import FORMATS, PoolPageView, headline
from pooltagscan.render.writers import write_view
from pooltagscan.scan import prepare
from pooltagscan.tags.database import TagDatabase

if TYPE_CHECKING:
    from pooltagscan.outputs import Outputs

# Like grep: the search ran but found nothing (input problems stay 2).
EXIT_NOT_FOUND = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    pool = sub.add_parser(
        "pool",
        help="the pool block holding an address, with the other blocks of its page (like !pool)",
        description="Find the pool allocation that holds ADDRESS (physical for raw, crash, "
        "LiME, ELF and VMware dumps; virtual for kernel minidumps; a kernel virtual address "
        "is also looked up in the big-page table) and list the blocks of its page.",
    )
    pool.add_argument("dump", metavar="DUMP", help="memory dump file")
    pool.add_argument("address", metavar="ADDRESS", help="address, 0x-hex or decimal")
    pool.add_argument(
        "--hexdump", action="store_true", help="show the holding block's bytes (header included)"
    )
    pool.add_argument("--format", choices=FORMATS, default="table", help="output format")
    add_dump_options(pool)
    add_output_options(pool)
    pool.set_defaults(func=run_command, inputs=inputs)


def inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return named("dump", [args.dump]) + tag_list_inputs(args)


def run_command(args: argparse.Namespace, outputs: Outputs) -> int:
    check_jobs(args)
    try:
        address = parse_address(args.address)
    except ValueError as exc:
        raise UsageError(f"ADDRESS: {exc}") from None
    db = TagDatabase.load(args.pooltag)
    outputs.check_opened()
    image = open_image(args.dump)
    try:
        outputs.check_opened()  # the dump may have brought a companion (a .vmss)
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
        try:
            check_address(prepared, address)
        except AddressError as exc:
            raise UsageError(f"{args.dump}: ADDRESS {exc}") from None
        bar = ProgressBar(
            f"searching {os.path.basename(args.dump)}", enabled=False if args.quiet else None
        )
        try:
            view = find(prepared, address, db, args.hexdump, args.jobs, bar)
        finally:
            bar.close()
        image.check_unchanged()
        page = PoolPageView(view, prepared.metadata(), args.hexdump)
        write_view(args.format, outputs.stream("-o"), page)
        if view.holding is None:
            # The result of the search, not a note: shown even with -q.
            print(f"{PROG}: {one_line(headline(view, args.dump))}", file=sys.stderr)
            outputs.keep = True  # what was listed (the page, the JSON) is still the answer
            return EXIT_NOT_FOUND
        return EXIT_OK
    finally:
        image.close()
