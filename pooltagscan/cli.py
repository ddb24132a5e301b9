"""The `pooltagscan` command: a thin shell that parses options and dispatches.

Each subcommand lives in `pooltagscan.commands.<name>` with `add_parser(sub)` and the
function it sets as `func(args, out) -> exit code`. Errors caused by input become one
line on stderr and exit code 2; nothing the user does should produce a traceback (set
POOLTAGSCAN_DEBUG=1 to see one for internal errors).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from pooltagscan import __version__
from pooltagscan.commands import COMMANDS
from pooltagscan.commands.common import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    PROG,
    UsageError,
    error,
)
from pooltagscan.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Find Windows kernel pool allocations in memory dumps without symbols, "
        "and attribute pool tags to drivers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        error(str(exc))
        return EXIT_INPUT
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error. Keep Python from complaining
        # again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as exc:
        if os.environ.get("POOLTAGSCAN_DEBUG"):
            raise
        error(f"internal error: {type(exc).__name__}: {exc} (set POOLTAGSCAN_DEBUG=1 for details)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
