"""Tag attribution on real third-party drivers with known tags (DESIGN.md section 7).

WinDivert 1.1.8 (`WinDivert32.sys`, `WinDivert64.sys`, shipped in pydivert 2.0.1) uses
the single tag `WDiv`; WinPmem (`winpmem_x86.sys`, `winpmem_x64.sys`, shipped in
rekall-core 1.7.1) uses `PMEM` plus the tags of the statically linked wdmsec.lib:
`SeAl`, `SeSd`, `SeTs`, `PpUc`, `PpRb`. The packages are fetched with
`pip download --no-deps` into a cache (`$POOLTAGSCAN_TEST_CACHE`, default
`~/.cache/pooltagscan-tests`) and only the .sys files are kept; the tests skip when pip
cannot download (offline). The binaries are never committed.

Later WinDivert builds shipped by later pydivert releases (`MORE_DRIVERS`, kept in
their own cache folders because the file names repeat): WinDivert 1.3 (pydivert 2.1.0,
FileVersion "1.3 built by: WinDDK") and WinDivert 2.2 (pydivert 3.1.3, x64 only,
FileVersion "2.2", a KMDF driver). Ground truth from the public WinDivert source,
`sys/windivert.c` of each release: `#define WINDIVERT_TAG 'viDW'` (the bytes `WDiv`)
is the only tag; every `ExAllocatePoolWithTag`/`ExFreePoolWithTag` call and the
`PoolTag` of the NDIS pool parameters pass it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from pooltagscan.drivers.attribution import AnalysisContext, analyze_file
from pooltagscan.drivers.yarascan import RuleSet

REPO = Path(__file__).resolve().parent.parent
WDMSEC = {"SeAl", "SeSd", "SeTs", "PpUc", "PpRb"}
# name -> (package, sha256 of the driver, arch, exact tag set)
DRIVERS = {
    "WinDivert32.sys": (
        "pydivert==2.0.1",
        "5ef707ea68a9bd3a3e568793a0f7d66d166694801ada067d9ebac1d13e53153e",
        "x86",
        {"WDiv"},
    ),
    "WinDivert64.sys": (
        "pydivert==2.0.1",
        "df12afa691e529f01c75b3dd734f6b45bf1488dbf90ced218657f0d205bff319",
        "x64",
        {"WDiv"},
    ),
    "winpmem_x86.sys": (
        "rekall-core==1.7.1",
        "85e10504fd999723664d9cf58804aa3d7098c8a74b722b12cc2448f596bc700a",
        "x86",
        {"PMEM"} | WDMSEC,
    ),
    "winpmem_x64.sys": (
        "rekall-core==1.7.1",
        "7ce13ce1916398c76c3bd78872ba7f2517baf6b8df360f41e62479f137f0492a",
        "x64",
        {"PMEM"} | WDMSEC,
    ),
}


def _cache() -> Path:
    configured = os.environ.get("POOLTAGSCAN_TEST_CACHE")
    base = Path(configured) if configured else Path.home() / ".cache" / "pooltagscan-tests"
    return base / "real-drivers"


def _extract_sys(archive: Path, names: set[str], into: Path) -> None:
    """Copy the wanted .sys members of a wheel, zip or tar.gz out of the archive."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                if Path(member).name in names:
                    (into / Path(member).name).write_bytes(bundle.read(member))
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as bundle:
            for member in bundle.getmembers():
                if member.isfile() and Path(member.name).name in names:
                    handle = bundle.extractfile(member)
                    assert handle is not None
                    (into / Path(member.name).name).write_bytes(handle.read())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(package: str, digests: dict[str, str], into: Path) -> None:
    """The `.sys` files named in `digests` (name -> sha256) from a PyPI package, in `into`:
    downloaded and extracted unless already there; a skip when pip cannot download (no
    network), a failure when the package no longer ships one or ships another build."""
    into.mkdir(parents=True, exist_ok=True)
    wanted = set(digests)
    if not all((into / n).is_file() and _sha256(into / n) == digests[n] for n in wanted):
        downloads = _cache() / "downloads" / package.replace("==", "-")
        downloads.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
        command += ["--disable-pip-version-check", "-d", str(downloads), package]
        try:
            result = subprocess.run(
                command, check=False, capture_output=True, text=True, timeout=300
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot run pip download {package}: {exc}")
        if result.returncode != 0:
            pytest.skip(f"pip download {package} failed (offline?): {result.stderr.strip()[-200:]}")
        for archive in downloads.iterdir():
            _extract_sys(archive, wanted, into)
    for name in wanted:
        if not (into / name).is_file():
            pytest.fail(f"{package} no longer ships {name}")
        assert _sha256(into / name) == digests[name], f"{name} is another build"


@pytest.fixture(scope="module")
def real_drivers() -> Path:
    """The four drivers in the cache, downloaded and extracted on first use."""
    drivers = _cache() / "drivers"
    for package in sorted({spec[0] for spec in DRIVERS.values()}):
        digests = {n: spec[1] for n, spec in DRIVERS.items() if spec[0] == package}
        _fetch(package, digests, drivers)
    return drivers


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_real_driver_exact_tags(real_drivers, name):
    _package, _digest, arch, tags = DRIVERS[name]
    report = analyze_file(str(real_drivers / name), AnalysisContext(RuleSet()))
    assert report.arch == arch
    assert {f.tag for f in report.findings} == tags
    # Every pool API call of these drivers is resolved by data flow, with no fallback.
    assert report.unresolved == []
    assert {f.evidence for f in report.findings} == {"direct"}
    apis = {"ExAllocatePoolWithTag", "ExFreePoolWithTag"}
    if name.startswith("WinDivert"):
        # windivert.c fills NET_BUFFER_LIST_POOL_PARAMETERS.PoolTag with WINDIVERT_TAG.
        apis.add("NdisAllocateNetBufferListPool")
        pool = [f for f in report.findings if f.api == "NdisAllocateNetBufferListPool"]
        assert {f.tag for f in pool} == {"WDiv"}
    assert set(report.pool_apis) == apis


def _drivers_cli(folder, fmt: str) -> str:
    """stdout of `pooltagscan drivers FOLDER --format FMT`, which must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "pooltagscan", "drivers", str(folder), "--format", fmt],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_real_drivers_through_the_cli(real_drivers):
    stdout = _drivers_cli(real_drivers, "jsonl")
    found: dict[str, set[str]] = {}
    for line in stdout.splitlines():
        record = json.loads(line)
        found.setdefault(record["driver"], set()).add(record["tag"])
    assert found == {name: spec[3] for name, spec in DRIVERS.items()}


# name -> (TimeDateStamp as ISO UTC, version resource strings), read from the files with
# pefile by hand; winpmem has no version resource.
_WINDIVERT_VERSION = {
    "FileVersion": "1.1.8 built by: WinDDK",
    "CompanyName": "Basil",
    "OriginalFilename": "WinDivert.sys",
    "ProductName": "WinDivert driver",
}
IDENTITY = {
    "WinDivert32.sys": ("2015-07-28T13:55:32Z", "0x014c (I386)", _WINDIVERT_VERSION),
    "WinDivert64.sys": ("2015-07-28T13:55:14Z", "0x8664 (AMD64)", _WINDIVERT_VERSION),
    "winpmem_x86.sys": ("2015-03-04T09:52:30Z", "0x014c (I386)", {}),
    "winpmem_x64.sys": ("2015-03-04T09:52:18Z", "0x8664 (AMD64)", {}),
}


def test_real_drivers_identity_in_json(real_drivers):
    stdout = _drivers_cli(real_drivers, "json")
    documents = {d["driver"]: d for d in json.loads(stdout)["drivers"]}
    assert {
        name: (d["timestamp"], d["machine"], d["version"]) for name, d in documents.items()
    } == IDENTITY
    assert {name: d["sha256"] for name, d in documents.items()} == {
        name: spec[1] for name, spec in DRIVERS.items()
    }


# (package, name) -> (sha256, arch, tags, pool APIs imported, unresolved (api, reasons))
MORE_DRIVERS = {
    ("pydivert==2.1.0", "WinDivert32.sys"): (
        "bd27499533e42d64bcab52a018add1e361de02f04c4b1d16852cb643bf4c5755",
        "x86",
        {"WDiv"},
        ("ExAllocatePoolWithTag", "ExFreePoolWithTag", "NdisAllocateNetBufferListPool"),
        [],
    ),
    ("pydivert==2.1.0", "WinDivert64.sys"): (
        "9026147943bd44a1eb5e2f0c89cc8f441c7d1f13c1571aba54e262d2e7354798",
        "x64",
        {"WDiv"},
        ("ExAllocatePoolWithTag", "ExFreePoolWithTag", "NdisAllocateNetBufferListPool"),
        [],
    ),
    ("pydivert==3.1.3", "WinDivert64.sys"): (
        "8da085332782708d8767bcace5327a6ec7283c17cfb85e40b03cd2323a90ddc2",
        "x64",
        {"WDiv"},
        (
            "ExAllocatePoolWithTag",
            "ExFreePoolWithTag",
            "NdisAllocateNetBufferListPool",
            "NdisAllocateNetBufferPool",
        ),
        # WinDivert 2.2 fills the NDIS pool parameters in a heap-allocated context:
        # not a static or stack structure, so these two calls stay unresolved (their
        # tag is WDiv, found at the other calls).
        [
            ("NdisAllocateNetBufferPool", ("structure pointer is not a static or stack address",)),
            (
                "NdisAllocateNetBufferListPool",
                ("structure pointer is not a static or stack address",),
            ),
        ],
    ),
}


def more_driver_path(package: str, name: str) -> Path:
    """Where a MORE_DRIVERS file is cached: one folder per package."""
    return _cache() / "more" / package.replace("==", "-") / name


@pytest.fixture(scope="module")
def more_drivers() -> dict[tuple[str, str], Path]:
    """The MORE_DRIVERS files, downloaded and extracted on first use."""
    paths = {}
    for package in sorted({key[0] for key in MORE_DRIVERS}):
        digests = {key[1]: spec[0] for key, spec in MORE_DRIVERS.items() if key[0] == package}
        into = more_driver_path(package, "x").parent
        _fetch(package, digests, into)
        paths.update({(package, name): into / name for name in digests})
    return paths


@pytest.mark.parametrize("key", sorted(MORE_DRIVERS), ids=lambda k: f"{k[0]}:{k[1]}")
def test_more_windivert_builds_exact_tags(more_drivers, key):
    _digest, arch, tags, apis, unresolved = MORE_DRIVERS[key]
    report = analyze_file(str(more_drivers[key]), AnalysisContext(RuleSet()))
    assert report.arch == arch
    assert {f.tag for f in report.findings} == tags
    assert {f.evidence for f in report.findings} == {"direct"}
    assert report.pool_apis == apis
    assert [(u.api, u.reasons) for u in report.unresolved] == unresolved
