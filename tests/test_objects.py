"""`scan --objects`: names and ids of object blocks, exact against the generator's manifest."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import SAMPLES, load_module, shared_file
from test_cli import pooltagscan

from pooltagscan.objects import hidden_objects
from pooltagscan.objects.decode import KIND_FIELDS, ObjectResult, locate, unicode_string
from pooltagscan.objects.offsets import ARCH

gen = load_module("gen_objects", SAMPLES / "gen_objects.py")
BUILDS = tuple(gen.BUILDS)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("objects")
    out = {}
    for build in BUILDS:
        image, manifest = gen.build_objects(build)
        path = folder / f"{build}.raw"
        path.write_bytes(image)
        out[build] = (path, manifest)
    return out


def _expected(obj: dict) -> dict:
    """The record fields a decoder must give for one planted object."""
    kind = obj["object"]
    want = {"object": kind}
    for key in KIND_FIELDS[kind]:
        value = obj.get(key)
        if key in ("create_time", "exit_time"):
            continue  # checked as FILETIMEs below
        want[key] = value
    return want


def _scan(path, *extra) -> list[dict]:
    out = pooltagscan("scan", str(path), "--objects", "--format", "json", "-q", *extra).stdout
    return json.loads(out)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("method", ["auto", "self"])
def test_every_object_decoded_exactly(images, build, method):
    path, manifest = images[build]
    doc = _scan(path, "--calibration", method)
    by_offset = {r["offset"]: r for r in doc["allocations"]}
    for obj in manifest["objects"]:
        got = by_offset[obj["offset"]]
        want = _expected(obj)
        if method == "self":
            want.pop("start", None)  # a thread's start address comes from the table only
        assert {k: got.get(k) for k in want} == want, obj
        if obj["object"] == "process":
            assert got["create_time"].startswith("2019-01-02T")
            if method == "auto":
                assert (got["exit_time"] is None) == (obj["exit_time"] is None)
    decoded = {r["offset"] for r in doc["allocations"] if "object" in r}
    assert decoded == {o["offset"] for o in manifest["objects"]}
    cal = doc["objects"]
    if method == "auto":
        assert cal["Proc"]["method"] == cal["Thre"]["method"] == "public offsets"
        assert cal["Proc"]["build"] == manifest["build"] == cal["Thre"]["build"]
    else:
        assert cal["Proc"]["method"] == cal["Thre"]["method"] == "self-calibrated"
        assert "build" not in cal["Proc"]
    assert cal["Driv"]["method"] == cal["File"]["method"] == "documented layout"
    assert cal["Proc"]["blocks"] == cal["Proc"]["decoded"] == 9


@pytest.mark.parametrize("build", BUILDS)
def test_self_calibration_learns_the_public_offsets(images, build):
    """Learned from the blocks alone, the offsets are those of the build's symbols."""
    path, _ = images[build]
    table = _scan(path)["objects"]
    learned = _scan(path, "--calibration", "self")["objects"]
    for key, value in learned["Proc"]["offsets"].items():
        assert table["Proc"]["offsets"][key] == value, key
    assert set(learned["Proc"]["offsets"]) == {"name", "pid", "ppid", "links", "create_time"}
    assert learned["Thre"]["offsets"] == {"cid": table["Thre"]["offsets"]["cid"]}


def test_no_table_build_fits_leaves_names_empty(images):
    """x86 blocks read with only the table: a Win7 x86 build is in it; an x64 layout of
    the same bytes finds nothing and decides nothing."""
    path, _ = images["win7sp1-x86"]
    doc = _scan(path, "--layout", "x64", "--calibration", "table")
    assert not [r for r in doc["allocations"] if r.get("object") == "process"]


def test_unreadable_name_is_empty_and_unlinked_flagged(images):
    path, manifest = images["win10-1809-x64"]
    rows = {r["offset"]: r for r in _scan(path)["allocations"]}
    files = [o for o in manifest["objects"] if o["object"] == "file"]
    assert [rows[o["offset"]]["name"] for o in files] == [
        "\\Windows\\System32\\config\\SYSTEM",
        "\\Users\\admin\\Desktop\\notes.txt",
        "",  # its buffer pointer leads nowhere in the dump
    ]
    procs = {rows[o["offset"]]["name"]: rows[o["offset"]] for o in manifest["objects"]
             if o["object"] == "process"}  # fmt: skip
    assert procs["evil.exe"]["linked"] is False and procs["System"]["linked"] is True
    assert procs["oldtool.exe"]["state"] == "free"


def test_csv_and_table_carry_the_fields(images):
    path, manifest = images["win7sp1-x86"]
    out = pooltagscan("scan", str(path), "--objects", "--format", "csv", "-q").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0].keys() >= {"object", "name", "pid", "tid", "image_base"}
    by = {int(r["offset"]): r for r in rows}
    lsass = next(o for o in manifest["objects"] if o.get("name") == "lsass.exe")
    assert (by[lsass["offset"]]["pid"], by[lsass["offset"]]["ppid"]) == ("512", "408")
    other = next(r for r in rows if r["tag"] == "MmCa")
    assert other["object"] == other["name"] == ""
    table = pooltagscan("scan", str(path), "--objects", "--tag", "Proc", "-q").stdout
    assert "[process pid 2208 ppid 504 unlinked 'evil.exe']" in table


