"""Drivers carved from the sample dumps' kernel space against what gen_images placed.

Each paging sample holds our sample drivers loaded as a loader would (relocated, IAT
resolved against generated kernel images' exports), one with wiped headers and one
with a page not present; the manifest's `kernel_images` is the ground truth, and
samples/drivers/ground_truth.json says which tags each driver's file gives.
"""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from conftest import DUMPS, SAMPLES, load_manifest
from test_cli import pooltagscan

from pooltagscan.carving import carve
from pooltagscan.carving.analysis import analyze_carved
from pooltagscan.carving.images import LAYOUT
from pooltagscan.drivers.attribution import DriverReport
from pooltagscan.drivers.pe import load_image
from pooltagscan.inputs import open_image
from pooltagscan.scan import prepare
from pooltagscan.tags.database import TagDatabase

FAMILIES = ("win10-1809-x64", "win7-x86", "xp-x86")
TRUTH = json.loads((SAMPLES / "drivers" / "ground_truth.json").read_text())["drivers"]
TRUTH = {k: TRUTH[v["same_as"]] if "same_as" in v else v for k, v in TRUTH.items()}


@pytest.fixture(scope="module", params=FAMILIES)
def carved(request):
    family = request.param
    image = open_image(DUMPS / f"{family}.raw")
    try:
        result = carve(image, prepare(image, "auto", TagDatabase.builtin()).kernel_space())
    finally:
        image.close()
    return family, load_manifest(family), result


def test_every_placed_image_is_found_at_its_base_with_its_name(carved):
    _, manifest, result = carved
    got = {c.base: c for c in result.images}
    want = {row["base"]: row for row in manifest["kernel_images"]}
    assert sorted(got) == sorted(want)
    for base, row in want.items():
        c = got[base]
        assert (c.name, c.size) == (row["carved_name"], row["size"]), hex(base)
        assert c.missing_pages == row["missing_pages"]
        assert (c.found_by == LAYOUT) == row["wiped_header"]
        named = "loader entry" if row["loader_name"] else "export table"
        assert c.named_by == named


def test_a_wiped_header_image_is_still_found(carved):
    family, manifest, result = carved
    wiped = [r for r in manifest["kernel_images"] if r["wiped_header"]]
    assert bool(wiped) == family.endswith("x64")
    for row in wiped:
        (c,) = [c for c in result.images if c.base == row["base"]]
        assert c.found_by == LAYOUT and c.imports > 0


def test_iat_slots_resolve_to_the_names_the_file_imports(carved):
    """Every IAT slot of the rebuilt image names what the original file imports there."""
    _, manifest, result = carved
    by_base = {c.base: c for c in result.images}
    for row in manifest["kernel_images"]:
        if row["sha256"] is None:
            continue
        original = (SAMPLES / "drivers" / row["name"]).read_bytes()
        assert hashlib.sha256(original).hexdigest() == row["sha256"]
        want = {(e.slot, e.name) for e in load_image(row["name"], original).imports()}
        c = by_base[row["base"]]
        got = {(e.slot, e.name) for e in load_image(c.name, c.data).imports()}
        assert got == want, row["name"]
        assert c.unresolved_slots == 0


def _tags(report: DriverReport) -> set[str]:
    return {f.tag for f in report.findings}


def test_carved_drivers_give_the_tags_of_their_files(carved):
    _, manifest, result = carved
    names = {row["carved_name"]: row["name"] for row in manifest["kernel_images"]}
    reports = list(analyze_carved(result.images))
    assert all(isinstance(r, DriverReport) for r in reports)
    checked = 0
    for report in reports:
        original = names[report.name]
        if original not in TRUTH:
            assert report.findings == [], original  # generated kernel images
            continue
        truth = TRUTH[original]
        expected = set(truth["tags"])
        if truth.get("needs"):
            expected = set(truth.get("without_needs", {}).get("tags", expected))
        assert _tags(report) == expected, original
        checked += 1
    assert checked == len([r for r in manifest["kernel_images"] if r["sha256"]])


