"""scanner/detect.py: the family and encoding each sample dump was made with, evidence
named by the layouts, forced families, tie-breaking and sampling of large images."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DUMPS, load_manifest
from handmade import blank, legacy_chain, put, words_of, x64_header, x86_header

from pooltagscan.inputs import open_image
from pooltagscan.inputs.base import MemoryImage, Run
from pooltagscan.layouts import LAYOUTS, Encoding, Family
from pooltagscan.scanner.detect import choose_encoding, detect, sample_windows

FAMILIES = ("xp-x86", "win7-x86", "win7-x64", "win10-1809-x64", "win11-segheap-x64")
LEGACY_KEYS = ["x86 chains", "x64 chains", "segment-heap pages", "xp votes", "vista votes"]
X64_BLOCKS = (0x20, 0x40, 0x10, 0x30, 0x08, 0x08, 0x18, 0x28, 0x10)
TAGS = (b"Proc", b"Thre", b"File", b"Irp ", b"Io  ", b"MmSt", b"Even", b"Key ", b"Toke")


@pytest.mark.parametrize("name", FAMILIES)
def test_detect_samples(name: str) -> None:
    """The manifest's layout and encoding win; every legacy pool page of the sample is a
    complete chain for its own family and for no other."""
    manifest = load_manifest(name)
    detection = detect(open_image(DUMPS / f"{name}.raw"))
    assert detection.family.value == manifest["layout"]
    assert detection.encoding.value == manifest["pooltype_encoding"]
    assert detection.sampled_bytes == manifest["size"]
    evidence = detection.evidence
    chains = {"x86": "x86 chains", "x64": "x64 chains"}
    if manifest["layout"] in chains:
        assert list(evidence) == LEGACY_KEYS
        want = dict.fromkeys(LEGACY_KEYS[:3], 0)
        want[chains[manifest["layout"]]] = manifest["page_kinds"]["pool-legacy"]
        assert {k: evidence[k] for k in LEGACY_KEYS[:3]} == want
        xp, vista = evidence["xp votes"], evidence["vista votes"]
        assert (xp > 0, vista > 0) == ((True, False) if name == "xp-x86" else (False, True))
    else:
        assert list(evidence) == LEGACY_KEYS[:3]
        assert evidence["x86 chains"] == evidence["x64 chains"] == 0
        kinds = manifest["page_kinds"]
        assert 0 < evidence["segment-heap pages"] <= kinds["lfh"] + kinds["vs"]


def test_evidence_keys_come_from_layouts() -> None:
    """The evidence names are the layouts' own, legacy before segment heap per unit."""
    assert sorted(lay.evidence for lay in LAYOUTS.values()) == sorted(LEGACY_KEYS[:3])


@pytest.mark.parametrize(
    ("name", "forced", "encoding", "votes"),
    [
        ("win7-x64", Family.X86, Encoding.VISTA, (0, 0)),  # no x86 chain: no vote, default
        ("xp-x86", Family.X64, Encoding.VISTA, (0, 0)),
        ("xp-x86", Family.SEGMENT_HEAP, Encoding.SEGMENT_HEAP, None),
        ("win11-segheap-x64", Family.X64, Encoding.VISTA, (0, 0)),
        ("win7-x86", Family.X86, Encoding.VISTA, None),  # forcing the winner changes nothing
    ],
)
def test_forced_family_keeps_its_choice(
    name: str, forced: Family, encoding: Encoding, votes: tuple[int, int] | None
) -> None:
    """--layout forces the family; the encoding still comes from that family's votes and
    the per-family page counts are reported unchanged."""
    image = open_image(DUMPS / f"{name}.raw")
    free = detect(image)
    detection = detect(image, forced)
    assert detection.family is forced
    assert detection.encoding is encoding
    for key in LEGACY_KEYS[:3]:
        assert detection.evidence[key] == free.evidence[key]
    if forced is Family.SEGMENT_HEAP:
        assert list(detection.evidence) == LEGACY_KEYS[:3]
    elif votes is not None:
        got = (detection.evidence["xp votes"], detection.evidence["vista votes"])
        assert got == votes
    else:
        assert detection.evidence == free.evidence


