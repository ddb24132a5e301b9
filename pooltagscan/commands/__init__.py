"""Subcommands of the CLI, one module each, in the order `--help` lists them."""

from pooltagscan.commands import scan

COMMANDS = (scan,)