def test_report_from_dump_and_saved_drivers_analyse_identically(tmp_path):
    dump = DUMPS / "win10-1809-x64.raw"
    out = tmp_path / "carved"
    proc = pooltagscan("report", str(dump), "--drivers-from-dump", "--save-drivers", str(out),
                       "--format", "json", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    manifest = load_manifest("win10-1809-x64")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        r["carved_name"] for r in manifest["kernel_images"]
    )
    rows = {t["tag"]: t for t in doc["tags"]}
    # WdRv is pooltags_x64.sys's tag and one the dump's pool holds: attributed to the
    # carved driver by its loader name.
    assert rows["WdRv"]["status"] == "attributed"
    assert [c["driver"] for c in rows["WdRv"]["candidates"]] == ["pooltags.sys"]
    files = pooltagscan("drivers", str(out), "--format", "json", "-q")
    assert files.returncode == 0, files.stderr
    by_file = {d["driver"]: d for d in json.loads(files.stdout)["drivers"]}
    assert sorted(by_file) == sorted(p.name for p in out.iterdir())
    for name, d in by_file.items():
        original = next(r["name"] for r in manifest["kernel_images"] if r["carved_name"] == name)
        if original in TRUTH and not TRUTH[original].get("needs"):
            assert {f["tag"] for f in d["findings"]} == set(TRUTH[original]["tags"]), name
    again = pooltagscan("report", str(dump), "--drivers-from-dump", "--save-drivers", str(out),
                        check_exit=2)  # fmt: skip
    assert again.returncode == 2 and "not empty" in again.stderr


def test_save_drivers_refuses_a_folder_holding_the_dump(tmp_path):
    dump = tmp_path / "d.raw"
    dump.write_bytes((DUMPS / "xp-x86.raw").read_bytes())
    proc = pooltagscan("report", str(dump), "--drivers-from-dump", "--save-drivers",
                       str(tmp_path), "--force", check_exit=2)  # fmt: skip
    assert proc.returncode == 2 and "holds the dump" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hostile_section_counts_and_sizes_are_refused():
    from pooltagscan.carving.images import MAX_IMAGE_BYTES, parse_header

    page = bytearray(4096)
    page[:2] = b"MZ"
    struct.pack_into("<I", page, 0x3C, 0x80)
    page[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHI", page, 0x84, 0x14C, 0xFFFF, 0)
    assert parse_header(0x8000_0000, bytes(page)) is None  # 65535 sections
    struct.pack_into("<HHI", page, 0x84, 0x14C, 1, 0)
    struct.pack_into("<H", page, 0x94, 0xE0)
    struct.pack_into("<H", page, 0x98, 0x10B)
    struct.pack_into("<I", page, 0x98 + 56, MAX_IMAGE_BYTES + 4096)
    assert parse_header(0x8000_0000, bytes(page)) is None  # SizeOfImage over the cap


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chunk", [0x1000 + 0x38, 0x800 + 0x18, 0x100])
def test_loader_entries_across_chunk_boundaries_still_name_images(family, chunk, monkeypatch):
    """The dump is searched for loader entries chunk by chunk; chunks cut at odd places
    (so that entries straddle them) must name every image as the default chunks do."""
    from pooltagscan import carving

    def names() -> dict[int, tuple[str, str]]:
        image = open_image(DUMPS / f"{family}.raw")
        try:
            result = carve(image, prepare(image, "auto", TagDatabase.builtin()).kernel_space())
        finally:
            image.close()
        return {c.base: (c.name, c.named_by) for c in result.images}

    whole = names()
    assert sum(by == "loader entry" for _, by in whole.values()) >= 10
    monkeypatch.setattr(carving, "_LOADER_CHUNK", chunk)
    assert names() == whole
