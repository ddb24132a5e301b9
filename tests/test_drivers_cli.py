"""`pooltagscan drivers` end to end: bad inputs, every output format, --tag, --rules,
parallel batches, and the localtag.txt round trip through our own tag database.

The CLI tests run the real command in a subprocess (`python -m pooltagscan drivers`),
as a user would; the bad-input tests also call the library to check each message.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pooltagscan.drivers.attribution import AnalysisContext, analyze_file, expand_paths
from pooltagscan.drivers.render import FIELDS, localtag_tag
from pooltagscan.drivers.yarascan import RULES_ENV, RuleSet
from pooltagscan.errors import InputError
from pooltagscan.tags.database import TagDatabase

REPO = Path(__file__).resolve().parent.parent
DRIVERS = REPO / "samples" / "drivers"
TRUTH = json.loads((DRIVERS / "ground_truth.json").read_text())
X64 = DRIVERS / "pooltags_x64.sys"
X86 = DRIVERS / "pooltags_x86.sys"
POOLTAGS_TAGS = set(TRUTH["drivers"]["pooltags_x64.sys"]["tags"])
MULTIAPI_TAGS = set(TRUTH["drivers"]["multiapi_x64.sys"]["tags"])


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pooltagscan", "drivers", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def arm64_image(subsystem: int = 1) -> bytes:
    """A minimal ARM64 kernel image header, made by hand: DOS stub, PE signature, COFF
    header (machine 0xAA64), a PE32+ optional header (native subsystem unless told), one
    section."""
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<HHIIIHH", 0xAA64, 1, 0, 0, 0, 0xF0, 0x22)
    optional = bytearray(0xF0)
    struct.pack_into("<HBB", optional, 0, 0x20B, 14, 0)  # Magic, linker version
    struct.pack_into("<I", optional, 16, 0x1000)  # AddressOfEntryPoint
    struct.pack_into("<Q", optional, 24, 0x140000000)  # ImageBase
    struct.pack_into("<II", optional, 32, 0x1000, 0x200)  # alignments
    struct.pack_into("<I", optional, 56, 0x2000)  # SizeOfImage
    struct.pack_into("<I", optional, 60, 0x400)  # SizeOfHeaders
    struct.pack_into("<H", optional, 68, subsystem)  # 1: native
    struct.pack_into("<I", optional, 108, 16)  # NumberOfRvaAndSizes
    section = struct.pack(
        "<8sIIIIIIHHI", b".text", 0x10, 0x1000, 0x200, 0x400, 0, 0, 0, 0, 0x60000020
    )
    header = bytes(dos) + b"PE\0\0" + coff + bytes(optional) + section
    code = bytes.fromhex("c0035fd6")  # ret
    return header.ljust(0x400, b"\0") + code.ljust(0x200, b"\0")


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Bad input files made here, with the problem each must be reported with."""
    folder = tmp_path_factory.mktemp("bad")
    original = X64.read_bytes()
    cases: dict[str, tuple[bytes | None, str]] = {
        "notes.txt": (b"Proc - nt!ps - not a driver\n", "not a PE image (no MZ header)"),
        "empty.sys": (b"", "empty file, not a PE image"),
        "headers_cut.sys": (original[:100], "truncated or malformed PE: its PE header offset"),
        "sections_cut.sys": (original[:1500], "truncated PE: section .text needs bytes up to"),
        "arm64.sys": (arm64_image(), "unsupported architecture ARM64 (machine 0xaa64)"),
        "pe32_magic.sys": (None, "malformed PE: x64 machine with a PE32 optional header"),
    }
    made = {}
    for name, (data, problem) in cases.items():
        if data is None:
            patched = bytearray(original)
            (pe_offset,) = struct.unpack_from("<I", patched, 0x3C)
            struct.pack_into("<H", patched, pe_offset + 24, 0x10B)
            data = bytes(patched)
        (folder / name).write_bytes(data)
        made[name] = (folder / name, problem)
    made["usermode_x64.dll"] = (
        DRIVERS / "bad" / "usermode_x64.dll",
        TRUTH["bad"]["bad/usermode_x64.dll"],
    )
    made["missing.sys"] = (folder / "missing.sys", "no such file")
    os.mkfifo(folder / "pipe.sys")
    made["pipe.sys"] = (folder / "pipe.sys", "is not a regular file")
    return made


