"""YARA rule files named by the user, checked like every other input before YARA opens them.

YARA opens rule files by name itself. Left alone it would block forever on a FIFO, read a
device, or take a multi-GiB file passed by mistake; and an output could later replace a
rule file unnoticed. So each file is first opened here as an input (`pooltagscan.files`),
which refuses anything but a readable regular file and remembers its identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile

MAX_RULE_FILE_BYTES = 64 << 20
RULE_FILE = "a YARA rule file"


def check_rule_file(path: str) -> str:
    """`path`, once it is known to be a readable regular file of a sane size."""
    with InputFile.open(path, RULE_FILE) as source:
        if source.size > MAX_RULE_FILE_BYTES:
            raise InputError(
                path,
                f"{source.size} bytes is too large for a YARA rule file "
                f"(limit {MAX_RULE_FILE_BYTES >> 20} MiB)",
            )
    return path


def rule_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The rule files named (folders: their .yar/.yara files), each checked as an input.

    Each is opened read-only like any input (a FIFO or device is refused instead of
    blocking YARA's open forever, and an output may never replace it) and its size held
    against MAX_RULE_FILE_BYTES.
    """
    files: list[str] = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                raise InputError(path, f"cannot list folder: {exc.strerror or exc}") from None
            found = [os.path.join(path, n) for n in names if n.endswith((".yar", ".yara"))]
            if not found:
                raise InputError(path, "folder holds no .yar or .yara rule files")
        else:
            if not os.path.lexists(path):
                raise InputError(path, "no such YARA rule file or folder")
            found = [path]
        files.extend(check_rule_file(file) for file in found)
    return files
