"""Subcommands of the CLI, one module each, in the order `--help` lists them."""

from pooltagscan.commands import diff, drivers, extract, pool, report, scan

COMMANDS = (scan, pool, extract, drivers, report, diff)
