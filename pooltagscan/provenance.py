"""Provenance of an output: which tool, when, how it was asked, and exactly which inputs.

An examiner cites an output only if it says what produced it. Every JSON document and
the HTML report carry the tool's version, the UTC time, the command line and, for each
dump, its size and sha256. The digest is computed by a thread that reads the dump in
file order while the scan runs (the scan's own reads go in address order, and for a
crash dump or a minidump that is not file order), so a run does not end with a second
pass over a multi-GiB file; the thread shares the dump's one read-only descriptor.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
import threading
from datetime import datetime, timezone
from typing import Any

from pooltagscan import __version__
from pooltagscan.files import InputFile

CHUNK = 8 << 20
STARTED = datetime.now(timezone.utc)  # the run's start (this module loads with the run)


class FileDigest:
    """sha256 of one input file, computed alongside whatever else runs."""

    def __init__(self, source: InputFile):
        self.source = source
        self.size = source.size
        self._digest = hashlib.sha256()
        self._stop = threading.Event()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset = 0
        try:
            while offset < self.size and not self._stop.is_set():
                data = self.source.pread(offset, min(CHUNK, self.size - offset))
                if not data:
                    break
                self._digest.update(data)  # releases the GIL for large buffers
                offset += len(data)
        except OSError as exc:
            self._error = exc
        self._done = offset

    def result(self) -> dict[str, Any]:
        """{path, size, sha256} once the whole file is hashed (waits for it)."""
        self._thread.join()
        complete = self._error is None and getattr(self, "_done", -1) == self.size
        return {
            "path": self.source.path,
            "size": self.size,
            "sha256": self._digest.hexdigest() if complete else None,
        }

    def cancel(self) -> None:
        """Stop reading (the descriptor is about to close): waits for the read under way."""
        self._stop.set()
        self._thread.join()


def document(inputs: list[dict[str, Any]], argv: list[str] | None = None) -> dict[str, Any]:
    """The `provenance` object of JSON outputs and the HTML report."""
    args = sys.argv if argv is None else argv
    return {
        "tool": "pooltagscan",
        "version": __version__,
        "time_utc": STARTED.isoformat(timespec="seconds"),
        "command_line": shlex.join(["pooltagscan", *args[1:]]),
        "inputs": inputs,
    }
