"""Carve the bytes of matching pool allocations into files, one per allocation.

MemProcFS shows a dump's pool as folders by tag; an analyst who wants every `Proc`
allocation in a hex editor, a parser or YARA gets them here as files, each with its
sha256 in a manifest so that later findings can be tied back to the evidence. Nothing
here prints; files go through `outputs.OutputFolder` (atomic, never over an input).

Layout of the folder: `<tag>/<address>.bin` per allocation, `<address>` as 16 hex digits
(big-pool allocations: `<address>-bigpool.bin`), the tag made safe for every file system
(`safe_tag`), and `manifest.json` plus `manifest.csv` listing address, tag, size, bytes
written, sha256, file and source of each, written last.

Memory stays bounded: the scan streams window by window, each allocation is read from
the dump (`MemoryImage.read`, in chunks of a MiB) and written as it is found, and the
manifests are written as the run goes. What is read:

- a block found by its header: `size` bytes from the header on; in a physical dump a
  block is cut at its page's end (the next physical page is unrelated memory; such a
  block is counted in `clipped`);
- a big-pool allocation: its address is a kernel virtual address. A kernel minidump's
  space is virtual, so there it is read, the bytes the minidump does not hold reading as
  zeros. A physical dump is read through the kernel's page tables when they are found
  (`addressing`): pages they do not map or the dump does not hold are written as zeros
  and counted in the row's `missing` (bytes) and the run's `missing_bytes`. Without
  page tables such allocations are skipped and counted (`skipped_bigpool`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pooltagscan.addressing import PageTables, read_virtual
from pooltagscan.filters import RecordFilter
from pooltagscan.inputs.base import MemoryImage
from pooltagscan.layouts import PAGE_SIZE
from pooltagscan.outputs import OutputFolder, PendingFile
from pooltagscan.records import SOURCE_BIGPOOL, TagNames, to_dicts
from pooltagscan.scan import PreparedScan, run
from pooltagscan.scanner.engine import ProgressCallback

MANIFEST_FIELDS = (
    "address",
    "tag",
    "size",
    "length",
    "sha256",
    "file",
    "source",
    "state",
    "pool",
    "confidence",
    "protected",
    "entry",
    "missing",
)
CHUNK_BYTES = 1 << 20
_SAFE = frozenset((string.ascii_letters + string.digits + "-_").encode())


def safe_tag(value: int) -> str:
    """A folder name for a tag (its uint32 value as in a record): letters, digits, `-`
    and `_` stay, every other byte becomes `%XX`, so `Irp ` is `Irp%20` and no tag can
    name `..`, a path separator or a device. Tags differing only in case (`Proc`,
    `proc`) share a folder on case-insensitive file systems; their files stay apart
    (addresses differ)."""
    raw = int(value).to_bytes(4, "little")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


@dataclass
class ExtractResult:
    """What a run wrote and what it left out, for the shell's notes and the manifest."""

    files: int = 0
    bytes: int = 0
    skipped_bigpool: int = 0  # big-pool allocations at virtual addresses of a physical dump
    clipped: int = 0  # blocks cut at their page's end (physical dumps)
    short: int = 0  # allocations the dump held fewer bytes of than their size
    translated: int = 0  # big-pool allocations read through the kernel page tables
    missing_bytes: int = 0  # ... bytes of theirs written as zeros (unmapped or not held)
    names: set[str] = field(default_factory=set, repr=False)  # big-pool files, for repeats

    def summary(self) -> dict[str, int]:
        return {
            "extracted": self.files,
            "bytes": self.bytes,
            "skipped_bigpool": self.skipped_bigpool,
            "clipped": self.clipped,
            "short": self.short,
            "translated_bigpool": self.translated,
            "missing_bytes": self.missing_bytes,
        }


class Manifest:
    """manifest.json and manifest.csv, filled row by row and renamed into place last."""

    def __init__(self, folder: OutputFolder, meta: dict[str, Any]):
        self.json: PendingFile = folder.open("manifest.json")
        self.csv: PendingFile = folder.open("manifest.csv")
        head = json.dumps(meta, indent=2)[:-2]
        self.json.write(f'{head},\n  "files": ['.encode())
        self._rows = 0
        self._line = io.StringIO()
        self._writer = csv.writer(self._line, lineterminator="\n")
        self._csv_row(MANIFEST_FIELDS)

    def _csv_row(self, values: Any) -> None:
        self._line.seek(0)
        self._line.truncate()
        self._writer.writerow(values)
        self.csv.write(self._line.getvalue().encode())

    def add(self, row: dict[str, Any]) -> None:
        sep = "," if self._rows else ""
        self.json.write(f"{sep}\n    {json.dumps(row)}".encode())
        self._csv_row(["" if row.get(k) is None else row.get(k) for k in MANIFEST_FIELDS])
        self._rows += 1

    def commit(self, summary: dict[str, int]) -> None:
        tail = json.dumps(summary, indent=2)[2:]
        self.json.write(f"\n  ],\n{tail}\n".encode())
        self.csv.commit()
        self.json.commit()

    def discard(self) -> None:
        self.json.discard()
        self.csv.discard()


