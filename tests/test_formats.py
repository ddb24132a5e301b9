"""Dump formats: detection from content, and exact records through every container.

Each file in samples/formats wraps pages of a raw sample at other addresses
(`formats.json` says where each raw page went). Scanning it must give exactly the raw
sample's records on those pages, moved to their new addresses, through the library and
through the CLI. Crash dumps, LiME, ELF cores and VMware files are mapped by Volatility 3's
layers (an implementation independent of our writer); minidumps by our own reader, whose
field offsets the real-dump test (test_formats_triage.py) pins.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import re
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DUMPS, SAMPLES, load_manifest, load_module

from pooltagscan import cli
from pooltagscan.errors import InputError
from pooltagscan.inputs import open_image
from pooltagscan.inputs.minidump import MinidumpImage
from pooltagscan.records import RECORD_DTYPE, to_dicts
from pooltagscan.scan import prepare, run
from pooltagscan.tags.database import TagDatabase

FORMATS = SAMPLES / "formats"
MANIFEST = json.loads((FORMATS / "formats.json").read_text())
FILES = sorted(MANIFEST["files"])
PAGE = 4096


def scan(path: Path):
    prepared = prepare(open_image(path), "auto", TagDatabase.builtin())
    batches = list(run(prepared))
    records = np.concatenate(batches) if batches else np.empty(0, RECORD_DTYPE)
    return prepared, by_location(to_dicts(records))


def location(record: dict) -> int:
    """Where a record sits in the scanned space: its header, or its big-page table entry
    (a big-pool record's offset is a virtual address that no format moves)."""
    return record.get("entry", record["offset"])


def by_location(records) -> dict[int, dict]:
    return {location(d): d for d in records}


@functools.cache
def raw_scan(family: str):
    return scan(DUMPS / f"{family}.raw")


def expected(name: str) -> dict[int, dict]:
    """The raw sample's records on the wrapped whole pages, at their new addresses."""
    entry = MANIFEST["files"][name]
    _, raw = raw_scan(entry["family"])
    by_page: dict[int, list[dict]] = {}
    for at, record in raw.items():
        by_page.setdefault(at // PAGE, []).append(record)
    out = {}
    for raw_page, address in entry["pages"]:
        for record in by_page.get(raw_page, []):
            moved = address + location(record) - raw_page * PAGE
            field = "entry" if "entry" in record else "offset"
            out[moved] = dict(record, **{field: moved})
    return out


def partial_pages(name: str) -> set[int]:
    return {p["address"] for p in MANIFEST["files"][name]["partial"]}


@pytest.fixture(scope="module", params=FILES)
def scanned(request):
    name = request.param
    prepared, found = scan(FORMATS / name)
    return name, prepared, found


def test_format_architecture_and_details(scanned):
    name, prepared, _ = scanned
    entry = MANIFEST["files"][name]
    image = prepared.image
    assert image.format == entry["format"]
    assert image.architecture == entry["architecture"]
    for key, value in entry["details"].items():
        assert image.details[key] == value, key
    assert image.scanned_bytes == 128 * PAGE
    assert image.notes == [] or entry["format"] == "minidump"


def test_records_are_the_raw_records_moved(scanned):
    name, prepared, found = scanned
    raw_prepared, _ = raw_scan(MANIFEST["files"][name]["family"])
    assert prepared.config.family == raw_prepared.config.family
    assert prepared.config.encoding == raw_prepared.config.encoding
    skip = partial_pages(name)
    whole = {o: r for o, r in found.items() if o // PAGE * PAGE not in skip}
    want = expected(name)
    assert len(want) > 200
    assert whole == want


def test_minidump_fragments_report_only_true_captured_headers():
    """Fragments of pages (zero-padded around the captured bytes) report real headers only.

    Segment-heap headers stand alone, so most survive; a legacy page chain broken by a hole
    keeps only the links the scanner can still prove.
    """
    for name, least in (("minidump-x64.dmp", 10), ("minidump-x86.dmp", 1)):
        entry = MANIFEST["files"][name]
        truth = {a["offset"]: a for a in load_manifest(entry["family"])["allocations"]}
        _, found = scan(FORMATS / name)
        seen = 0
        for frag in entry["partial"]:
            for offset, record in found.items():
                inner = offset - frag["address"]
                if not 0 <= inner < PAGE:
                    continue
                seen += 1
                assert any(lo <= inner and inner + 8 <= hi for lo, hi in frag["captured"])
                planted = truth[frag["raw_page"] * PAGE + inner]
                assert (record["tag"], record["size"], record["pool"]) == (
                    planted["tag"],
                    planted["size"],
                    planted["pool"],
                )
        assert seen >= least, name


def test_captured_only_drops_headers_in_padding():
    def image(*spans: tuple[int, int]) -> MinidumpImage:
        starts, ends = zip(*spans)
        return MinidumpImage(
            path="x",
            format="minidump",
            runs=[],
            span_starts=np.array(starts, np.uint64),
            span_ends=np.array(ends, np.uint64),
        )

    records = np.zeros(6, RECORD_DTYPE)
    records["offset"] = [0x1000, 0x17F8, 0x17FC, 0x1900, 0x1A00, 0x1FF8]
    kept = image((0x1000, 0x1800), (0x1A00, 0x2000)).captured_only(records)["offset"].tolist()
    assert kept == [0x1000, 0x17F8, 0x1A00, 0x1FF8]
    # The last byte of the address space is never captured (block ends fit in uint64):
    # a header 4 bytes below the top is never whole, and nothing wraps around.
    records = np.zeros(3, RECORD_DTYPE)
    records["offset"] = [2**64 - 16, 2**64 - 9, 2**64 - 4]
    top = image((2**64 - 32, 2**64 - 1))
    assert top.captured_only(records)["offset"].tolist() == [2**64 - 16, 2**64 - 9]


def test_the_top_page_of_the_address_space_is_read(tmp_path):
    """A block that reaches the last page of the 64-bit space: the window's end, 2**64,
    wrapped to 0 and the whole window read as zeros (a fuzz finding)."""
    from pooltagscan.inputs.minidump import Blocks

    data = bytes(range(256)) * 32  # 8 KiB
    path = tmp_path / "blocks.bin"
    path.write_bytes(data)
    low = 2**64 - 8192
    image = MinidumpImage(
        path=str(path),
        format="minidump",
        runs=[],
        blocks=Blocks(
            va=np.array([low], np.uint64),
            end=np.array([2**64 - 1], np.uint64),  # the last byte is never captured
            offset=np.array([0], np.int64),
        ),
        pages=np.array([low, low + 4096], np.uint64),
    )
    assert image.read(low, 8192) == data[:8191] + b"\0"
    assert image.read(2**64 - 4096, 16) == data[4096 : 4096 + 16]
    image.close()


EVIDENCE = {"x86": "x86", "x64": "x64", "x64-segment-heap": "seg"}


def cli_jsonl(tmp_path: Path, path: Path, capsys) -> tuple[list[dict], str]:
    out = tmp_path / "out.jsonl"
    assert cli.main(["scan", str(path), "--format", "jsonl", "-o", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()], capsys.readouterr().err


@pytest.mark.parametrize("name", FILES)
def test_cli_gives_the_same_records(name, tmp_path, capsys):
    rows, err = cli_jsonl(tmp_path, FORMATS / name, capsys)
    want = expected(name)
    skip = partial_pages(name)
    got = [r for r in rows if location(r) // PAGE * PAGE not in skip]
    assert by_location(got) == want and len(got) == len(want)
    summary = [line for line in err.splitlines() if " records, " in line]
    assert len(summary) == 1 and len(summary[0].split(": ", 2)[2]) <= 85
    # Kernel minidumps count the bytes they hold, not the zero-padded pages rebuilt.
    extent = re.search(r" over (.*?); ", summary[0]).group(1)
    if name.startswith("minidump"):
        assert extent == "506 KiB captured"
    else:
        assert extent == "512 KiB"
    layout = rows[0]["layout"]
    assert re.search(rf"; {layout} \({EVIDENCE[layout]} \d+\)$", summary[0])


def test_cli_json_metadata_has_format_and_architecture(tmp_path):
    out = tmp_path / "out.json"
    name = "crash-bitmap-x64.dmp"
    assert cli.main(["scan", str(FORMATS / name), "--format", "json", "-q", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "crashdump"
    assert doc["architecture"] == "x64"
    assert doc["format_details"]["dump_type"] == "bitmap full (5)"
    assert doc["format_details"]["bugcheck_parameters"][0] == "0x41792"


def test_detection_ignores_the_file_name(tmp_path):
    disguised = tmp_path / "evidence.raw"
    shutil.copyfile(FORMATS / "lime-x86.lime", disguised)
    assert open_image(disguised).format == "lime"
    plain = tmp_path / "memory.dmp"
    shutil.copyfile(DUMPS / "win7-x64.raw", plain)
    assert open_image(plain).format == "raw"


# ---------------------------------------------------------------- VMware pairing


def test_vmem_without_state_is_flat(tmp_path):
    alone = tmp_path / "guest.vmem"
    shutil.copyfile(FORMATS / "vmware-x64.vmem", alone)
    image = open_image(alone)
    assert (image.format, image.runs[0].address, image.scanned_bytes) == ("raw", 0, 128 * PAGE)


def test_state_file_given_scans_its_vmem():
    _, via_vmem = scan(FORMATS / "vmware-x64.vmem")
    prepared, via_state = scan(FORMATS / "vmware-x64.vmss")
    assert prepared.image.path.endswith("vmware-x64.vmem")
    assert via_state == via_vmem


def test_state_file_without_vmem(tmp_path):
    state = tmp_path / "guest.vmss"
    shutil.copyfile(FORMATS / "vmware-x64.vmss", state)
    with pytest.raises(InputError, match=r"guest\.vmss: .*same name, which is not beside it"):
        open_image(state)


# ---------------------------------------------------------------- damaged and foreign files


def _patched(tmp_path: Path, source: str, at: int, value: bytes, cut: int = 0) -> Path:
    data = bytearray((FORMATS / source).read_bytes())
    data[at : at + len(value)] = value
    target = tmp_path / f"patched-{source}"
    target.write_bytes(bytes(data[: len(data) - cut] if cut else data))
    return target


def test_unsupported_dump_type(tmp_path):
    path = _patched(tmp_path, "crash-full-x64.dmp", 0xF98, struct.pack("<I", 8))
    with pytest.raises(
        InputError, match=r"type kernel memory \(\.dump /k\) \(8\) is not supported"
    ):
        open_image(path)


def test_bitmap_dump_without_summary(tmp_path):
    path = _patched(tmp_path, "crash-bitmap-x64.dmp", 0x2000, b"XXXX")
    with pytest.raises(InputError, match="without its summary header"):
        open_image(path)


def test_truncated_crash_dump_scans_what_is_there(tmp_path):
    path = _patched(tmp_path, "crash-full-x64.dmp", 0, b"PAGEDU64", cut=10 * PAGE + 100)
    prepared, found = scan(path)
    assert prepared.image.scanned_bytes == 117 * PAGE
    assert any("truncated: 11 pages" in note for note in prepared.image.notes)
    last = max(r.address + r.length for r in prepared.image.runs)
    want = {o: r for o, r in expected("crash-full-x64.dmp").items() if o < last}
    assert found == want


def test_minidump_with_damaged_block_table(tmp_path):
    path = _patched(tmp_path, "minidump-x64.dmp", 0x2000 + 0x7C, struct.pack("<I", 10**7))
    with pytest.raises(InputError, match="damaged data-block table"):
        open_image(path)


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("memory.raw", b"\0" * 10000)
    return buf.getvalue()


def _pe() -> bytes:
    data = bytearray(8192)
    data[:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, 0x80)
    data[0x80:0x84] = b"PE\0\0"
    return bytes(data)


def _elf(elf_class: int, e_type: int) -> bytes:
    return (
        b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9) + struct.pack("<H", e_type) + bytes(8000)
    )


FOREIGN = {
    "app.dmp": (b"MDMP\x93\xa7\0\0" + bytes(8192), "user-mode minidump (MDMP)"),
    "case.zip": (_zip(), "zip archive"),
    "driver.sys": (_pe(), "Windows executable (PE)"),
    "tool": (_elf(2, 2), "ELF executable"),
    "lib.so": (_elf(2, 3), "ELF shared object"),
    "core32": (_elf(1, 4), "32-bit ELF core dump"),
    "memory.raw.gz": (gzip.compress(b"\0" * 10000, mtime=0), "gzip-compressed file"),
    "image.E01": (b"EVF\x09\x0d\x0a\xff\x00" + bytes(8192), "EnCase/EWF evidence file"),
    "hiberfil.sys": (b"HIBR" + bytes(8192), "Windows hibernation file"),
    "memory.avml": (b"AVML" + bytes(8192), "AVML compressed memory image"),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_foreign_files_are_named_in_one_line(name, tmp_path, capsys):
    data, what = FOREIGN[name]
    path = tmp_path / name
    path.write_bytes(data)
    assert cli.main(["scan", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"pooltagscan: error: {path}: this is a {what}")
    assert "not a memory dump" in lines[0]


def test_mz_without_pe_header_is_still_memory(tmp_path):
    page = bytearray((DUMPS / "win7-x64.raw").read_bytes())
    page[:2] = b"MZ"
    path = tmp_path / "starts-with-mz.raw"
    path.write_bytes(bytes(page))
    assert open_image(path).format == "raw"


# ---------------------------------------------------------------- the generator


def test_make_formats_is_deterministic(tmp_path):
    make_formats = load_module("make_formats", SAMPLES / "make_formats.py")
    assert make_formats.main(["--out", str(tmp_path)]) == 0
    committed = sorted(p.name for p in FORMATS.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    for name in committed:
        digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert digest == hashlib.sha256((FORMATS / name).read_bytes()).hexdigest(), name


# ---------------------------------------------------------------- bitmap segments


def _volatility_segments(path: Path, layer_name: str) -> list[tuple[int, int, int, int]]:
    from volatility3.framework.layers import crash

    from pooltagscan.inputs import volmap

    context = volmap.new_context()
    base = volmap.add_file_layer(context, str(path), "file")
    layer = volmap.stack_layer(context, getattr(crash, layer_name), base, "crash")
    return list(layer._segments)


@pytest.mark.parametrize("chunk", [1, 3, 4 << 20])
def test_bitmap_segments_equal_volatility_s_loader(tmp_path, monkeypatch, chunk):
    """Our vectorized bitmap loader against Volatility's ULONG-by-ULONG one, chunk edges too."""
    from pooltagscan.inputs import crashdump

    make_formats = load_module("make_formats", SAMPLES / "make_formats.py")
    monkeypatch.setattr(crashdump, "BITMAP_CHUNK", chunk)
    rng = np.random.default_rng(7)
    runs = rng.integers(1, 40, 60)
    gaps = rng.integers(0, 30, 60)
    pfns, at = [], 3
    for run_length, gap in zip(runs.tolist(), gaps.tolist()):
        pfns += range(at, at + run_length)
        at += run_length + gap
    pieces = [(i, pfn * PAGE, 1) for i, pfn in enumerate(pfns)]
    pages = [bytes(PAGE)] * len(pfns)
    path = tmp_path / "bitmap.dmp"
    path.write_bytes(
        make_formats._crash_bitmap64(5, b"FDMP", 19041, (0, 0, 0, 0, 0))(pages, pieces)
    )
    want = _volatility_segments(path, "WindowsCrashDump64Layer")
    got = crashdump.bitmap_segments(lambda o, n: path.read_bytes()[o : o + n], 0x2000)
    assert got == want
    assert sum(s[2] for s in got) == len(pfns) * PAGE
    sample = FORMATS / "crash-bitmap-x64.dmp"
    assert crashdump.bitmap_segments(
        lambda o, n: sample.read_bytes()[o : o + n], 0x2000
    ) == _volatility_segments(sample, "WindowsCrashDump64Layer")
