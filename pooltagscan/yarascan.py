"""YARA over a dump, each hit placed in the pool allocation that holds it.

An analyst who finds a string or a malware pattern in memory wants to know which pool
tag owns the bytes. Hits are matched to allocations of the same physical page only:
in a physical dump the next page is usually unrelated memory, so a block that runs past
its page end says nothing about the bytes of the following page.

Big-pool allocations have no header in their pages: the kernel's big-page table knows
them by virtual address. When the dump's kernel page tables are found, a first pass
collects the big-pool records and walks their ranges through the tables into a reverse
map (physical page -> allocation, `addressing.reverse`), so that a hit outside every
header-carrying block is placed in the big-pool allocation its page belongs to, with
the hit's virtual address. Live entries win over freed ones (a freed entry keeps its
old address, whose pages may hold a new allocation now).

Hostile memory is full of patterns a careless rule matches millions of times (a rule on
two zero bytes in a dump of zeros). The hits listed are bounded per rule and per dump
(`MAX_HITS_PER_RULE`, the rest counted), YARA keeps only the bytes we preview of each
match, and when YARA's own per-string cap (a million matches per scanned window) is
reached the scan says so once per string: the hits of that string are then incomplete.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pooltagscan.addressing.reverse import PageOwners, page_owners
from pooltagscan.errors import InputError
from pooltagscan.filters import RecordFilter
from pooltagscan.inputs.base import MemoryImage
from pooltagscan.layouts import PAGE_SIZE, STATE_FREE
from pooltagscan.records import SOURCE_BIGPOOL, TagNames, concat
from pooltagscan.rulefiles import rule_files
from pooltagscan.scan import PreparedScan, run
from pooltagscan.scanner.engine import WINDOW_BYTES, ProgressCallback, window_records

PREVIEW_BYTES = 64
# Bytes shown on each side of a match: enough to see the field or string it sits in.
CONTEXT_BYTES = 16
MAX_HITS_PER_RULE = 10_000
# Big-pool records kept for placing hits (a real table holds tens of thousands; a dump
# full of table-shaped pages could make millions).
MAX_BIG_RECORDS = 1 << 20


@dataclass
class YaraHit:
    rule: str
    string: str
    address: int
    data: bytes  # the matched bytes (first PREVIEW_BYTES)
    tag: str | None = None  # containing allocation, when one is found
    allocation: int | None = None
    allocation_size: int | None = None
    length: int | None = None  # the whole match (data keeps its first PREVIEW_BYTES)
    before: bytes = b""  # up to CONTEXT_BYTES before the match, same page, captured only
    after: bytes = b""  # up to CONTEXT_BYTES after the match, likewise
    # The match's kernel virtual address, when a physical dump's hit is placed in a
    # big-pool allocation (whose `allocation` is virtual) through the page tables.
    virtual_address: int | None = None

    @property
    def offset_in_allocation(self) -> int | None:
        if self.allocation is None:
            return None
        at = self.address if self.virtual_address is None else self.virtual_address
        return at - self.allocation

    @property
    def ascii(self) -> str:
        """The matched bytes as a hex viewer shows them: printable ASCII, `.` otherwise."""
        return printable_ascii(self.data)

    @property
    def utf16(self) -> str | None:
        """The matched bytes read as UTF-16LE, when that gives readable text (None else)."""
        return printable_utf16(self.data)

    def as_dict(self) -> dict[str, Any]:
        """Fields of every format; the first eight are those of earlier versions."""
        offset = self.offset_in_allocation
        return {
            "rule": self.rule,
            "string": self.string,
            "address": self.address,
            "data": self.data.hex(),
            "tag": self.tag,
            "allocation": self.allocation,
            "allocation_size": self.allocation_size,
            "offset_in_allocation": offset,
            "offset_in_allocation_hex": None if offset is None else f"{offset:#x}",
            "length": len(self.data) if self.length is None else self.length,
            "ascii": self.ascii,
            "utf16": self.utf16,
            "before": self.before.hex(),
            "after": self.after.hex(),
            "context": self.context,
            "virtual_address": self.virtual_address,
        }

    @property
    def context(self) -> str:
        """The match in brackets between the bytes around it, all read the way the match
        reads: as UTF-16LE when the match is such text (context bytes that are not become
        `.`), else as printable ASCII. `data` holds at most PREVIEW_BYTES of a longer
        match, so the brackets then close on `...` and no `after` follows."""
        cut = self.length is not None and self.length > len(self.data)
        wide = self.utf16
        if wide is None:
            before, match, after = map(printable_ascii, (self.before, self.data, self.after))
        else:
            before = _wide_text(self.before[len(self.before) % 2 :])
            after = _wide_text(self.after[: len(self.after) - len(self.after) % 2])
            match = wide
        return f"{before}[{match}...]" if cut else f"{before}[{match}]{after}"


def printable_ascii(data: bytes) -> str:
    """Bytes 0x20-0x7E as themselves and every other byte as `.`."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)


