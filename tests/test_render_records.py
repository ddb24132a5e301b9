"""The bulk record writers against json.dumps and csv.writer of records.to_dicts.

render.records builds lines from cached fragments instead of a dict per record (issue
10: output speed); its text must stay exactly what json.dumps / csv.writer wrote before,
on every sample dump and on records with odd tags and odd database words.
"""

from __future__ import annotations

import csv
import io
import itertools
import json

import numpy as np
import pytest
from conftest import DUMPS

from pooltagscan.inputs import open_image
from pooltagscan.layouts import Family
from pooltagscan.records import (
    FAMILY_INDEX,
    FIELDS,
    RECORD_DTYPE,
    SOURCE_BIGPOOL,
    TagNames,
    to_dicts,
    to_tuples,
)
from pooltagscan.render import records as render
from pooltagscan.render.records import make_writer
from pooltagscan.scan import prepare, run
from pooltagscan.tags.database import TagDatabase, TagInfo

SAMPLES = sorted(p.name for p in DUMPS.glob("*.raw"))
EXTRAS = ({}, {"dump": 'C:\\cases\\"a, b".raw'})


def reference_jsonl(records, db, extra) -> str:
    return "".join(json.dumps({**extra, **d}) + "\n" for d in to_dicts(records, TagNames(db)))


def reference_csv(records, db, extra) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*extra, *FIELDS])
    writer.writerows(
        (*extra.values(), *("" if v is None else v for v in row))
        for row in to_tuples(records, TagNames(db))
    )
    return out.getvalue()


def reference_json(records, db, extra, meta) -> str:
    out = io.StringIO()
    out.write(json.dumps(meta)[:-1] + ', "allocations": [')
    for i, d in enumerate(to_dicts(records, TagNames(db))):
        out.write(("\n  " if i == 0 else ",\n  ") + json.dumps({**extra, **d}))
    out.write(f'\n], "count": {records.size}}}\n')
    return out.getvalue()


def written(fmt, batches, db, extra, meta=None, binary=False) -> str:
    """The writer's text into a StringIO, or with `binary` through the CLI's stream over
    a UTF-8 byte stream: the lines then go out as ASCII bytes (OutputStream.byte_sink),
    between text the writer writes as text (headers, a JSON document's ends)."""
    from pooltagscan.outputs import OutputStream

    raw = io.BytesIO()
    out = (
        OutputStream(io.TextIOWrapper(raw, "utf-8", newline=""), "test")
        if binary
        else io.StringIO()
    )
    writer = make_writer(fmt, out, dict(extra), db)
    assert (writer._bytes is not None) == binary
    writer.begin(meta or {})
    for batch in batches:
        writer.write(batch)
    writer.end()
    if not binary:
        return out.getvalue()
    out.flush()
    return raw.getvalue().decode("utf-8")


