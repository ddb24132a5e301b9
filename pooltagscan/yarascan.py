"""YARA over a dump, each hit placed in the pool allocation that holds it.

An analyst who finds a string or a malware pattern in memory wants to know which pool
tag owns the bytes. Hits are matched to allocations of the same physical page only:
in a physical dump the next page is usually unrelated memory, so a block that runs past
its page end says nothing about the bytes of the following page.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pooltagscan.errors import InputError
from pooltagscan.inputs.base import MemoryImage
from pooltagscan.layouts import PAGE_SIZE
from pooltagscan.records import TagNames
from pooltagscan.scan import PreparedScan
from pooltagscan.scanner.engine import WINDOW_BYTES, ProgressCallback, window_records

PREVIEW_BYTES = 32


@dataclass
class YaraHit:
    rule: str
    string: str
    address: int
    data: bytes  # the matched bytes (first PREVIEW_BYTES)
    tag: str | None = None  # containing allocation, when one is found
    allocation: int | None = None
    allocation_size: int | None = None

    @property
    def offset_in_allocation(self) -> int | None:
        return None if self.allocation is None else self.address - self.allocation

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "string": self.string,
            "address": self.address,
            "data": self.data.hex(),
            "tag": self.tag,
            "allocation": self.allocation,
            "allocation_size": self.allocation_size,
            "offset_in_allocation": self.offset_in_allocation,
        }


def compile_rules(paths: Iterable[str | os.PathLike[str]]):
    """Compile rule files (or every .yar/.yara file of a folder) into one rule set."""
    import yara

    sources: dict[str, str] = {}
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise InputError(path, "no such YARA rule file or folder")
        files = (
            sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".yar", ".yara")))
            if os.path.isdir(path)
            else [path]
        )
        if not files:
            raise InputError(path, "folder holds no .yar or .yara rule files")
        for file in files:
            sources[f"r{len(sources)}"] = file
    try:
        return yara.compile(filepaths=sources)
    except yara.Error as exc:  # syntax errors name the file and line themselves
        raise InputError(None, f"YARA rules: {exc}") from None


def scan_yara(
    prepared: PreparedScan,
    rules,
    progress: ProgressCallback | None = None,
    window_bytes: int = WINDOW_BYTES,
) -> Iterator[YaraHit]:
    """Hits in address order, with their containing allocations.

    Rules run on one window of the dump at a time (bounded memory), so a match that
    would straddle two windows (every 32 MiB) is not seen.
    """
    image: MemoryImage = prepared.image
    names = TagNames()
    windows = list(image.windows(window_bytes))
    total = sum(w.length for w in windows)
    done = 0
    for window in windows:
        with image.words(window) as words:
            records = window_records(image, prepared.config, window, words)
            data = memoryview(words).cast("B")
            matches = rules.match(data=data)
            hits = []
            for match in matches:
                for string in match.strings:
                    for instance in string.instances:
                        hits.append(
                            YaraHit(
                                match.rule,
                                string.identifier,
                                window.address + instance.offset,
                                bytes(instance.matched_data[:PREVIEW_BYTES]),
                            )
                        )
            del data
        hits.sort(key=lambda h: (h.address, h.rule, h.string))
        _place(hits, records, names)
        yield from hits
        done += window.length
        if progress:
            progress(done, total)


def _place(hits: list[YaraHit], records: np.ndarray, names: TagNames) -> None:
    if not hits or not records.size:
        return
    order = np.argsort(records["offset"], kind="stable")
    starts = records["offset"][order].astype(np.int64)
    ends = starts + records["size"][order].astype(np.int64)
    address = np.array([h.address for h in hits], np.int64)
    idx = np.searchsorted(starts, address, side="right") - 1
    ok = idx >= 0
    idx = np.maximum(idx, 0)
    ok &= address < ends[idx]
    ok &= starts[idx] // PAGE_SIZE == address // PAGE_SIZE
    for hit, good, i in zip(hits, ok.tolist(), idx.tolist()):
        if good:
            rec = records[order[i]]
            hit.tag = names(int(rec["tag"]))
            hit.allocation = int(rec["offset"])
            hit.allocation_size = int(rec["size"])