def _wide_text(data: bytes) -> str:
    """UTF-16LE code units as their character when printable below U+2000, else `.`."""
    text = data.decode("utf-16-le", "replace")
    return "".join(c if c.isprintable() and ord(c) < 0x2000 else "." for c in text)


def printable_utf16(data: bytes) -> str | None:
    """`data` decoded as UTF-16LE when every code unit is a printable character below
    U+2000 (Latin, Greek, Cyrillic and the like), else None.

    Any two ASCII bytes also decode to a printable CJK character (`Th` is U+6854), so a
    wider test would "decode" every ASCII match; kernel strings worth reading (device
    paths, registry keys, names) are in the range kept.
    """
    if len(data) < 2 or len(data) % 2:
        return None
    text = data.decode("utf-16-le", "replace")
    if all(c.isprintable() and ord(c) < 0x2000 for c in text):
        return text
    return None


def compile_rules(paths: Iterable[str | os.PathLike[str]]):
    """Compile rule files (or every .yar/.yara file of a folder) into one rule set."""
    import yara

    sources = {f"r{number}": file for number, file in enumerate(rule_files(paths))}
    try:
        return yara.compile(filepaths=sources)
    except yara.Error as exc:  # syntax errors name the file and line themselves
        raise InputError(None, f"YARA rules: {exc}") from None


@dataclass
class YaraScan:
    """Hits of one dump in address order (iterate once), and what was left out.

    After iteration, `notes` says in plain words which rules had more hits than are
    listed and which strings reached YARA's per-string cap.
    """

    prepared: PreparedScan
    rules: object
    progress: ProgressCallback | None = None
    window_bytes: int = WINDOW_BYTES
    max_hits_per_rule: int = MAX_HITS_PER_RULE
    max_big_records: int = MAX_BIG_RECORDS
    capped: dict[tuple[str, str], int] = field(default_factory=dict)  # (rule, string) -> windows
    unlisted: Counter = field(default_factory=Counter)  # rule -> hits not listed
    placement_notes: list[str] = field(default_factory=list)  # about big-pool placement

    def __iter__(self) -> Iterator[YaraHit]:
        import yara

        # YARA keeps up to 512 bytes of every match by default; we show PREVIEW_BYTES.
        yara.set_config(max_match_data=PREVIEW_BYTES)
        image: MemoryImage = self.prepared.image
        names = TagNames()
        listed: Counter = Counter()
        windows = list(image.windows(self.window_bytes))
        total = sum(w.length for w in windows)
        done = 0
        big, owners = self._big_pool_map(total)
        if owners is not None:
            # The first pass showed its progress on the first half of the bar.
            done, total = total, 2 * total

        def warned(kind: int, string) -> int:
            if kind == yara.CALLBACK_TOO_MANY_MATCHES:
                key = (string.rule, string.string)
                self.capped[key] = self.capped.get(key, 0) + 1
            return yara.CALLBACK_CONTINUE

        # Hits are placed in header-carrying blocks of the same physical page; big-pool
        # records are at virtual addresses and have no bytes in this page.
        config = dataclasses.replace(self.prepared.config, tables=False)
        for window in windows:
            with image.words(window) as words:
                records = window_records(image, config, window, words)
                data = memoryview(words).cast("B")
                matches = self.rules.match(data=data, warnings_callback=warned)
                hits = []
                for match in matches:
                    room = self.max_hits_per_rule - listed[match.rule]
                    for string in match.strings:
                        for instance in string.instances:
                            if room <= 0:
                                self.unlisted[match.rule] += 1
                                continue
                            room -= 1
                            hits.append(
                                _hit(image, window, data, match.rule, string.identifier, instance)
                            )
                    listed[match.rule] = self.max_hits_per_rule - max(room, 0)
                del data
            del matches
            hits.sort(key=lambda h: (h.address, h.rule, h.string))
            _place(hits, records, names)
            if owners is not None:
                _place_big(hits, big, owners, names)
            yield from hits
            done += window.length
            if self.progress:
                self.progress(done, total)
        image.check_unchanged()

    def _big_pool_map(self, total: int) -> tuple[np.ndarray, PageOwners | None]:
        """(big-pool records, their reverse map) when hits can be placed in them: a
        physical dump, the table search on, big-pool records found, and the kernel page
        tables found (else a note says why not). Costs a pass over the dump."""
        none = np.empty(0), None
        image: MemoryImage = self.prepared.image
        if image.format == "minidump" or not self.prepared.config.tables:
            return none
        only_big = RecordFilter(sources=frozenset({SOURCE_BIGPOOL}))
        progress = self.progress

        def first_half(done: int, _total: int) -> None:
            if progress:
                progress(done, 2 * total)

        parts, kept = [], 0
        for records in run(self.prepared, only_big, 1, first_half):
            if records.size and kept < self.max_big_records:
                records = records[: self.max_big_records - kept]
                parts.append(records)
                kept += records.size
        big = concat(parts)
        if not big.size:
            return none
        if kept >= self.max_big_records:
            self.placement_notes.append(
                f"only the first {self.max_big_records:,} big-pool records are used to place "
                "hits (this dump has more)"
            )
        space = self.prepared.kernel_space()
        if space.tables is None:
            why = "; ".join(space.notes) or "no kernel page tables"
            self.placement_notes.append(
                f"hits inside the {big.size:,} big-pool allocations are not placed: {why}"
            )
            return none
        # Live entries first, then freed ones, each in table order.
        big = big[np.argsort(big["state"] == STATE_FREE, kind="stable")]
        owners = page_owners(space.tables, big["offset"], big["size"])
        if not owners.complete:
            self.placement_notes.append(
                f"the big-pool allocations were mapped to {len(owners):,} physical pages "
                "only (the budget of the walk through the page tables); hits in the rest "
                "are not placed"
            )
        return big, owners

    @property
    def notes(self) -> list[str]:
        notes = list(self.placement_notes)
        for (rule, string), windows in sorted(self.capped.items()):
            notes.append(
                f"YARA string {string} of rule {rule} matched more than a million times in "
                f"{windows} window(s) of {self.window_bytes >> 20} MiB; YARA stops counting "
                "there, so that string's hits are incomplete (make the rule more specific)"
            )
        for rule, count in sorted(self.unlisted.items()):
            notes.append(
                f"rule {rule}: {count} more hit(s) not listed (only the first "
                f"{self.max_hits_per_rule} of each rule are)"
            )
        return notes