def test_bad_inputs_each_reported_with_its_problem(bad_inputs):
    context = AnalysisContext(RuleSet())
    for name, (path, problem) in bad_inputs.items():
        with pytest.raises(InputError) as caught:
            analyze_file(str(path), context)
        assert caught.value.path == str(path), name
        assert caught.value.problem.startswith(problem), (name, caught.value.problem)


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    target = tmp_path / "locked.sys"
    shutil.copy(X64, target)
    target.chmod(0)
    with pytest.raises(InputError, match="cannot read: Permission denied"):
        analyze_file(str(target), AnalysisContext(RuleSet()))


def test_cli_batch_goes_on_after_bad_inputs(bad_inputs, tmp_path):
    bad = [str(path) for path, _ in bad_inputs.values()]
    before = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in (X64, X86)}
    stamps = {p: Path(p).stat().st_mtime_ns for p in (X64, X86)}
    result = run(str(X64), *bad, str(X86), "--format", "jsonl")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == len(bad)
    for path, problem in bad_inputs.values():
        (line,) = [e for e in errors if e.startswith(f"pooltagscan: error: {path}: ")]
        assert line.startswith(f"pooltagscan: error: {path}: {problem}")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    # Files named directly are named by their path as given.
    assert {(r["driver"], r["tag"]) for r in records} == {
        (str(path), tag) for path in (X64, X86) for tag in POOLTAGS_TAGS
    }
    # Inputs are only ever read.
    assert before == {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in (X64, X86)}
    assert stamps == {p: Path(p).stat().st_mtime_ns for p in (X64, X86)}


def test_cli_formats_agree(tmp_path):
    files = [str(X64), str(DRIVERS / "multiapi_x86.sys"), str(DRIVERS / "nopool_x64.sys")]
    jsonl = run(*files, "--format", "jsonl", "-q")
    assert jsonl.returncode == 0 and jsonl.stderr == ""
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert all(tuple(r) == FIELDS for r in records)
    assert {r["tag"] for r in records if r["driver"] == files[0]} == POOLTAGS_TAGS
    assert {r["tag"] for r in records if r["driver"] == files[1]} == MULTIAPI_TAGS
    assert not [r for r in records if r["driver"] == files[2]]
    assert {r["sha256"] for r in records if r["driver"] == files[0]} == {
        hashlib.sha256(X64.read_bytes()).hexdigest()
    }
    zero = [r for r in records if r["tag"] == "\\x00\\x00\\x00\\x00"]
    assert [z["tag_hex"] for z in zero] == ["0x00000000"]

    document = json.loads(run(*files, "--format", "json").stdout)
    assert [d["driver"] for d in document["drivers"]] == files
    assert [d["sha256"] for d in document["drivers"]] == [
        hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files
    ]
    # Our samples are linked with --no-insert-timestamp and carry no version resource.
    assert [(d["timestamp"], d["timestamp_value"], d["version"]) for d in document["drivers"]] == [
        (None, 0, {})
    ] * 3
    assert [d["machine"] for d in document["drivers"]] == [
        "0x8664 (AMD64)",
        "0x014c (I386)",
        "0x8664 (AMD64)",
    ]
    assert document["failures"] == []
    assert document["count"] == len(records)
    flat = [f for d in document["drivers"] for f in d["findings"]]
    assert flat == records
    pooltags = document["drivers"][0]
    assert pooltags["untagged_frees"] == 1
    # Every call site resolved: MyAlloc's tag is, for one caller, a helper's return
    # value, followed into the helper (medium confidence).
    assert pooltags["unresolved"] == []
    (returned,) = [r for r in records if r["tag"] == "PtRv"]
    assert (returned["evidence"], returned["confidence"]) == ("return", "medium")
    assert document["drivers"][2]["pool_apis"] == [] and document["drivers"][2]["findings"] == []
    assert [d["indirect_apis"] for d in document["drivers"]] == [[], [], []]
    # A driver that imports no pool API and resolves them by name at run time.
    dynamic = json.loads(run(str(DRIVERS / "dynamic_x64.sys"), "--format", "json").stdout)
    assert dynamic["drivers"][0]["pool_apis"] == []
    assert set(dynamic["drivers"][0]["indirect_apis"]) >= {"ExAllocatePool2", "ExAllocatePool3"}

    rows = list(csv.reader(io.StringIO(run(*files, "--format", "csv").stdout)))
    assert tuple(rows[0]) == FIELDS
    assert len(rows) - 1 == len(records)
    by_site = {(r[0], r[3], r[7]) for r in rows[1:]}
    assert by_site == {(r["driver"], r["tag"], f"{r['site']:#x}") for r in records}

    table = run(*files).stdout.splitlines()
    assert table[0].split() == [
        "Tag",
        "P",
        "Driver",
        "Arch",
        "API",
        "Evidence",
        "Conf",
        "Sites",
        "Via",
    ]
    listed = {(line.split()[0], line.split()[-1]) for line in table[2:] if "PtM3" in line}
    assert len(listed) == 1  # one row, with both wrapper entry points in Via
    assert run(str(DRIVERS / "nopool_x86.sys")).stdout == "no pool tags found\n"


