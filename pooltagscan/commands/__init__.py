"""Subcommands of the CLI, one module each, in the order `--help` lists them."""

from pooltagscan.commands import diff, drivers, report, scan

COMMANDS = (scan, drivers, report, diff)