def scan_yara(
    prepared: PreparedScan,
    rules,
    progress: ProgressCallback | None = None,
    window_bytes: int = WINDOW_BYTES,
) -> YaraScan:
    """The YARA scan of one dump: iterate for the hits, then read `notes`.

    Rules run on one window of the dump at a time (bounded memory), so a match that
    would straddle two windows (every 32 MiB) is not seen.
    """
    return YaraScan(prepared, rules, progress, window_bytes)


def _hit(image: MemoryImage, window, data: memoryview, rule: str, string: str, instance) -> YaraHit:
    """One hit with its context: the bytes around the match in the window's buffer, cut
    to the page of the match (the next physical page is usually unrelated memory, and a
    gathered minidump window's next page is elsewhere in the address space) and to the
    bytes the dump holds (a minidump page's padding is not memory)."""
    offset, length = instance.offset, instance.matched_length
    end = offset + max(length, 1) - 1  # the last matched byte
    low = max(offset - CONTEXT_BYTES, offset - offset % PAGE_SIZE)
    high = min(offset + length + CONTEXT_BYTES, end - end % PAGE_SIZE + PAGE_SIZE)
    before = _captured_run(image, window, low, offset, from_end=True)
    after = _captured_run(image, window, offset + length, high, from_end=False)
    return YaraHit(
        rule,
        string,
        window.address_at(offset),
        bytes(instance.matched_data[:PREVIEW_BYTES]),
        length=length,
        before=bytes(data[offset - before : offset]),
        after=bytes(data[offset + length : offset + length + after]),
    )


def _captured_run(image: MemoryImage, window, start: int, stop: int, from_end: bool) -> int:
    """How many bytes of the buffer range [start, stop) the dump holds, counted from the
    end next to the match (`from_end`: the bytes before it) or from the start."""
    if stop <= start:
        return 0
    offsets = np.arange(start, stop)
    held = image.captured(window.addresses(offsets), 1)
    if from_end:
        held = held[::-1]
    missing = np.flatnonzero(~held)
    return int(missing[0]) if missing.size else stop - start


def _place_big(hits: list[YaraHit], big: np.ndarray, owners: PageOwners, names: TagNames) -> None:
    """Place the hits no header-carrying block holds in the big-pool allocation that
    maps their physical page (see the module docstring)."""
    for hit in hits:
        if hit.allocation is not None:
            continue
        found = owners.place(hit.address)
        if found is None:
            continue
        i, virtual = found
        rec = big[i]
        hit.tag = names(int(rec["tag"]))
        hit.allocation = int(rec["offset"])
        hit.allocation_size = int(rec["size"])
        hit.virtual_address = virtual


def _place(hits: list[YaraHit], records: np.ndarray, names: TagNames) -> None:
    if not hits or not records.size:
        return
    # Unsigned throughout: kernel virtual addresses (minidumps) lie above 2**63.
    order = np.argsort(records["offset"], kind="stable")
    starts = records["offset"][order]
    ends = starts + records["size"][order].astype(np.uint64)
    address = np.array([h.address for h in hits], np.uint64)
    idx = np.searchsorted(starts, address, side="right").astype(np.int64) - 1
    ok = idx >= 0
    idx = np.maximum(idx, 0)
    ok &= address < ends[idx]
    ok &= starts[idx] // np.uint64(PAGE_SIZE) == address // np.uint64(PAGE_SIZE)
    for hit, good, i in zip(hits, ok.tolist(), idx.tolist()):
        if good:
            rec = records[order[i]]
            hit.tag = names(int(rec["tag"]))
            hit.allocation = int(rec["offset"])
            hit.allocation_size = int(rec["size"])