def test_cli_tag_filter_answers_which_driver():
    result = run(str(DRIVERS), "--tag", "PtM?", "--tag", "MaN*", "--format", "jsonl")
    # samples/drivers/bad/ holds a user-mode DLL: passed over in a folder, not an error.
    assert result.returncode == 0, result.stderr
    assert (
        f"pooltagscan: {DRIVERS}: 1 file(s) that are not kernel drivers skipped "
        "(user-mode, EFI or native user-mode images)"
    ) in result.stderr.splitlines()
    pairs = {
        (json.loads(line)["driver"], json.loads(line)["tag"]) for line in result.stdout.splitlines()
    }
    wrapped = ("PtM1", "PtM2", "PtM3", "PtMa")
    expected = {(f"pooltags_{a}.sys", t) for a in ("x64", "x86") for t in wrapped}
    expected |= {(f"multiapi_{a}.sys", t) for a in ("x64", "x86") for t in ("MaNA", "MaNB", "MaNP")}
    assert pairs == expected
    # The protected-bit tag answers to its plain name.
    protected = run(str(X86), "--tag", "PtFr", "--format", "jsonl")
    (record,) = [json.loads(line) for line in protected.stdout.splitlines()]
    assert (record["tag"], record["protected"], record["tag_hex"]) == ("PtFr", True, "0xf2467450")
    bad = run(str(X86), "--tag", "TOOLONG")
    assert bad.returncode == 2 and "--tag" in bad.stderr


def test_localtag_round_trip(tmp_path):
    out = tmp_path / "localtag.txt"
    result = run(
        str(X64), str(DRIVERS / "multiapi_x64.sys"), "--format", "localtag", "-o", str(out)
    )
    assert result.returncode == 0
    database = TagDatabase.from_file(out)
    assert not database.skipped
    pairs = {(entry.tag, entry.owner) for entry in database}
    non_printable = {"\\x00\\x00\\x00\\x00", "Pt\\x01\\xff"}
    expected = {(t, "pooltags_x64.sys") for t in POOLTAGS_TAGS - non_printable}
    expected |= {(t, "multiapi_x64.sys") for t in MULTIAPI_TAGS}
    assert pairs == expected
    # PoolMon reads a tag as four literal characters: tags it cannot read are comments,
    # and every other line is four printable characters, " - ", the driver's file name.
    lines = out.read_text().splitlines()
    assert [line for line in lines if line.startswith("//")] == [
        (
            "// \\x00\\x00\\x00\\x00 - pooltags_x64.sys - ExAllocatePoolWithTag [high] "
            "(tag not printable as text: PoolMon cannot read it)"
        ),
        (
            "// Pt\\x01\\xff - pooltags_x64.sys - ExAllocatePoolWithTag [high] "
            "(tag not printable as text: PoolMon cannot read it)"
        ),
    ]
    entries = [line for line in lines[1:] if not line.startswith("//")]
    assert len(entries) == len(expected)
    assert all(
        line[4:7] == " - " and all(0x20 <= ord(c) < 0x7F for c in line[:4]) for line in entries
    )
    assert database.describe(b"Pt\x01\xff") is None
    assert database.describe(b"MaNA").description == (
        "NdisAllocateMemoryWithTag, NdisFreeMemoryWithTag [high]"
    )
    assert database.describe(b"PtYf").description == "ExAllocatePoolWithTag [low]"


