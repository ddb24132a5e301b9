"""Streaming writers for allocation records: table, jsonl, json and csv.

Writers receive record batches as the scan produces them and never buffer a whole dump,
so output starts at once and memory stays flat on multi-GiB images.

Records are rendered in bulk, not as a dict per record: a dump repeats a few thousand
(tag, size, pool, state, ...) combinations millions of times, so everything of a line but
its offset (and a big-pool record's entry) is a fragment built once per combination, with
json.dumps or the csv module themselves, and cached. A batch is then its offsets as
decimal (or hex) text interleaved with fragments and joined once. That is what makes
`--format jsonl` about as fast as `--stats`: json.dumps and a dict per record were 80% of
the time. The text is byte-identical to json.dumps / csv.writer of `records.to_dicts`
(tests/test_render_records.py holds the writers to that).
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import numpy as np

from pooltagscan.objects.decode import OBJECT_FIELDS
from pooltagscan.records import (
    CONFIDENCE_NAMES,
    FAMILY_CODES,
    FIELDS,
    POOL_NAMES,
    RECORD_DTYPE,
    SOURCE_BIGPOOL,
    SOURCE_NAMES,
    STATE_NAMES,
    TagNames,
)
from pooltagscan.render.writers import formats
from pooltagscan.scanner.native import native
from pooltagscan.tags.database import TagDatabase
from pooltagscan.uniques import unique_inverse

# The registry's formats, written here by the specialised record writers below.
FORMATS = formats("table", "jsonl", "json", "csv")

# Text joined and written at once: about 1 MiB, which stays in the CPU caches (a
# batch-sized string of 25 MB took twice as long). Not much more either: malloc hands
# chunks of 2 MB back to the kernel when they are freed, and a GiB of jsonl in such
# chunks took 65,000 page faults, a sixth of its run. The rows per chunk follow the
# length of the rows, between these bounds.
TEXT_BYTES = 1 << 20
TEXT_ROWS = 1 << 13
MIN_TEXT_ROWS = 1 << 8
# Combinations whose fragments are kept; only a forced layout's noise comes near it.
CACHE_LIMIT = 1 << 18

_LAYOUTS = tuple(family.value for family in FAMILY_CODES)
# A size no block has, written where a template's size goes.
_SIZE_MARK = 98765432109876543
# Mixed-radix code of the small enums of a record; fits 8 bits.
_RADIX = (len(POOL_NAMES), len(STATE_NAMES), len(_LAYOUTS), len(CONFIDENCE_NAMES), 2)
assert int(np.prod(_RADIX)) <= 256, "the packed fragment key has 8 bits for the enums"


class RecordFields:
    """The contract values of one fragment key, everything of a record but offset/entry."""

    __slots__ = ("confidence", "layout", "pool", "protected", "size", "source", "state", "tag")

    def __init__(self, tag: str, protected: bool, size: int, code: int) -> None:
        self.tag, self.protected, self.size = tag, protected, size
        code, source = divmod(code, _RADIX[4])
        code, confidence = divmod(code, _RADIX[3])
        code, family = divmod(code, _RADIX[2])
        pool, state = divmod(code, _RADIX[1])
        self.pool = POOL_NAMES[pool]
        self.state = STATE_NAMES[state]
        self.layout = _LAYOUTS[family]
        self.confidence = CONFIDENCE_NAMES[confidence]
        self.source = SOURCE_NAMES[source]

    def values(self) -> tuple[Any, ...]:
        """In FIELDS order, from tag to source."""
        return (
            self.tag,
            self.protected,
            self.size,
            self.pool,
            self.state,
            self.layout,
            self.confidence,
            self.source,
        )


# (fields, owner, description) -> (text before the entry, text after it); the entry's
# text goes between them on big-pool records, nothing on page records.
FragmentMaker = Callable[[RecordFields, str, str], tuple[str, str]]


class LineBuilder:
    """Lines of many records at once: offset text + a cached fragment per combination.

    `head` is what precedes a record's offset (the first line may get `first_head`
    instead, for the json document's separators); every fragment carries the next
    line's head, so a batch is a join of [offset, fragment, offset, fragment, ...].

    A combination is packed in one uint64 (tag and protected bit, the enums' code, and
    the size, which fits 23 bits on every header-carrying block): known ones are kept in
    a sorted array beside their fragments, so a batch finds its fragments with numpy
    alone, and Python builds text only for combinations it has not met yet.
    """

    def __init__(
        self,
        names: TagNames,
        make: FragmentMaker,
        entries: bool = True,
        hex_width: Callable[[], int] | None = None,
        plain_size: bool = False,
    ) -> None:
        self.names = names
        self.make = make
        # The maker writes the size as plain decimal (json, csv; not the table's padded
        # column): a fragment is then built once per (tag, enums) and its size put in.
        self.plain_size = plain_size
        # Offsets in `0x` hex right-aligned in this many columns (asked per batch: the
        # table sets its width per dump), else in decimal. Both joins write them so.
        self.hex_width = hex_width
        self.entries = entries  # whether big-pool lines show their table entry
        # Rewrites the rows of some records in place (the object fields of `--objects`):
        # called with the batch's offsets and its row fragments, each ending in the head.
        self.patch: Callable[[np.ndarray, np.ndarray], None] | None = None
        # Whether `patch` has rows to rewrite in this dump (rows are then gathered in
        # Python, where it can reach them).
        self.patching: Callable[[], bool] = lambda: False
        self.head = ""
        self._chunk_rows = TEXT_ROWS
        self._reset()

    def _reset(self) -> None:
        self._templates: dict[tuple[int, int], tuple[int, str, str, str | None] | None] = {}
        self._keys = np.empty(0, dtype=np.uint64)
        self._pieces_for: bool | None = None  # what _pieces_made was made for
        self._pieces_made: Any = None
        # The whole fragment of a page record, or (before, after) of a big-pool record,
        # whose entry goes between.
        self._fragments = np.empty(0, dtype=object)

    def set_head(self, head: str) -> None:
        """A new head (another dump's prefix) invalidates every cached fragment."""
        if head != self.head:
            self.head = head
            self._reset()

    def _build(self, tag_key: int, code: int, size: int) -> str | tuple[str, str]:
        """A combination's fragment: from its (tag, enums) template where there is one
        (a GiB holds 6,000 combinations of 200 templates; making each from scratch was
        a seventh of a jsonl run)."""
        if self.plain_size:
            template = self._templates.get((tag_key, code), False)
            if template is False:
                if len(self._templates) >= CACHE_LIMIT:  # a forced layout's noise
                    self._templates.clear()
                template = self._templates[(tag_key, code)] = self._template(tag_key, code)
            if template is not None:
                part, before, after, other = template
                text = before + str(size) + after
                if part == 1:
                    return text if other is None else (other, text)
                return (text, other)
        return self._make(tag_key, code, size)

    def _template(self, tag_key: int, code: int) -> tuple[int, str, str, str | None] | None:
        """(which part holds the size: 0 or 1 of a big-pool pair, 1 of a page fragment;
        the text before it and after it; the pair's other part), or None when the size's
        place is not certain (a description that holds the marker's digits)."""
        fragment = self._make(tag_key, code, _SIZE_MARK)
        pair = isinstance(fragment, tuple)
        parts = fragment if pair else ("", fragment)
        mark = str(_SIZE_MARK)
        found = [i for i, part in enumerate(parts) if mark in part]
        if len(found) != 1 or parts[found[0]].count(mark) != 1:
            return None
        before, after = parts[found[0]].split(mark)
        return found[0], before, after, (parts[1 - found[0]] if pair else None)

    def _make(self, tag_key: int, code: int, size: int) -> str | tuple[str, str]:
        tag = tag_key & 0xFFFFFFFF
        fields = RecordFields(self.names(tag), bool(tag_key >> 32), size, code)
        before, after = self.make(fields, *self.names.about(tag))
        if self.entries and code % _RADIX[4] == SOURCE_BIGPOOL:
            return (before, after + self.head)
        return before + after + self.head

    def _build_all(self, tags: np.ndarray, codes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        built = np.empty(tags.size, dtype=object)
        for i, key in enumerate(zip(tags.tolist(), codes.tolist(), sizes.tolist())):
            built[i] = self._build(*key)  # item by item: a big-pool fragment is a tuple
        return built

    def _fit_chunk(self, rows: int, length: int) -> None:
        """Rows of the next chunks, from how long a whole chunk's text was."""
        if rows == self._chunk_rows:
            fit = self._chunk_rows * TEXT_BYTES // max(1, length)
            self._chunk_rows = min(TEXT_ROWS, max(MIN_TEXT_ROWS, fit))

    def _learn(self, new: np.ndarray) -> None:
        """Make the fragments of packed keys not cached yet (distinct) and cache them."""
        built = self._build_all(
            new & np.uint64((1 << 33) - 1),
            (new >> np.uint64(33)) & np.uint64(0xFF),
            new >> np.uint64(41),
        )
        keys = np.concatenate([self._keys, new])
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._fragments = np.concatenate([self._fragments, built])[order]
        self._pieces_for = None

    def _fragment_ids(self, records: np.ndarray) -> np.ndarray | None:
        """Each record's index among the cached fragments, found in C (fragment_ids in
        _tables.c), or None where the rows must be gathered in Python: no C module,
        rows to patch (--objects), a size over the packed key's 23 bits."""
        if native is None or records.dtype != RECORD_DTYPE or self.patching():
            return None
        for _ in range(3):  # learn what is missing; a cache that overflowed starts over
            found = native.fragment_ids(records, self._keys, _RADIX)
            if found is None:
                return None
            ids, missing = found
            if ids is not None:
                return np.frombuffer(ids, np.int32)
            if self._keys.size > CACHE_LIMIT:  # noise of a forced layout: start over
                self._reset()  # (what this batch still needs is learnt next time round)
            self._learn(np.frombuffer(missing, np.uint64))
        return None

    def _row_fragments(self, records: np.ndarray) -> np.ndarray:
        """Each record's fragment (an object array; big-pool ones with their entry)."""
        tag_keys = records["tag"].astype(np.uint64) | (
            records["protected"].astype(np.uint64) << np.uint64(32)
        )
        code = records["pool"].astype(np.uint64)
        for name, radix in zip(("state", "family", "confidence", "source"), _RADIX[1:]):
            code = code * np.uint64(radix) + records[name]
        sizes = records["size"].astype(np.uint64)
        if int(sizes.max()) < 1 << 23:
            packed = tag_keys | (code << np.uint64(33)) | (sizes << np.uint64(41))
            unique, index = unique_inverse(packed)
            pos = np.searchsorted(self._keys, unique)
            known = pos < self._keys.size
            known[known] = self._keys[pos[known]] == unique[known]
            if not known.all():
                if self._keys.size > CACHE_LIMIT:  # noise of a forced layout: start over
                    self._reset()
                self._learn(unique if not self._keys.size else unique[~known])
                pos = np.searchsorted(self._keys, unique)
            rows = self._fragments[pos[index.reshape(-1)]]
        else:
            # A big-pool size of 8 MiB or more: the tags are numbered first, and this
            # batch's combinations are built without the cache.
            unique_tags, tag_index = np.unique(tag_keys, return_inverse=True)
            packed = (
                (tag_index.reshape(-1).astype(np.uint64) << np.uint64(41))
                | (code << np.uint64(33))
                | sizes
            )
            unique, index = np.unique(packed, return_inverse=True)
            built = self._build_all(
                unique_tags[(unique >> np.uint64(41)).astype(np.intp)],
                (unique >> np.uint64(33)) & np.uint64(0xFF),
                unique & np.uint64(0xFFFFFFFF),
            )
            rows = built[index.reshape(-1)]
        if self.entries:
            big = np.flatnonzero(records["source"] == SOURCE_BIGPOOL)
            for row, entry in zip(big.tolist(), records["entry"][big].tolist()):
                before, after = rows[row]
                rows[row] = f"{before}{entry}{after}"
        return rows

    def texts(
        self, records: np.ndarray, first_head: str | None = None, as_bytes: bool = False
    ) -> Iterator[str | bytes]:
        """The lines of `records`, heads included, a few thousand at a time: text that
        stays in the CPU caches is written twice as fast as one batch-sized string.
        `as_bytes`: ASCII bytes where the C join makes them (str otherwise)."""
        count = records.size
        if count == 0:
            return
        records = np.ascontiguousarray(records)  # for the C module
        ids = self._fragment_ids(records)
        if ids is not None:
            texts = self._texts_by_id(records, ids, first_head, as_bytes)
            first = next(texts, None)
            if first is not None:  # else words beyond ASCII in str output: joined below
                yield first
                yield from texts
                return
        rows = self._row_fragments(records)
        offsets = records["offset"]
        if self.patch is not None:
            self.patch(offsets, rows)
        lead = self.head if first_head is None else first_head
        width = self.hex_width() if self.hex_width is not None else 0
        start = 0
        while start < count:
            stop = min(start + self._chunk_rows, count)
            text = None
            if native is not None:
                # The C join: no Python object per offset (None: a fragment is not ASCII).
                trim = len(self.head) if stop == count else 0
                text = native.join_rows(
                    np.ascontiguousarray(offsets[start:stop]),
                    rows[start:stop].tolist(),
                    self.hex_width is not None,
                    width,
                    lead,
                    trim,
                    as_bytes,
                )
            if text is None:
                parts: list[Any] = [None] * (2 * (stop - start))
                text_of = f"{{:>#{width}x}}".format if self.hex_width is not None else str
                parts[0::2] = map(text_of, offsets[start:stop].tolist())
                parts[1::2] = rows[start:stop].tolist()
                if stop == count and self.head:
                    parts[-1] = parts[-1][: -len(self.head)]  # the next line's head
                text = lead + "".join(parts)
            self._fit_chunk(stop - start, len(text))
            yield text
            lead = ""
            start = stop

    def _texts_by_id(
        self, records: np.ndarray, ids: np.ndarray, first_head: str | None, as_bytes: bool
    ) -> Iterator[str | bytes]:
        """texts() by the C join of offsets and fragment ids: no Python object per
        record. Nothing when the join is not for these fragments (not all ASCII)."""
        pieces = self._pieces(as_bytes)
        if pieces is None:
            return
        lead: str | bytes = self.head if first_head is None else first_head
        head_size = len(self.head)
        if as_bytes:  # words of any script, in the UTF-8 the stream would encode them to
            lead = lead if lead.isascii() else lead.encode("utf-8")
            head_size = len(self.head.encode("utf-8"))
        width = self.hex_width() if self.hex_width is not None else 0
        count, start = records.size, 0
        while start < count:
            stop = min(start + self._chunk_rows, count)
            trim = head_size if stop == count else 0
            hexed = self.hex_width is not None
            text = native.join_ids(records, ids, start, stop, pieces, hexed, width, lead, trim)
            if text is None:
                return
            self._fit_chunk(stop - start, len(text))
            yield text
            lead = b"" if as_bytes else ""
            start = stop

    def _pieces(self, as_bytes: bool) -> Any:
        """The cached fragments taken apart for join_ids (fragment_pieces), once per
        state of the cache: for bytes output those with words beyond ASCII as their
        UTF-8 bytes. None when the C join cannot take them (words beyond ASCII in str
        output)."""
        if self._pieces_for is not as_bytes:
            fragments = self._fragments.tolist()
            if as_bytes:
                fragments = [_utf8(f) for f in fragments]
            self._pieces_made = native.fragment_pieces(fragments, as_bytes)
            self._pieces_for = as_bytes
        return self._pieces_made


def _utf8(fragment: str | tuple[str, str]) -> str | bytes | tuple[str | bytes, ...]:
    if isinstance(fragment, tuple):
        return tuple(_utf8(part) for part in fragment)
    return fragment if fragment.isascii() else fragment.encode("utf-8")


# Fragments repeat their words (tags, owners, enum names); typed, so True is not 1.
_dumps = functools.lru_cache(maxsize=1 << 14, typed=True)(json.dumps)


def _json_pairs(keys: Sequence[str], values: Sequence[Any]) -> str:
    """`"key": value, ...` exactly as json.dumps writes the inside of an object."""
    return ", ".join(f"{_dumps(k)}: {_dumps(v)}" for k, v in zip(keys, values))


_ENTRY = FIELDS.index("entry")
_JSON_MIDDLE = FIELDS[1:_ENTRY]  # tag ... source
_JSON_TAIL = FIELDS[_ENTRY + 1 :]  # owner, description (entry between, on big-pool records)


def _json_fragment(end: str) -> FragmentMaker:
    def make(fields: RecordFields, owner: str, description: str) -> tuple[str, str]:
        middle = ", " + _json_pairs(_JSON_MIDDLE, fields.values())
        tail = ", " + _json_pairs(_JSON_TAIL, (owner, description)) + "}" + end
        if fields.source == SOURCE_NAMES[SOURCE_BIGPOOL]:
            return middle + ', "entry": ', tail
        return middle + tail, ""

    return make


def _json_head(extra: dict[str, Any]) -> str:
    lead = _json_pairs(list(extra), list(extra.values()))
    return "{" + (lead + ", " if lead else "") + '"offset": '


@functools.lru_cache(maxsize=1 << 14, typed=True)
def _csv_cell(value: Any) -> str:
    """One cell as csv.writer (QUOTE_MINIMAL, comma) writes it inside a row: written by
    the module itself beside an empty cell, since quoting is decided cell by cell."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([value, ""])
    return buffer.getvalue()[:-2]  # drop ",\n"


def csv_cells(values: Sequence[Any]) -> str:
    """Cells joined by commas, as in a csv.writer row."""
    return ",".join(_csv_cell(value) for value in values)


def _csv_fragment(fields: RecordFields, owner: str, description: str) -> tuple[str, str]:
    return "," + csv_cells(fields.values()) + ",", "," + csv_cells((owner, description)) + "\n"


class RecordWriter:
    """Base writer: `begin` once per dump, `write` per batch, `end` once per dump.

    `objects` (scan --objects): the decoded object fields per record offset. Records are
    still rendered in bulk; only the rows of the few object blocks get their fields
    added afterwards (`_object_text`), so a run without --objects costs nothing more."""

    # What ends every row of the format before the next row's head.
    closing = "\n"

    def __init__(
        self, out: TextIO, extra: dict[str, Any] | None = None, db: TagDatabase | None = None
    ):
        self.out = out
        self.names = TagNames(db)
        self.count = 0
        self.extra = extra or {}  # fields prefixed to every record (e.g. dump, with several)
        self.objects: dict[int, dict[str, Any]] | None = None
        self._object_keys = np.empty(0, dtype=np.uint64)
        sink = getattr(out, "byte_sink", None)
        # Where the stream takes ASCII bytes as they are, lines are joined as bytes.
        self._bytes: Callable[[bytes], None] | None = sink() if sink is not None else None

    def set_objects(self, fields: dict[int, dict[str, Any]] | None) -> None:
        """The object fields of the next dump's records (None: no --objects)."""
        self.objects = fields
        keys = sorted(fields) if fields else []
        self._object_keys = np.array(keys, dtype=np.uint64)

    def _object_text(self, values: dict[str, Any]) -> str:
        """What goes into a row, before its closing, for one decoded object."""
        raise NotImplementedError

    def _empty_objects(self) -> str:
        """What a row without an object holds in its place (csv: empty cells)."""
        return ""

    def _patching(self) -> bool:
        """Whether this dump has object fields to put into rows (--objects)."""
        return self.objects is not None and bool(self._object_keys.size)

    def _patch(self, lines: LineBuilder) -> Callable[[np.ndarray, np.ndarray], None]:
        lines.patching = self._patching

        def patch(offsets: np.ndarray, rows: np.ndarray) -> None:
            if not self._patching():
                return
            hit = np.flatnonzero(np.isin(offsets, self._object_keys))
            suffix = self._empty_objects() + self.closing + lines.head
            for i in hit.tolist():
                values = self.objects.get(int(offsets[i]))
                if values is None:
                    continue
                row = rows[i]
                if isinstance(row, tuple) or not row.endswith(suffix):
                    continue  # a big-pool row: never an object block
                keep = row[: len(row) - len(suffix)]
                rows[i] = keep + self._object_text(values) + self.closing + lines.head

        return patch

    def begin(self, meta: dict[str, Any]) -> None:
        pass

    def write(self, records: np.ndarray) -> None:
        for text in self._texts(records):
            if isinstance(text, bytes):
                self._bytes(text)  # type: ignore[misc]
            else:
                self.out.write(text)
        self.count += records.size

    def _texts(self, records: np.ndarray) -> Iterator[str | bytes]:
        """The batch's text; bytes only where `_bytes` takes them."""
        raise NotImplementedError

    def end(self) -> None:
        pass

    def abort(self, problem: str) -> None:
        """The dump's scan failed part way: end its output as well as the format allows."""
        self.end()

    def finish(self) -> None:
        """Called once after the last dump."""


class JsonlWriter(RecordWriter):
    """One json.dumps object per line."""

    def __init__(
        self, out: TextIO, extra: dict[str, Any] | None = None, db: TagDatabase | None = None
    ):
        super().__init__(out, extra, db)
        self._lines = LineBuilder(self.names, _json_fragment("\n"), plain_size=True)
        self._lines.patch = self._patch(self._lines)

    closing = "}\n"

    def _object_text(self, values: dict[str, Any]) -> str:
        return ", " + _json_pairs(list(values), list(values.values()))

    def _texts(self, records: np.ndarray) -> Iterator[str | bytes]:
        self._lines.set_head(_json_head(self.extra))
        return self._lines.texts(records, as_bytes=self._bytes is not None)


class CsvWriter(RecordWriter):
    """A header row, then one row per record; `entry` is empty on page records."""

    def __init__(
        self, out: TextIO, extra: dict[str, Any] | None = None, db: TagDatabase | None = None
    ):
        super().__init__(out, extra, db)
        self._lines = LineBuilder(self.names, self._fragment, plain_size=True)
        self._lines.patch = self._patch(self._lines)
        self._header_done = False

    def set_objects(self, fields: dict[int, dict[str, Any]] | None) -> None:
        if (fields is None) != (self.objects is None):
            self._lines.set_head("\0")  # the fragments change: drop the cached ones
        super().set_objects(fields)

    def _fragment(self, fields: RecordFields, owner: str, description: str) -> tuple[str, str]:
        before, after = _csv_fragment(fields, owner, description)
        if self.objects is not None:
            after = after[:-1] + self._empty_objects() + "\n"
        return before, after

    def _empty_objects(self) -> str:
        return "," * len(OBJECT_FIELDS) if self.objects is not None else ""

    def _object_text(self, values: dict[str, Any]) -> str:
        return "," + csv_cells(["" if values.get(k) is None else values[k] for k in OBJECT_FIELDS])

    def _header(self) -> None:
        if not self._header_done:
            columns = [*self.extra, *FIELDS, *(OBJECT_FIELDS if self.objects is not None else ())]
            self.out.write(csv_cells(columns) + "\n")
            self._header_done = True

    def write(self, records: np.ndarray) -> None:
        self._header()
        super().write(records)

    def _texts(self, records: np.ndarray) -> Iterator[str | bytes]:
        self._lines.set_head(csv_cells(list(self.extra.values())) + "," if self.extra else "")
        return self._lines.texts(records, as_bytes=self._bytes is not None)

    def end(self) -> None:
        self._header()


class JsonWriter(RecordWriter):
    """One JSON document per dump: the scan's metadata, then the allocations array."""

    def __init__(
        self, out: TextIO, extra: dict[str, Any] | None = None, db: TagDatabase | None = None
    ):
        super().__init__(out, extra, db)
        self._lines = LineBuilder(self.names, _json_fragment(""), plain_size=True)
        self._lines.patch = self._patch(self._lines)
        self._first = True

    closing = "}"

    def _object_text(self, values: dict[str, Any]) -> str:
        return ", " + _json_pairs(list(values), list(values.values()))

    # The provenance, known only once the dump is read (its sha256): after the records.
    trailer: dict[str, Any] | None = None

    def begin(self, meta: dict[str, Any]) -> None:
        head = json.dumps(meta)[:-1]
        self.out.write(head + (", " if meta else "") + '"allocations": [')
        self._first = True

    def _texts(self, records: np.ndarray) -> Iterator[str | bytes]:
        head = _json_head(self.extra)
        self._lines.set_head(",\n  " + head)
        first = ("\n  " if self._first else ",\n  ") + head
        self._first = self._first and not records.size
        return self._lines.texts(records, first, as_bytes=self._bytes is not None)

    def end(self) -> None:
        tail = f', "provenance": {json.dumps(self.trailer)}' if self.trailer else ""
        self.out.write(f'\n], "count": {self.count}{tail}}}\n')
        self.count = 0

    def abort(self, problem: str) -> None:
        """A valid document that says the list is incomplete, and why."""
        self.out.write(f'\n], "count": {self.count}, "error": {json.dumps(problem)}}}\n')
        self.count = 0


# Control characters would break a table line (a tag file's words are free text).
_CONTROLS = {c: " " for c in [*range(0x20), 0x7F]}


def _cut(text: str, width: int) -> str:
    """A table cell of at most `width` characters, on one line."""
    text = text.translate(_CONTROLS)
    return text if len(text) <= width else text[: width - 1] + "…"


class TableWriter(RecordWriter):
    """Fixed columns so rows can stream without measuring the whole result first; each
    batch is flushed, so a terminal or a pager shows rows while the scan goes on."""

    HEADERS = (
        "Address",
        "Tag",
        "P",
        "Size",
        "Pool",
        "State",
        "Layout",
        "Conf",
        "Source",
        "Owner",
        "Description",
    )
    OWNER_WIDTH = 12
    DESCRIPTION_WIDTH = 28

    def __init__(
        self, out: TextIO, extra: dict[str, Any] | None = None, db: TagDatabase | None = None
    ):
        super().__init__(out, extra, db)
        self._lines = LineBuilder(self.names, self._fragment, entries=False, hex_width=self._width)
        self._lines.patch = self._patch(self._lines)
        self._addr = 18
        self._rows = 0

    def _object_text(self, values: dict[str, Any]) -> str:
        return "  [" + object_summary(values) + "]"

    def begin(self, meta: dict[str, Any]) -> None:
        # Big-pool records are at kernel virtual addresses, wider than physical ones.
        wide = 18 if meta.get("architecture") != "x86" else 10
        self._addr = max(wide, 2 + len(f"{int(meta.get('max_address', 0)):x}"))
        self._rows = 0
        if "dump" in meta and self.extra:
            self.out.write(f"== {meta['dump']}\n")

    def _width(self) -> int:
        return self._addr

    def _cells(self, cells: Sequence[str]) -> str:
        """Everything of a line after the address."""
        tag, prot, size, pool, state, layout, conf, source, owner, description = cells
        return (
            f"  {tag:<4}  {prot:1}  {size:>7}  {pool:<8}  {state:<9}  {layout:<16}  "
            f"{conf:<6}  {source:<7}  {_cut(owner, self.OWNER_WIDTH):<{self.OWNER_WIDTH}}  "
            f"{_cut(description, self.DESCRIPTION_WIDTH)}"
        ).rstrip() + "\n"

    def _fragment(self, fields: RecordFields, owner: str, description: str) -> tuple[str, str]:
        cells = (
            fields.tag,
            "*" if fields.protected else "",
            str(fields.size),
            fields.pool,
            fields.state,
            fields.layout,
            fields.confidence,
            fields.source,
            owner,
            description,
        )
        return self._cells(cells), ""

    def _texts(self, records: np.ndarray) -> Iterator[str | bytes]:
        if self._rows == 0 and records.size:
            yield f"{self.HEADERS[0]:>{self._addr}}" + self._cells(self.HEADERS[1:])
        self._rows += records.size
        yield from self._lines.texts(records, as_bytes=self._bytes is not None)

    def write(self, records: np.ndarray) -> None:
        super().write(records)
        if records.size:
            self.out.flush()

    def end(self) -> None:
        if self._rows == 0:
            self.out.write("no pool allocations matched\n")


def object_summary(values: dict[str, Any]) -> str:
    """One short line of an object's fields, for the table and the text report."""
    parts = [values["object"]]
    for key in ("pid", "tid", "ppid"):
        if values.get(key) is not None:
            parts.append(f"{key} {values[key]}")
    for key in ("start", "image_base"):
        if values.get(key) is not None:
            parts.append(f"{key} {values[key]:#x}")
    if values.get("image_size") is not None:
        parts.append(f"size {values['image_size']:#x}")
    if values.get("linked") is False:
        parts.append("unlinked")
    name = values.get("name")
    if name is not None:
        parts.append(repr(name) if name else "(no name)")
    return " ".join(parts)


def make_writer(
    fmt: str, out: TextIO, extra: dict[str, Any] | None = None, db: TagDatabase | None = None
) -> RecordWriter:
    """The writer of `fmt`; `db` gives records their owner and description (default: the
    built-in table)."""
    writers = {"table": TableWriter, "jsonl": JsonlWriter, "json": JsonWriter, "csv": CsvWriter}
    return writers[fmt](out, extra, db)