def test_without_objects_records_are_unchanged(images):
    path, _ = images["win7sp1-x64"]
    plain = pooltagscan("scan", str(path), "--format", "jsonl", "-q").stdout.splitlines()
    rows = [json.loads(line) for line in plain]
    assert all("object" not in r and "name" not in r for r in rows)
    with_objects = pooltagscan("scan", str(path), "--objects", "--format", "jsonl", "-q").stdout
    stripped = [
        {k: v for k, v in json.loads(line).items() if k in rows[0]}
        for line in with_objects.splitlines()
    ]
    assert stripped == rows


def test_hidden_processes_and_drivers(images):
    from pooltagscan.inputs import open_image
    from pooltagscan.objects import decode_records
    from pooltagscan.records import concat
    from pooltagscan.scan import prepare, run

    path, _ = images["win7sp1-x64"]
    prepared = prepare(open_image(str(path)))
    result, notes = decode_records(prepared, concat(list(run(prepared))))
    assert notes == []
    hidden = hidden_objects(result)
    assert [(p["name"], p["pid"], p["found_in"]) for p in hidden["processes"]] == [
        ("evil.exe", 2208, ["unlinked"]),
        ("oldtool.exe", 1812, ["freed"]),
    ]
    assert [(d["name"], d["found_in"]) for d in hidden["drivers"]] == [
        ("\\Driver\\rootkit", ["freed"])
    ]
    assert hidden_objects(ObjectResult()) == {"processes": [], "drivers": []}


def test_objects_refused_with_other_views(images):
    path, _ = images["win7sp1-x64"]
    proc = pooltagscan("scan", str(path), "--objects", "--stats", check_exit=None)
    assert proc.returncode == 2 and "--objects" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hostile_strings_and_headers_never_drive_reads():
    facts = ARCH["x64"]
    reads = []

    def read(va, n):
        reads.append(n)
        return b"A\0" * (n // 2)

    def us(length, maximum, buffer):
        return (
            length.to_bytes(2, "little")
            + maximum.to_bytes(2, "little")
            + bytes(4)
            + (buffer.to_bytes(8, "little"))
        )

    kernel = 0xFFFF_C081_4000_1000
    assert unicode_string(us(8, 10, kernel), 0, facts, read) == "AAAA"
    for bad in (us(12, 10, kernel), us(0xFFFE, 0xFFFE, kernel), us(7, 10, kernel),
                us(8, 10, kernel + 1), us(8, 10, 0x7FF0_0000_0000), us(8, 10, 0),
                us(8, 10, kernel)[:12]):  # fmt: skip
        assert unicode_string(bad, 0, facts, read) is None
    assert reads == [8]  # only the one plausible string was read
    assert locate(b"\xff" * 64, 16, facts) is None
    assert locate(b"", 16, facts) is None


def test_real_arm64_minidump_decides_nothing_it_cannot():
    """The real Windows 11 ARM64 triage dump holds two 48-byte `Driv` blocks (segment heap
    slots too small for an OBJECT_HEADER and a DRIVER_OBJECT) and no process object: no
    name is decided, none is invented."""
    dump = shared_file("win11-arm64-triage.dmp")
    doc = json.loads(pooltagscan("scan", str(dump), "--objects", "--format", "json", "-q").stdout)
    assert doc["objects"]["Driv"]["blocks"] == 2
    assert doc["objects"]["Driv"]["decoded"] == 0
    assert not [r for r in doc["allocations"] if "object" in r]


def test_report_lists_freed_and_unlinked_objects(images, tmp_path):
    path, _ = images["win10-1809-x64"]
    html = tmp_path / "r.html"
    doc = json.loads(
        pooltagscan(
            "report", str(path), "--objects", "--format", "json", "-q", "--html", str(html)
        ).stdout
    )
    hidden = doc["hidden_objects"]
    assert [(p["name"], p["pid"], p["found_in"]) for p in hidden["processes"]] == [
        ("evil.exe", 2208, ["unlinked"]),
        ("oldtool.exe", 1812, ["freed"]),
    ]
    assert [d["name"] for d in hidden["drivers"]] == ["\\Driver\\rootkit"]
    assert doc["objects"]["Proc"]["build"] == "Windows 10 1809 x64 (10.0.17763)"
    page = html.read_text()
    assert 'id="hidden-objects"' in page and "<code>evil.exe</code>" in page
    text = pooltagscan("report", str(path), "--objects", "-q").stdout
    assert "unlinked  process pid 2208 ppid 504 'evil.exe' at 0xf000" in text
    plain = json.loads(pooltagscan("report", str(path), "--format", "json", "-q").stdout)
    assert "hidden_objects" not in plain and "objects" not in plain