@pytest.mark.parametrize(
    "raw",
    [b"Ab  ", b"  Ab", b"    ", b"A -b", b"a*?\\", b"//ab", b"rem ", b"\x00\t\x7f\xff", b"Dh 0"],
)
def test_localtag_text_parses_back_to_the_same_bytes(raw):
    line = f"{localtag_tag(raw):<4} - some.sys - test"
    database = TagDatabase.from_lines([line], "t")
    (entry,) = database.entries
    assert database.describe(raw) == entry
    assert not entry.is_wildcard
    assert entry.owner == "some.sys"


def test_parallel_batch_matches_serial(tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    names = ["pooltags_x64.sys", "pooltags_x86.sys", "multiapi_x64.sys", "multiapi_x86.sys"]
    for copy in range(3):
        for name in names:
            shutil.copy(DRIVERS / name, folder / f"{copy}_{name}")
    (folder / "readme.txt").write_text("not a driver")
    serial = run(str(folder), "--format", "jsonl", "--jobs", "1")
    parallel = run(str(folder), "--format", "jsonl", "--jobs", "2")
    assert serial.returncode == parallel.returncode == 0
    assert serial.stdout == parallel.stdout
    assert len({json.loads(line)["path"] for line in serial.stdout.splitlines()}) == 12
    assert "1 file(s) without a PE header passed over" in parallel.stderr


def test_expand_paths_recurses_and_passes_over_non_pe(tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(X64, nested / "x.sys")
    (tmp_path / "a" / "driver.inf").write_text("[Version]\n")
    expansion = expand_paths([str(tmp_path), str(tmp_path / "nope")])
    assert expansion.files == [str(nested / "x.sys")]
    assert [f.problem for f in expansion.failures] == ["no such file"]
    assert expansion.notes == [f"{tmp_path}: 1 file(s) without a PE header passed over"]


def test_rules_from_the_user_and_without_the_builtin_folder(tmp_path):
    empty = tmp_path / "no-rules"
    empty.mkdir()
    without = run(str(X64), "--format", "json", env={RULES_ENV: str(empty)})
    assert without.returncode == 0
    assert "low-confidence fallback is off" in without.stderr
    (driver,) = json.loads(without.stdout)["drivers"]
    # The prefilter still works (built from the API table); only PtYf is lost.
    assert {f["tag"] for f in driver["findings"]} == POOLTAGS_TAGS - {"PtYf"}
    (unresolved,) = [u for u in driver["unresolved"] if not u["partial"]]
    assert unresolved["api"] == "ExAllocatePoolWithTag"
    assert unresolved["reasons"][0].startswith("loaded through a pointer at ")

    mine = tmp_path / "mine.yar"
    mine.write_text(
        "rule field_store : tag_immediate\n"
        "{ strings: $s = /\\xC7[\\x40-\\x47][\\x00-\\xFF][\\x20-\\x7E]{4}/ condition: $s }\n"
    )
    with_user = run(
        str(X64), "--format", "jsonl", "--rules", str(mine), env={RULES_ENV: str(empty)}
    )
    found = [json.loads(line) for line in with_user.stdout.splitlines()]
    assert [(f["tag"], f["rule"]) for f in found if f["evidence"] == "yara"] == [
        ("PtYf", "field_store")
    ]

    untagged = tmp_path / "untagged.yar"
    untagged.write_text("rule nothing { condition: false }\n")
    refused = run(str(X64), "--rules", str(untagged))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"pooltagscan: error: {untagged}: rule nothing is tagged neither pool_import nor "
        "tag_immediate, so pooltagscan would not use it"
    )
    broken = tmp_path / "broken.yar"
    broken.write_text("rule {")
    assert "YARA syntax error" in run(str(X64), "--rules", str(broken)).stderr


VERSIONED = DRIVERS / "version" / "versioned_x64.sys"
NOT_A_DRIVER = "(user-mode, EFI or native user-mode images)"


def test_rows_name_files_by_their_path_under_the_folder(tmp_path):
    """Two drivers of the same name in two DriverStore folders stay apart in every row."""
    store = tmp_path / "DriverStore"
    for folder, source in (("pkg_a", X64), ("pkg_b", X86)):
        (store / folder).mkdir(parents=True)
        shutil.copy(source, store / folder / "pooltags.sys")
    records = [
        json.loads(line) for line in run(str(store), "--format", "jsonl").stdout.splitlines()
    ]
    assert {(r["driver"], r["arch"], r["path"]) for r in records} == {
        ("pkg_a/pooltags.sys", "x64", str(store / "pkg_a" / "pooltags.sys")),
        ("pkg_b/pooltags.sys", "x86", str(store / "pkg_b" / "pooltags.sys")),
    }
    assert {r["sha256"] for r in records if r["driver"] == "pkg_b/pooltags.sys"} == {
        hashlib.sha256(X86.read_bytes()).hexdigest()
    }
    table = run(str(store), "--tag", "PtWt").stdout.splitlines()
    # One row per driver and API (PtWt is allocated and freed): both files, apart.
    assert sorted(line.split()[1] for line in table[2:]) == [
        "pkg_a/pooltags.sys",
        "pkg_a/pooltags.sys",
        "pkg_b/pooltags.sys",
        "pkg_b/pooltags.sys",
    ]
    # A file named directly keeps the path as given (here relative to the working dir).
    given = "samples/drivers/pooltags_x64.sys"
    direct = run(given, "--format", "json")
    (driver,) = json.loads(direct.stdout)["drivers"]
    assert (driver["driver"], driver["path"]) == (given, given)


def test_file_identity_from_the_version_resource():
    result = run(str(VERSIONED), "--format", "json")
    assert result.returncode == 0 and "version" not in result.stderr
    (driver,) = json.loads(result.stdout)["drivers"]
    identity = {k: driver[k] for k in ("sha256", "timestamp", "timestamp_value", "machine")}
    assert identity == {
        "sha256": hashlib.sha256(VERSIONED.read_bytes()).hexdigest(),
        "timestamp": None,  # linked with --no-insert-timestamp
        "timestamp_value": 0,
        "machine": "0x8664 (AMD64)",
    }
    # The keys of samples/drivers/src/versioned.rc we report (FileDescription is not).
    assert driver["version"] == {
        "FileVersion": "2.5.0.17",
        "CompanyName": "pooltagscan samples",
        "OriginalFilename": "versioned.sys",
        "ProductName": "pooltagscan sample drivers",
    }
    assert driver["notes"] == []


def _patched(tmp_path: Path, name: str, patch) -> Path:
    data = bytearray(VERSIONED.read_bytes())
    patch(data)
    target = tmp_path / name
    target.write_bytes(bytes(data))
    return target


def test_malformed_version_resource_costs_one_note(tmp_path):
    def break_header(data: bytearray) -> None:
        # VS_VERSIONINFO starts with wLength, wValueLength, wType, then its UTF-16 key.
        start = bytes(data).index("VS_VERSION_INFO".encode("utf-16-le")) - 6
        struct.pack_into("<HH", data, start, 0xFFFF, 0xFFFF)

    def huge_directory(data: bytearray) -> None:
        (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
        # PE32+ optional header: data directories at 112, resource is entry 2.
        struct.pack_into("<I", data, pe_offset + 24 + 112 + 2 * 8 + 4, 0x7FFFFFFF)

    broken = _patched(tmp_path, "broken.sys", break_header)
    huge = _patched(tmp_path, "huge.sys", huge_directory)
    result = run(str(broken), str(huge), "--format", "json")
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)["drivers"]
    assert (first["version"], first["notes"]) == (
        {},
        ["version resource unreadable (malformed VS_VERSIONINFO), not reported"],
    )
    assert (second["version"], second["notes"]) == (
        {},
        [
            (
                "version resource not read: the resource directory claims 2,147,483,647 bytes "
                "(limit 32 MiB)"
            )
        ],
    )
    assert result.stderr.splitlines()[:2] == [
        (
            f"pooltagscan: {broken}: version resource unreadable (malformed VS_VERSIONINFO), "
            "not reported"
        ),
        (
            f"pooltagscan: {huge}: version resource not read: the resource directory claims "
            "2,147,483,647 bytes (limit 32 MiB)"
        ),
    ]


def test_folder_walk_passes_over_images_that_are_not_drivers(tmp_path):
    folder = tmp_path / "store"
    (folder / "pkg").mkdir(parents=True)
    shutil.copy(X64, folder / "pkg" / "driver.sys")
    shutil.copy(DRIVERS / "bad" / "usermode_x64.dll", folder / "pkg" / "helper.dll")
    (folder / "pkg" / "arm64_app.exe").write_bytes(arm64_image(subsystem=2))
    (folder / "pkg" / "driver.inf").write_text("[Version]\n")
    result = run(str(folder), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert {json.loads(line)["driver"] for line in result.stdout.splitlines()} == {"pkg/driver.sys"}
    assert "error" not in result.stderr
    assert f"pooltagscan: {folder}: 1 file(s) without a PE header passed over" in (
        result.stderr.splitlines()
    )
    assert (
        f"pooltagscan: {folder}: 2 file(s) that are not kernel drivers skipped {NOT_A_DRIVER}"
        in (result.stderr.splitlines())
    )
    # Named on the command line, the same DLL is an error; the rest is still analysed.
    named_dll = run(str(folder / "pkg" / "helper.dll"), str(X86), "--format", "jsonl")
    assert named_dll.returncode == 2
    assert named_dll.stderr.splitlines()[0] == (
        f"pooltagscan: error: {folder / 'pkg' / 'helper.dll'}: user-mode image "
        "(Windows CUI subsystem), not a kernel driver"
    )
    assert {json.loads(line)["tag"] for line in named_dll.stdout.splitlines()} == POOLTAGS_TAGS


def test_folder_walk_reports_broken_drivers(tmp_path):
    """A `.sys` that is no PE, or a native image that cannot be analysed, is an error
    even inside a folder (exit 2); the folder's other drivers are still analysed."""
    folder = tmp_path / "drivers"
    folder.mkdir()
    shutil.copy(X64, folder / "good.sys")
    (folder / "notes.sys").write_text("not a driver")
    (folder / "arm64.bin").write_bytes(arm64_image())
    result = run(str(folder), "--format", "jsonl")
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if ": error: " in line] == [
        (
            f"pooltagscan: error: {folder / 'arm64.bin'}: unsupported architecture ARM64 "
            "(machine 0xaa64); only x86 and x64 drivers are analysed"
        ),
        f"pooltagscan: error: {folder / 'notes.sys'}: not a PE image (no MZ header)",
    ]
    assert {json.loads(line)["driver"] for line in result.stdout.splitlines()} == {"good.sys"}


def test_empty_folder_and_folder_without_drivers_say_so(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    userland = tmp_path / "userland"
    userland.mkdir()
    shutil.copy(DRIVERS / "bad" / "usermode_x64.dll", userland / "a.dll")
    (userland / "readme.txt").write_text("hello")
    result = run(str(empty), str(userland))
    assert result.returncode == 0
    assert result.stdout == "no pool tags found\n"
    assert result.stderr.splitlines() == [
        f"pooltagscan: {userland}: 1 file(s) without a PE header passed over",
        f"pooltagscan: {empty}: empty folder, no driver to analyse",
        f"pooltagscan: {userland}: 1 file(s) that are not kernel drivers skipped {NOT_A_DRIVER}",
        f"pooltagscan: {userland}: no kernel driver among its 2 file(s)",
        "pooltagscan: 0 driver(s) analysed, 0 with tags, 0 record(s)",
    ]


def test_hostile_resource_sections_never_stop_the_analysis():
    """Seeded mutants of the .rsrc bytes: the identity is still given, version strings
    are whatever survived, and a broken resource costs at most one one-line note."""
    import random

    import pefile

    from pooltagscan.drivers.fileinfo import file_info

    original = VERSIONED.read_bytes()
    rsrc = next(
        s for s in pefile.PE(data=original, fast_load=True).sections if s.Name.startswith(b".rsrc")
    )
    low, high = rsrc.PointerToRawData, rsrc.PointerToRawData + rsrc.SizeOfRawData
    rng = random.Random(11)
    outcomes = set()
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.choice((1, 4, 16, 64))):
            data[rng.randrange(low, high)] = rng.choice((0, 0xFF, rng.randrange(256)))
        notes: list[str] = []
        info = file_info(bytes(data), pefile.PE(data=bytes(data), fast_load=True), notes)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert len(notes) <= 1 and all("\n" not in n for n in notes)
        outcomes.add((len(info.version), bool(notes)))
    # The mutants do reach both ends: intact strings and unreadable resources.
    assert (4, False) in outcomes and (0, True) in outcomes
