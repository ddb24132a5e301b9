"""Errors that the shells turn into one line on stderr and exit code 2.

Every failure caused by the user's input (a missing path, a truncated dump, a malformed
file) is raised as `InputError` carrying the path and the problem, so the CLI and the
Volatility plugin can report it without a traceback and a batch can skip one bad file.
Both errors cross process boundaries (a worker's failure reaches the parent as the same
error), so they pickle by their constructor arguments.
"""

from __future__ import annotations

import os


class PoolTagScanError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(PoolTagScanError):
    """A file given by the user cannot be used; `str()` is the one-line message."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str):
        self.path = os.fspath(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


class OutputError(PoolTagScanError):
    """An output cannot be written (full disk, unwritable path, refused target)."""

    def __init__(self, target: str, problem: str):
        self.target = target
        self.problem = problem
        super().__init__(f"{target}: {problem}")

    def __reduce__(self):
        return (type(self), (self.target, self.problem))


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def one_line(text: str) -> str:
    """`text` with control characters escaped: bytes of a hostile file quoted in a message
    (a section name holding a newline, say) must not break it over several lines."""
    return text.translate(_CONTROLS)
