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
from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.workers import Background

CHUNK = 8 << 20
STARTED = datetime.now(timezone.utc)  # the run's start (this module loads with the run)


class FileDigest:
    """sha256 of one input file, computed alongside whatever else runs.

    In a worker process where fork exists (see workers.Background: a thread shared the
    scan's interpreter lock and quadrupled a one-job run), else in a thread."""

    def __init__(self, source: InputFile):
        self.source = source
        self.size = source.size
        self._stop = threading.Event()
        self._value: tuple[str | None, int] | None = None
        self._process = Background.start(_hash_in_worker, None, _worker_source, (source,))
        if self._process is None:
            self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        self._value = _hash(self.source, self._stop)

    def result(self) -> dict[str, Any]:
        """{path, size, sha256} once the whole file is hashed (waits for it)."""
        if self._process is not None:
            try:
                self._value = self._value or self._process.result()
            except Exception:  # noqa: BLE001 - a dead hasher leaves no digest, not a failure
                self._value = (None, -1)
        else:
            self._thread.join()
        hexdigest, done = self._value or (None, -1)
        return {
            "path": self.source.path,
            "size": self.size,
            "sha256": hexdigest if done == self.size else None,
        }

    def cancel(self) -> None:
        """Stop reading (the descriptor is about to close): waits for the read under way."""
        if self._process is not None:
            self._process.cancel()
            return
        self._stop.set()
        self._thread.join()


def _hash(source: InputFile, stop: threading.Event | None = None) -> tuple[str | None, int]:
    """(hex sha256, bytes hashed) of the file, read in file order into one buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    offset = 0
    try:
        while offset < source.size and not (stop is not None and stop.is_set()):
            view = memoryview(buffer)[: min(CHUNK, source.size - offset)]
            got = source.readinto(view, offset)
            if not got:
                break
            digest.update(view[:got])  # releases the GIL for large buffers
            offset += got
    except (OSError, InputError):  # the digest is left out; the scan reports the file
        return None, offset
    return digest.hexdigest(), offset


_source: InputFile | None = None


def _worker_source(source: InputFile) -> None:
    global _source
    _source = source


def _hash_in_worker(_: None) -> tuple[str | None, int]:
    assert _source is not None
    return _hash(_source)


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
