"""Subcommands of the CLI, one module each, in the order `--help` lists them."""

from pooltagscan.commands import diff, drivers, extract, fleet, pool, report, scan

COMMANDS = (scan, pool, extract, drivers, report, diff, fleet)
