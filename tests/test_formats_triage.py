"""The minidump reader on a real Windows 11 ARM64 kernel minidump (../shared/data).

The file (rizin's test binary triage_arm64.dmp) is not part of the project; these tests
skip when it is absent. The header facts and the pool headers pinned below were read by
hand from a hex dump of the file (file offsets given), not from our reader.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import shared_file
from test_cli import stderr_lines

from pooltagscan import cli
from pooltagscan.inputs import open_image
from pooltagscan.records import to_dicts
from pooltagscan.scan import prepare, run
from pooltagscan.tags.database import TagDatabase

NAME = "win11-arm64-triage.dmp"

# (virtual address, file offset, tag, size, pool): header bytes checked with xxd, e.g.
#   000aa625: 0000 0302 4472 6976 ...  -> BlockSize 3 (48 bytes), PoolType 2, "Driv"
HAND_VERIFIED = [
    (0xFFFFBB8EBA5FB3A0, 0xAA625, "Driv", 48, "nonpaged"),
    (0xFFFFBB8EC46F7350, 0xA45A0, "Vad ", 160, "nonpaged"),
    (0xFFFFBB8EC46F73F0, 0xA4640, "Vad ", 160, "nonpaged"),
    (0xFFFFBB8EBD4D2000, 0x9AB78, "MmCa", 240, "nonpaged"),
    (0xFFFFA90365E15380, 0xAB155, "ObNm", 48, "paged"),
]


@pytest.fixture(scope="module")
def triage():
    path = shared_file(NAME)
    prepared = prepare(open_image(path), "auto", TagDatabase.builtin())
    records = np.concatenate(list(run(prepared)))
    return path, prepared, {d["offset"]: d for d in to_dicts(records)}


def test_header_facts(triage):
    _, prepared, _ = triage
    image = prepared.image
    assert (image.format, image.architecture) == ("minidump", "ARM64")
    details = image.details
    assert details["build"] == 22000
    assert details["dump_type"] == "triage (4)"
    assert details["bugcheck"] == "0x1c8"  # MANUALLY_INITIATED_POWER_BUTTON_HOLD
    assert details["bugcheck_parameters"] == ["0x1b58", "0xfffff803f3a20860", "0x0", "0x0"]
    assert details["processors"] == 8
    assert details["data_blocks"] == 679
    assert details["captured_bytes"] == 574245
    assert details["drivers"] == 245
    assert details["pages"] == 472
    assert details["secondary_data_bytes"] == 1216428 - 0xAC46C  # blobs after SizeOfDump


def test_layout_is_segment_heap(triage):
    _, prepared, found = triage
    assert prepared.config.family.value == "x64-segment-heap"
    assert prepared.config.encoding.value == "segment-heap"
    assert len(found) >= 250


def test_hand_verified_headers(triage):
    path, prepared, found = triage
    raw = path.read_bytes()
    for va, file_offset, tag, size, pool in HAND_VERIFIED:
        record = found[va]
        assert (record["tag"], record["size"], record["pool"]) == (tag, size, pool), hex(va)
        assert record["layout"] == "x64-segment-heap"
        assert prepared.image.read(va, 16) == raw[file_offset : file_offset + 16]
        assert raw[file_offset : file_offset + 2] == b"\0\0"  # PreviousSize, PoolIndex


def test_every_record_matches_the_bytes_at_its_block(triage):
    """Independently of the reader: find each record's block in the table, decode the file."""
    path, _, found = triage
    raw = path.read_bytes()
    table_at, count = struct.unpack_from("<II", raw, 0x2000 + 0x78)
    blocks = [struct.unpack_from("<QII", raw, table_at + 16 * i) for i in range(count)]
    for va, record in found.items():
        (offset,) = [o + va - b for b, o, s in blocks if b <= va and va + 8 <= b + s]
        prev, index, block, pooltype = raw[offset : offset + 4]
        assert (prev, index) == (0, 0)
        assert block * 16 == record["size"]
        assert raw[offset + 4 : offset + 8] == record["tag"].encode("latin-1")
        assert record["pool"] == ("paged" if pooltype & 1 else "nonpaged")


def test_cli_reports_the_dump(capsys, tmp_path):
    path = shared_file(NAME)
    assert cli.main(["scan", str(path), "--stats", "-o", str(tmp_path / "s.txt")]) == 0
    lines = capsys.readouterr().err.splitlines()
    # The reader's note, then the one summary line: the 574,245 bytes the blocks hold (not
    # the 472 zero-padded pages), and the 64-bit segment-heap layout named on ARM64.
    assert len(lines) == 2 and "offsets are virtual addresses" in lines[0]
    assert stderr_lines(lines[1], path)[0] == (
        f"pooltagscan: {path}: 307 records, 33 KiB in T s over 561 KiB captured; "
        "x64-segment-heap on ARM64 (seg 49)"
    )
    assert cli.main(["scan", str(path), "--stats", "-v", "-o", str(tmp_path / "s.txt")]) == 0
    err = capsys.readouterr().err
    assert "Windows kernel minidump, ARM64, dump type triage (4), build 22000" in err
    assert "bugcheck 0x1c8, data blocks 679" in err
    assert "offsets are virtual addresses" in err