def _write(tmp_path: Path, buf: bytearray) -> MemoryImage:
    path = tmp_path / "handmade.raw"
    path.write_bytes(bytes(buf))
    return open_image(path)


def _x64_page(buf: bytearray, page: int, pooltypes: tuple[int, ...]) -> None:
    legacy_chain(buf, page, X64_BLOCKS, pooltypes, TAGS, unit=16)


def _lfh_page(buf: bytearray, page: int) -> None:
    for at in range(0x40, 0x200, 0x40):
        put(buf, page * 4096 + at, x64_header(0, 0, 4, 2, b"MmCi"))


def test_tie_goes_to_first_layout(tmp_path: Path) -> None:
    """One x64 chain and one segment-heap page: x64 wins, being first in LAYOUTS."""
    buf = blank(3)
    _x64_page(buf, 0, (3, 1, 3, 3, 1, 3, 3, 3, 1))
    _lfh_page(buf, 2)
    detection = detect(_write(tmp_path, buf))
    assert detection.family is Family.X64 and detection.encoding is Encoding.VISTA
    assert detection.evidence == dict(zip(LEGACY_KEYS, (0, 1, 1, 0, 1), strict=True))
    assert detection.sampled_bytes == 3 * 4096


def test_most_proving_pages_win(tmp_path: Path) -> None:
    buf = blank(3)
    _x64_page(buf, 0, (2, 0, 2, 2, 0, 2, 2, 2, 0))  # Vista nonpaged: votes for neither
    _lfh_page(buf, 1)
    _lfh_page(buf, 2)
    detection = detect(_write(tmp_path, buf))
    assert detection.family is Family.SEGMENT_HEAP
    assert detection.encoding is Encoding.SEGMENT_HEAP
    assert detection.evidence == {"x86 chains": 0, "x64 chains": 1, "segment-heap pages": 2}


def test_x86_xp_page(tmp_path: Path) -> None:
    buf = blank(1)
    blocks = (0x40, 0x100, 0x20, 0x60, 0x20, 0x20)
    legacy_chain(buf, 0, blocks, (1, 0, 1, 1, 0, 1), TAGS[:6], unit=8, header=x86_header)
    detection = detect(_write(tmp_path, buf))
    assert (detection.family, detection.encoding) == (Family.X86, Encoding.XP)
    assert detection.evidence == dict(zip(LEGACY_KEYS, (1, 0, 0, 1, 0), strict=True))
    assert "x86 chains 1" in detection.describe()


@pytest.mark.parametrize(
    ("xp", "vista", "encoding"),
    [(0, 0, Encoding.VISTA), (1, 0, Encoding.XP), (1, 1, Encoding.VISTA), (5, 4, Encoding.XP)],
)
def test_choose_encoding(xp: int, vista: int, encoding: Encoding) -> None:
    """XP only on a majority of XP votes; ties and silence mean Vista+."""
    assert choose_encoding(xp, vista) is encoding


def test_sample_windows_of_large_image() -> None:
    """Over 64 MiB: 32 slices of 2 MiB spread evenly, across runs, at their addresses."""
    mib = 1 << 20
    image = MemoryImage(
        path="none", format="raw", runs=[Run(0, 0, 64 * mib), Run(1 << 32, 64 * mib, 64 * mib)]
    )
    windows = sample_windows(image)
    assert len(windows) == 32
    assert {w.length for w in windows} == {2 * mib}
    assert (windows[0].address, windows[0].file_offset) == (0, 0)
    last = windows[-1]
    assert (last.address, last.file_offset) == ((1 << 32) + 62 * mib, 126 * mib)
    assert all(w.address < 64 * mib or w.address >= 1 << 32 for w in windows)


def test_sample_windows_of_small_image(tmp_path: Path) -> None:
    image = _write(tmp_path, blank(5))
    assert [(w.address, w.length) for w in sample_windows(image)] == [(0, 5 * 4096)]


def test_handmade_words_roundtrip(tmp_path: Path) -> None:
    """The image reads back the words the other tests hand to the scanners."""
    buf = blank(2)
    _lfh_page(buf, 1)
    image = _write(tmp_path, buf)
    (window,) = image.windows(1 << 20)
    with image.words(window) as words:
        assert (words == words_of(buf)).all()
