"""Streaming writers for allocation records: table, jsonl, json and csv.

Writers receive record batches as the scan produces them and never buffer a whole dump,
so output starts at once and memory stays flat on multi-GiB images.
"""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

import numpy as np

from pooltagscan.records import FIELDS, TagNames, to_dicts, to_tuples

FORMATS = ("table", "jsonl", "json", "csv")


class RecordWriter:
    """Base writer: `begin` once per dump, `write` per batch, `end` once per dump."""

    def __init__(self, out: TextIO, extra: dict[str, Any] | None = None):
        self.out = out
        self.names = TagNames()
        self.count = 0
        self.extra = extra or {}  # fields prefixed to every record (e.g. dump, with several)

    def begin(self, meta: dict[str, Any]) -> None:
        pass

    def write(self, records: np.ndarray) -> None:
        raise NotImplementedError

    def end(self) -> None:
        pass

    def abort(self, problem: str) -> None:
        """The dump's scan failed part way: end its output as well as the format allows."""
        self.end()

    def finish(self) -> None:
        """Called once after the last dump."""

    def _dicts(self, records: np.ndarray):
        for item in to_dicts(records, self.names):
            self.count += 1
            yield {**self.extra, **item} if self.extra else item


class JsonlWriter(RecordWriter):
    def write(self, records: np.ndarray) -> None:
        dumps = json.dumps
        self.out.write("".join(dumps(d) + "\n" for d in self._dicts(records)))


class CsvWriter(RecordWriter):
    def __init__(self, out: TextIO, extra: dict[str, Any] | None = None):
        super().__init__(out, extra)
        self._csv = csv.writer(out, lineterminator="\n")
        self._header_done = False

    def _header(self) -> None:
        if not self._header_done:
            self._csv.writerow([*self.extra, *FIELDS])
            self._header_done = True

    def write(self, records: np.ndarray) -> None:
        self._header()
        extra = tuple(self.extra.values())
        self.count += records.size
        self._csv.writerows(
            extra + tuple("" if v is None else v for v in row)
            for row in to_tuples(records, self.names)
        )

    def end(self) -> None:
        self._header()


class JsonWriter(RecordWriter):
    """One JSON document per dump: the scan's metadata, then the allocations array."""

    def begin(self, meta: dict[str, Any]) -> None:
        head = json.dumps(meta)[:-1]
        self.out.write(head + (", " if meta else "") + '"allocations": [')
        self._first = True

    def write(self, records: np.ndarray) -> None:
        for d in self._dicts(records):
            self.out.write(("\n  " if self._first else ",\n  ") + json.dumps(d))
            self._first = False

    def end(self) -> None:
        self.out.write(f'\n], "count": {self.count}}}\n')
        self.count = 0

    def abort(self, problem: str) -> None:
        """A valid document that says the list is incomplete, and why."""
        self.out.write(f'\n], "count": {self.count}, "error": {json.dumps(problem)}}}\n')
        self.count = 0


class TableWriter(RecordWriter):
    """Fixed columns so rows can stream without measuring the whole result first."""

    HEADERS = ("Address", "Tag", "P", "Size", "Pool", "State", "Layout", "Conf", "Source")

    def begin(self, meta: dict[str, Any]) -> None:
        # Big-pool records are at kernel virtual addresses, wider than physical ones.
        wide = 18 if meta.get("architecture") != "x86" else 10
        self._addr = max(wide, 2 + len(f"{int(meta.get('max_address', 0)):x}"))
        self._rows = 0
        if "dump" in meta and self.extra:
            self.out.write(f"== {meta['dump']}\n")

    def _line(self, cells: tuple[str, ...]) -> str:
        addr, tag, prot, size, pool, state, layout, conf, source = cells
        return (
            f"{addr:>{self._addr}}  {tag:<4}  {prot:1}  {size:>7}  {pool:<8}  "
            f"{state:<9}  {layout:<16}  {conf:<6}  {source}\n"
        )

    def write(self, records: np.ndarray) -> None:
        lines = []
        if self._rows == 0 and records.size:
            lines.append(self._line(self.HEADERS))
        for d in self._dicts(records):
            lines.append(
                self._line(
                    (
                        f"{d['offset']:#x}",
                        d["tag"],
                        "*" if d["protected"] else "",
                        str(d["size"]),
                        d["pool"],
                        d["state"],
                        d["layout"],
                        d["confidence"],
                        d["source"],
                    )
                )
            )
        self._rows += records.size
        self.out.write("".join(lines))

    def end(self) -> None:
        if self._rows == 0:
            self.out.write("no pool allocations matched\n")


def make_writer(fmt: str, out: TextIO, extra: dict[str, Any] | None = None) -> RecordWriter:
    writers = {"table": TableWriter, "jsonl": JsonlWriter, "json": JsonWriter, "csv": CsvWriter}
    return writers[fmt](out, extra)
