"""One check of a user-named input file, shared by dumps, drivers and tag lists.

Every way a path can be unusable becomes an InputError whose text names the file and
the problem in the same words whatever the command, so users and scripts see one
vocabulary: "no such file", "is a directory, not a ...", "is not a regular file", ...
"""

from __future__ import annotations

import os
import stat

from pooltagscan.errors import InputError


def regular_file(path: str | os.PathLike[str], kind: str) -> tuple[str, int]:
    """(path, size) of a readable regular file; `kind` names what was expected."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except OSError as exc:
        raise InputError(path, f"cannot access: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(path, f"is a directory, not {kind}")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(path, "is not a regular file")
    return path, info.st_size


def read_limited(path: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a file (one more, so callers can tell it is too big)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