def _chunks(image: MemoryImage, address: int, length: int, digest) -> Iterator[bytes]:
    done = 0
    while done < length:
        data = image.read(address + done, min(CHUNK_BYTES, length - done))
        if not data:
            return
        digest.update(data)
        done += len(data)
        yield data


def _translated_chunks(
    image: MemoryImage, tables: PageTables, address: int, length: int, digest, missing: list[int]
) -> Iterator[bytes]:
    """A big-pool allocation's bytes through the page tables; `missing[0]` counts the
    bytes written as zeros."""
    for data, absent in read_virtual(image, tables, address, length, CHUNK_BYTES):
        missing[0] += absent
        digest.update(data)
        yield data


def _file_name(row: dict[str, Any], result: ExtractResult) -> str:
    folder = safe_tag(row["tag_value"])
    if row["source"] != "bigpool":
        return f"{folder}/{row['address']:016x}.bin"
    # A freed big-page entry keeps its address: a live one may repeat it.
    base = f"{folder}/{row['address']:016x}-bigpool"
    name, n = f"{base}.bin", 1
    while name in result.names:
        n += 1
        name = f"{base}-{n}.bin"
    result.names.add(name)
    return name


def extract(
    prepared: PreparedScan,
    record_filter: RecordFilter,
    folder: OutputFolder,
    meta: dict[str, Any],
    jobs: int = 1,
    progress: ProgressCallback | None = None,
) -> ExtractResult:
    """Write every allocation `record_filter` keeps into `folder` (see the module's
    docstring), then the manifests (whose head is `meta`)."""
    image = prepared.image
    virtual = image.format == "minidump"
    tables = None if virtual else prepared.kernel_space().tables
    result = ExtractResult()
    names = TagNames()
    manifest = Manifest(folder, meta | {"kernel_space": prepared.kernel_space().as_dict()})
    try:
        for records in run(prepared, record_filter, jobs, progress):
            if not records.size:
                continue
            if not virtual and tables is None:
                result.skipped_bigpool += int((records["source"] == SOURCE_BIGPOOL).sum())
                records = records[records["source"] != SOURCE_BIGPOOL]
            for value, rec in zip(records["tag"].tolist(), to_dicts(records, names)):
                _write_one(image, virtual, folder, manifest, result, value, rec, tables)
        manifest.commit(result.summary())
    finally:
        manifest.discard()
    return result


def _write_one(
    image: MemoryImage,
    virtual: bool,
    folder: OutputFolder,
    manifest: Manifest,
    result: ExtractResult,
    tag_value: int,
    rec: dict[str, Any],
    tables: PageTables | None = None,
) -> None:
    address, size = rec["offset"], rec["size"]
    length = size
    if not virtual and rec["source"] == "page":
        length = min(size, PAGE_SIZE - address % PAGE_SIZE)
        result.clipped += length < size
    row = {"address": address, "tag_value": tag_value, "source": rec["source"]}
    name = _file_name(row, result)
    digest = hashlib.sha256()
    missing = None
    if tables is not None and rec["source"] == "bigpool":
        counter = [0]
        chunks = _translated_chunks(image, tables, address, length, digest, counter)
        written = folder.write(name, chunks)
        missing = counter[0]
        result.translated += 1
        result.missing_bytes += missing
    else:
        written = folder.write(name, _chunks(image, address, length, digest))
    result.short += written < length
    result.files += 1
    result.bytes += written
    manifest.add(
        {
            "address": address,
            "tag": rec["tag"],
            "size": size,
            "length": written,
            "sha256": digest.hexdigest(),
            "file": name,
            "source": rec["source"],
            "state": rec["state"],
            "pool": rec["pool"],
            "confidence": rec["confidence"],
            "protected": rec["protected"],
            "entry": rec.get("entry"),
            "missing": missing,
        }
    )