def uneven(records: np.ndarray) -> list[np.ndarray]:
    """Batches of several sizes, an empty one among them, as a scan may yield."""
    cuts = [0, 1, 1, 7, records.size // 3, records.size]
    return [records[a:b] for a, b in itertools.pairwise(cuts)]


def check_all_formats(records, db, extra) -> None:
    batches = uneven(records)
    meta = {"format": "raw", "layout": "x64"}
    for binary in (False, True):
        jsonl = written("jsonl", batches, db, extra, binary=binary)
        assert jsonl == reference_jsonl(records, db, extra)
        assert written("csv", batches, db, extra, binary=binary) == reference_csv(
            records, db, extra
        )
        document = written("json", batches, db, extra, meta, binary=binary)
        assert document == reference_json(records, db, extra, meta)


def test_lines_go_out_as_bytes_only_where_they_read_as_the_text():
    from pooltagscan.outputs import OutputStream

    def sink(encoding: str):
        return OutputStream(io.TextIOWrapper(io.BytesIO(), encoding), "test").byte_sink()

    assert sink("utf-8") is not None and sink("UTF8") is not None
    assert sink("utf-16") is None and sink("cp1252") is None and sink("ascii") is None
    assert OutputStream(io.StringIO(), "test").byte_sink() is None  # no binary side


@pytest.fixture(scope="module")
def sample_records() -> dict[str, np.ndarray]:
    found = {}
    for name in SAMPLES:
        found[name] = np.concatenate(list(run(prepare(open_image(DUMPS / name)))))
    return found


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("extra", EXTRAS, ids=("one-dump", "several-dumps"))
def test_writers_equal_json_and_csv_modules_on_samples(sample_records, monkeypatch, name, extra):
    records = sample_records[name]
    assert np.count_nonzero(records["source"] == SOURCE_BIGPOOL) > 200  # lines with entry
    db = TagDatabase.builtin()
    check_all_formats(records, db, extra)
    # Small text chunks and a cache that overflows: the same text.
    monkeypatch.setattr(render, "TEXT_ROWS", 97)
    monkeypatch.setattr(render, "CACHE_LIMIT", 50)
    check_all_formats(records, db, extra)
    # The C join of offsets and fragments and the Python join give the same table too.
    meta = {"architecture": "x64", "max_address": int(records["offset"].max())}
    table = written("table", uneven(records), db, extra, meta)
    assert written("table", uneven(records), db, extra, meta, binary=True) == table
    monkeypatch.setattr(render, "native", None)
    check_all_formats(records, db, extra)
    assert written("table", uneven(records), db, extra, meta) == table
    assert table.count("\n") == records.size + 1


def odd_records() -> np.ndarray:
    """Every enum value, tags that need escaping in JSON and quoting in csv, sizes over
    the 23 bits of the packed key (big-pool), the ends of the address range."""
    tags = [
        b"Proc",
        b"Ab\x01c",
        b"\\x41",  # four printable bytes: the text is taken literally, JSON escapes `\`
        b'"q,\x7f',
        b"\x00\x00\x00\x00",
        b"\xff\xfe\xfd\xfc",
        b"a b ",
        b"Un\xe9x",
    ]
    rows = []
    families = [FAMILY_INDEX[f] for f in Family]
    for i in range(600):
        raw = tags[i % len(tags)]
        source = SOURCE_BIGPOOL if i % 5 == 0 else 0
        big_size = [16, 4096, 0, (1 << 23) - 16, 1 << 23, 0xFFFFFFFF][i % 6]
        size = big_size if source else 16 * (i % 7)
        rows.append(
            (
                [0, 0xFFFFFFFFFFFFFFFF, 0x1000 * i][i % 3],
                int.from_bytes(raw, "little"),
                size,
                0,
                i % 3,
                (i // 3) % 3,
                (i // 9) % 3,
                bool(i % 2) and raw == b"Proc",
                families[i % len(families)],
                source,
                0x7FFE0000 + 24 * i if source else 0,
            )
        )
    return np.array(rows, dtype=RECORD_DTYPE)


def odd_database() -> TagDatabase:
    def info(tag: str, owner: str, description: str) -> TagInfo:
        return TagInfo(tag, owner, description, "test")

    return TagDatabase(
        [
            info("Proc", "nt!ps", 'process "objects", one per process'),
            info("a b ", "x,y.sys", "line\nbreak and\rreturn"),
            info("\\x5cx41", "back\\slash", "caf\u00e9 \u2026 tab\there"),  # the tag `\x41`
            info("Ab\\x01c", "", ""),
        ]
    )


@pytest.mark.parametrize("extra", EXTRAS, ids=("one-dump", "several-dumps"))
def test_writers_equal_json_and_csv_modules_on_odd_records(extra):
    records = odd_records()
    names = TagNames(odd_database())
    assert {names(int(t)) for t in records["tag"]} >= {"\\x41", "Ab\\x01c", '"q,\\x7f', "Un\\xe9x"}
    assert int(records["size"].max()) == 0xFFFFFFFF  # the batch that cannot pack its sizes
    check_all_formats(records, odd_database(), extra)
    check_all_formats(records[records["size"] < 1 << 23], odd_database(), extra)


def test_record_objects_end_with_owner_and_description():
    records = odd_records()[[0, 1]]
    big, page = list(to_dicts(records, TagNames(odd_database())))
    assert big == {
        "offset": 0,
        "tag": "Proc",
        "protected": False,
        "size": 16,
        "pool": "nonpaged",
        "state": "allocated",
        "layout": "x86",
        "confidence": "low",
        "source": "bigpool",
        "entry": 0x7FFE0000,
        "owner": "nt!ps",
        "description": 'process "objects", one per process',
    }
    assert list(big) == list(FIELDS)
    assert list(page) == [f for f in FIELDS if f != "entry"]
    assert (page["tag"], page["owner"], page["description"]) == ("Ab\\x01c", "", "")
    assert json.dumps(page).startswith('{"offset": 18446744073709551615, "tag": "Ab\\\\x01c", ')


def test_jsonl_line_of_an_odd_tag_exactly():
    records = odd_records()[[2]]
    text = written("jsonl", [records], odd_database(), {})
    assert text == (
        '{"offset": 8192, "tag": "\\\\x41", "protected": false, "size": 32, "pool": "unknown",'
        ' "state": "allocated", "layout": "x64-segment-heap", "confidence": "low", "source":'
        ' "page", "owner": "back\\\\slash", "description": "caf\\u00e9 \\u2026 tab\\there"}\n'
    )


class Recorder(io.StringIO):
    """A stream that notes each flush, with how much had been written by then."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[int] = []

    def flush(self) -> None:
        self.flushed.append(len(self.getvalue()))


def test_table_rows_stream_batch_by_batch_with_owner_and_description():
    records = odd_records()
    out = Recorder()
    writer = make_writer("table", out, None, odd_database())
    writer.begin({"architecture": "x64", "max_address": 0xFFFFF})
    writer.write(records[:3])
    first = out.getvalue()
    writer.write(records[3:10])
    writer.write(records[:0])
    writer.end()
    lines = out.getvalue().splitlines()
    # Each batch is flushed as soon as it is written: a pager sees rows during the scan.
    assert out.flushed == [len(first), len(out.getvalue())]
    assert lines[0] == (
        "           Address  Tag   P     Size  Pool      State      Layout            Conf    "
        "Source   Owner         Description"
    )
    assert lines[1] == (
        "               0x0  Proc          16  nonpaged  allocated  x86               low     "
        'bigpool  nt!ps         process "objects", one per …'
    )
    assert lines[2] == (
        "0xffffffffffffffff  Ab\\x01c          16  paged     allocated  x64               low     "
        "page"
    )
    # A control character in the database's words is a space in the table.
    assert lines[7] == (
        "               0x0  a b           96  nonpaged  unknown    x86               low     "
        "page     x,y.sys       line break and return"
    )
    assert len(lines) == 11


def test_a_description_holding_the_size_marker_is_written_as_it_is():
    """Fragments are made once per (tag, enums) with a marker where the size goes; a
    tag whose words hold the marker's digits is made record by record instead."""
    mark = str(render._SIZE_MARK)
    db = TagDatabase([TagInfo("Proc", f"nt{mark}", f"size {mark} or {mark}", "test")])
    records = odd_records()
    for extra in EXTRAS:
        check_all_formats(records, db, extra)
        assert mark in written("jsonl", [records], db, extra)


def test_lines_of_the_samples_are_joined_by_fragment_id_in_c(sample_records, monkeypatch):
    """The C path (fragment_ids, join_ids) writes the samples' lines; the Python gather
    of rows is left for --objects, sizes over 23 bits and non-ASCII words."""
    real = render.native
    if real is None:
        pytest.skip("the C module is not built here")
    calls = {"fragment_ids": 0, "join_ids": 0, "join_rows": 0}

    class Spy:
        def __getattr__(self, name):
            if name in calls:
                calls[name] += 1
            return getattr(real, name)

    monkeypatch.setattr(render, "native", Spy())
    records = sample_records[SAMPLES[0]]
    db = TagDatabase.builtin()
    assert written("jsonl", uneven(records), db, {}) == reference_jsonl(records, db, {})
    assert calls["fragment_ids"] > 0 and calls["join_ids"] > 0 and calls["join_rows"] == 0
    # The table cuts long descriptions with "\u2026": as bytes, still joined in C.
    meta = {"architecture": "x64", "max_address": int(records["offset"].max())}
    table = written("table", uneven(records), db, {}, meta, binary=True)
    assert "\u2026" in table and calls["join_rows"] == 0


def test_join_ids_refuses_ids_and_ranges_it_cannot_hold():
    if render.native is None:
        pytest.skip("the C module is not built here")
    native = render.native
    records = odd_records()[:4]
    ids = np.array([0, 1, 0, 5], np.int32)
    pieces = native.fragment_pieces(["a\n", "b\n"], True)
    args = (pieces, False, 0, "", 0)
    with pytest.raises(ValueError, match="out of range"):
        native.join_ids(records, ids, 0, 4, *args)
    assert native.join_ids(records, ids, 0, 3, *args) == b"0a\n18446744073709551615b\n8192a\n"
    with pytest.raises(ValueError, match="do not match"):
        native.join_ids(records, ids, 2, 9, *args)
    with pytest.raises(ValueError, match="do not match"):
        native.join_ids(records, ids[:3], 0, 3, *args)
    with pytest.raises(ValueError):  # not pieces
        native.join_ids(records, ids, 0, 1, ["a\n"], False, 0, "", 0)
    # Words beyond ASCII: their UTF-8 bytes, for bytes output only.
    assert native.fragment_pieces(["caf\u00e9"], True) is None
    assert native.fragment_pieces(["caf\u00e9\n".encode()], False) is None
    utf8 = native.fragment_pieces(["caf\u00e9\n".encode(), ("x", b"y")], True)
    assert native.join_ids(records, ids, 0, 1, utf8, False, 0, b"", 0) == b"0caf\xc3\xa9\n"
    pair = np.array([1], np.int32)
    big = records[:1].copy()
    big["entry"] = 77
    assert native.join_ids(big, pair, 0, 1, utf8, True, 6, "", 0) == b"   0x0x77y"
    assert native.join_ids(big, pair, 0, 1, utf8, False, 0, "caf\u00e9", 0) is None  # lead
    str_pieces = native.fragment_pieces(["a\n"], False)
    assert native.join_ids(big, ids[:1].copy(), 0, 1, str_pieces, False, 0, "", 0) == "0a\n"
