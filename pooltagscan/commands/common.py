"""Helpers shared by the command modules: messages and exit codes."""

from __future__ import annotations

import argparse
import sys

PROG = "pooltagscan"
EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad option values; reported like input errors (one line, exit code 2)."""


def note(args: argparse.Namespace, text: str) -> None:
    """An informational line on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {text}", file=sys.stderr)


def error(text: str) -> None:
    print(f"{PROG}: error: {text}", file=sys.stderr)
