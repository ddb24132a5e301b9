"""The committed sample dumps are reproducible from their generator and their manifests exact."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DUMPS = SAMPLES / "dumps"
EXPECTED_FAMILIES = ("xp-x86", "win7-x86", "win7-x64", "win10-1809-x64", "win11-segheap-x64")
FIELDS = ["offset", "tag", "protected", "size", "pool", "state", "kind", "truth"]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ms = _load()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    assert ms.main(["--out", str(out)]) == 0
    return out


def test_family_names() -> None:
    assert ms.FAMILIES == EXPECTED_FAMILIES


@pytest.mark.parametrize("family", EXPECTED_FAMILIES)
@pytest.mark.parametrize("ext", [".raw", ".json"])
def test_regeneration_is_byte_identical(regenerated: Path, family: str, ext: str) -> None:
    assert _sha(regenerated / f"{family}{ext}") == _sha(DUMPS / f"{family}{ext}")


@pytest.mark.parametrize("family", EXPECTED_FAMILIES)
def test_manifest_describes_raw(family: str) -> None:
    manifest = json.loads((DUMPS / f"{family}.json").read_text())
    raw = DUMPS / f"{family}.raw"
    assert manifest["sha256"] == _sha(raw)
    # 2 MiB, plus the pages gen_images appends for the loaded drivers (paging families).
    added = manifest["pages"][512:]
    assert manifest["size"] == raw.stat().st_size == 2 * 1024 * 1024 + 4096 * len(added)
    assert manifest["family"] == family
    assert set(added) <= {"pe-image", "loader-list", "page-table"}
    assert bool(added) == ("kernel_images" in manifest)
    assert manifest["allocations"]
    assert all(list(a) == FIELDS for a in manifest["allocations"])


@pytest.mark.parametrize("family", EXPECTED_FAMILIES)
def test_self_check_finds_no_problem(family: str) -> None:
    manifest = json.loads((DUMPS / f"{family}.json").read_text())
    assert ms.self_check((DUMPS / f"{family}.raw").read_bytes(), manifest) == []


def test_self_check_catches_an_unplanted_header() -> None:
    image, manifest = ms.build_family("win11-segheap-x64", pages=64)
    page = manifest["pages"].index("text")
    forged = bytearray(image)
    forged[page * 4096 + 0x40 : page * 4096 + 0x48] = bytes((0, 0, 5, 3)) + b"Proc"
    manifest["sha256"] = hashlib.sha256(forged).hexdigest()
    problems = ms.self_check(bytes(forged), manifest)
    assert problems == [f"{page * 4096 + 0x40:#x}: header-like slot nobody planted"]


def test_self_check_catches_an_unplanted_chain() -> None:
    image, manifest = ms.build_family("win7-x64", pages=64)
    page = manifest["pages"].index("zeros")
    forged = bytearray(image)
    forged[page * 4096 : page * 4096 + 4] = bytes((0, 0, 0x80, 2))
    forged[page * 4096 + 0x800 : page * 4096 + 0x804] = bytes((0x80, 0, 0x80, 2))
    manifest["sha256"] = hashlib.sha256(forged).hexdigest()
    assert ms.self_check(bytes(forged), manifest) == [
        f"page {page} (zeros): a pool chain nobody planted"
    ]


def test_write_bench_dump_repeats_a_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "BENCH_UNIT_PAGES", 64)
    unit, manifest = ms.build_family("win7-x86", pages=64)
    size = 2 * len(unit) + 5000
    summary = ms.write_bench_dump(tmp_path / "bench.raw", "win7-x86", size)
    data = (tmp_path / "bench.raw").read_bytes()
    assert data[: len(unit)] == unit  # the first unit holds the kernel's tables
    later = data[len(unit) : 2 * len(unit)]
    assert data[2 * len(unit) :] == later[:5000]
    for page, kind in enumerate(manifest["pages"]):
        same = later[page * 4096 : (page + 1) * 4096] == unit[page * 4096 : (page + 1) * 4096]
        if kind in ms.POOL_KINDS:
            assert same, page  # the same pool pages in every unit
        elif kind in ms.TABLE_KINDS:
            assert not same, page  # one big-page table and one tracker table per dump
    offsets = [a["offset"] for a in manifest["allocations"]]
    expected = 2 * len(offsets) + sum(o + 8 <= 5000 for o in offsets)
    whole = sum(not e["crosses"] for e in manifest["bigpool"])
    assert summary == {"family": "win7-x86", "size": size, "allocations": expected,
                       "unit_size": len(unit), "bigpool": whole}  # fmt: skip
