"""Tag attribution on our own sample drivers: exact answers from ground_truth.json.

The samples (samples/drivers/, built by build.sh with MinGW-w64 and committed) allocate
with known tags through every pool API of the table, in the code shapes the analysis
must follow, next to decoys that must not come out. The ground truth is written from
the C sources; these tests compare the tool's findings with it exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pefile
import pytest

from pooltagscan.drivers.apis import (
    INLINE_HELPERS,
    KERNEL_MODULES,
    POOL_APIS,
    WDF_APIS,
    WDF_BIND,
    lookup,
)
from pooltagscan.drivers.attribution import (
    AnalysisContext,
    DriverReport,
    analyze_file,
    scan_batch,
)
from pooltagscan.drivers.dataflow import apply_ops
from pooltagscan.drivers.yarascan import RuleSet, builtin_rules_dir, pool_import_rule_source

REPO = Path(__file__).resolve().parent.parent
DRIVERS = REPO / "samples" / "drivers"
TRUTH = json.loads((DRIVERS / "ground_truth.json").read_text())
EVIDENCE = ("direct", "wrapper", "global", "data", "return", "yara")


def _truth(name: str) -> dict:
    entry = TRUTH["drivers"][name]
    if "same_as" in entry:
        return {**TRUTH["drivers"][entry["same_as"]], "arch": entry["arch"]}
    return entry


@pytest.fixture(scope="module")
def reports() -> dict[str, DriverReport]:
    """Every sample driver analysed once, in one batch (so ordinals can be resolved)."""
    files = [str(DRIVERS / name) for name in TRUTH["drivers"]]
    results = list(scan_batch(files, RuleSet(), jobs=1))
    by_name = {}
    for name, result in zip(TRUTH["drivers"], results):
        assert isinstance(result, DriverReport), result
        by_name[name] = result
    return by_name


def _summary(report: DriverReport) -> dict:
    by_api: dict[str, set[str]] = defaultdict(set)
    by_evidence: dict[str, set[str]] = {e: set() for e in EVIDENCE}
    depth: dict[str, set[int]] = defaultdict(set)
    for finding in report.findings:
        by_api[finding.api].add(finding.tag)
        by_evidence[finding.evidence].add(finding.tag)
        if finding.evidence == "wrapper":
            depth[finding.tag].add(len(finding.via))
    return {
        "arch": report.arch,
        "tags": {f.tag for f in report.findings},
        "by_api": dict(by_api),
        "by_evidence": by_evidence,
        "wrapper_depth": {tag: depths for tag, depths in depth.items()},
        "protected": {f.tag for f in report.findings if f.protected},
        "untagged_frees": report.untagged_frees,
    }


@pytest.mark.parametrize("name", list(TRUTH["drivers"]))
def test_exact_tags_per_driver(reports, name):
    truth = _truth(name)
    got = _summary(reports[name])
    assert got["arch"] == truth["arch"]
    assert got["tags"] == set(truth["tags"])
    assert got["by_api"] == {api: set(tags) for api, tags in truth["by_api"].items()}
    assert got["by_evidence"] == {ev: set(truth["by_evidence"].get(ev, ())) for ev in EVIDENCE}
    assert got["wrapper_depth"] == {tag: {d} for tag, d in truth["wrapper_depth"].items()}
    assert got["protected"] == set(truth["protected"])
    assert got["untagged_frees"] == truth["untagged_frees"]
    # Every call site is resolved by data flow or, for PtYf, the fallback; negative's
    # tag read from a caller's structure is reported as unresolved (not guessed).
    assert not set(truth.get("missed", ())) & got["tags"]
    unresolved = [{"api": u.api, "partial": u.partial} for u in reports[name].unresolved]
    assert unresolved == truth.get("unresolved", [])
    assert list(reports[name].indirect_apis) == truth.get("indirect_apis", [])


@pytest.mark.parametrize("name", list(TRUTH["drivers"]))
def test_decoys_absent(reports, name):
    truth = _truth(name)
    reported = {f.tag for f in reports[name].findings}
    raw = {f.raw for f in reports[name].findings}
    for decoy in truth["decoys"]:
        assert decoy not in reported
        assert decoy.encode() not in raw


def test_confidence_follows_evidence(reports):
    findings = [f for r in reports.values() for f in r.findings]
    expected = {
        "direct": "high",
        "wrapper": "high",
        "global": "medium",
        "data": "medium",
        "return": "medium",
        "yara": "low",
    }
    assert {(f.evidence, f.confidence) for f in findings} == set(expected.items())
    fallback = [f for f in findings if f.evidence == "yara"]
    assert {f.rule for f in fallback} == {"mov_memory_imm32"}


def test_protected_tag_keeps_its_raw_value(reports):
    (finding,) = [f for f in reports["pooltags_x64.sys"].findings if f.protected]
    assert finding.tag == "PtFr"
    assert finding.value == int.from_bytes(b"PtFr", "little") | 0x80000000
    assert finding.api == "ExFreePoolWithTag"


def test_ordinal_import_needs_the_exporter_in_the_batch():
    rules = RuleSet()
    alone = analyze_file(str(DRIVERS / "ordinal" / "byordinal_x64.sys"), AnalysisContext(rules))
    truth = TRUTH["drivers"]["ordinal/byordinal_x64.sys"]["without_needs"]
    assert [f.tag for f in alone.findings] == truth["tags"]
    assert len(alone.notes) == 1 and alone.notes[0].startswith(truth["note"])
    assert alone.pool_apis == ()


def _file_bytes(path: Path, rva: int, size: int) -> bytes:
    pe = pefile.PE(str(path), fast_load=True)
    return pe.get_data(rva, size)


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_code_shapes_claimed_by_the_samples(reports, arch):
    """The README's list of code shapes is true of the committed binaries."""
    name = f"pooltags_{arch}.sys"
    path = DRIVERS / name
    findings = reports[name].findings

    def only(tag, api="ExAllocatePoolWithTag"):
        matching = [f for f in findings if f.tag == tag and f.api == api]
        assert matching, (tag, api)
        return min(matching, key=lambda f: f.site)

    # Import address hoisted into a register: `call rbx` / `call ebx` (FF D3).
    assert _file_bytes(path, only("\\x00\\x00\\x00\\x00").api_site, 2) == b"\xff\xd3"
    # ExAllocatePool2 through a linker thunk: `call rel32` (E8) to `jmp [slot]` (FF 25).
    thunk_call = only("PtA2", "ExAllocatePool2")
    head = _file_bytes(path, thunk_call.api_site, 5)
    assert head[0] == 0xE8
    target = thunk_call.api_site + 5 + int.from_bytes(head[1:], "little", signed=True)
    assert _file_bytes(path, target, 2) == b"\xff\x25"
    # The immediate first goes to ebx (`mov ebx, imm32` is BB id), then to the argument.
    register = only("PtRg")
    assert _file_bytes(path, register.source, 5) == b"\xbb" + b"PtRg"
    # Two wrapper levels for PtM3, the inner one shared with PtM1.
    assert only("PtM3").via[0] == only("PtM1").via[0]
    assert len(only("PtM3").via) == 2
    if arch == "x64":
        # A tail call `jmp [slot]` (REX.W FF /4) in Unload carries PtWt to ExFreePoolWithTag.
        tail = _file_bytes(path, only("PtWt", "ExFreePoolWithTag").api_site, 3)
        assert tail == b"\x48\xff\x25"
        # Lookaside tags are stack arguments: `mov dword [rsp+0x28], imm32`.
        lookaside = only("PtNl", "ExInitializeNPagedLookasideList")
        assert _file_bytes(path, lookaside.source, 8) == b"\xc7\x44\x24\x28PtNl"
    else:
        # MyAllocFramed keeps a frame pointer (push ebp; mov ebp, esp): its tag is [ebp+0xc].
        assert _file_bytes(path, only("PtFp").via[0], 3) == b"\x55\x89\xe5"
        # ExAllocatePool2's tag is the 4th stack dword on x86: `mov dword [esp+0xc], imm`.
        assert _file_bytes(path, thunk_call.source, 8) == b"\xc7\x44\x24\x0cPtA2"


def test_api_table():
    pool2 = POOL_APIS["ExAllocatePool2"]
    assert (pool2.tag_index, pool2.x86_slot, pool2.x86_stack_bytes) == (2, 3, 16)
    assert POOL_APIS["ExInitializeLookasideListEx"].tag_index == 6
    assert POOL_APIS["FltAllocatePoolAlignedWithTag"].tag_index == 3
    assert not set(INLINE_HELPERS) & set(POOL_APIS)
    assert set(INLINE_HELPERS.values()) <= set(POOL_APIS)
    assert all(set(api.modules) <= KERNEL_MODULES for api in POOL_APIS.values())
    assert lookup("NTOSKRNL.EXE", "ExAllocatePoolWithTag") is POOL_APIS["ExAllocatePoolWithTag"]
    assert lookup("ntkrnlpa.exe", "ExFreePoolWithTag") is POOL_APIS["ExFreePoolWithTag"]
    # The exporting module matters: a same-named function elsewhere is not the API.
    assert lookup("mylib.sys", "ExAllocatePoolWithTag") is None
    assert lookup("ndis.sys", "ExAllocatePoolWithTag") is None
    assert lookup("ntoskrnl.exe", "ExAllocatePool") is None  # no tag argument
    assert {a.name for a in POOL_APIS.values() if a.zero_is_untagged} == {
        "ExFreePoolWithTag",
        "ExFreePool2",
        "MmFreeMappingAddress",
        "NdisFreeMemoryWithTag",
        "NdisFreeMemoryWithTagPriority",
        "FltFreePoolAlignedWithTag",
    }


def test_prefilter_rule_file_matches_the_table():
    rules_dir = builtin_rules_dir()
    assert rules_dir is not None
    text = (rules_dir / "pool_imports.yar").read_text()
    assert text == pool_import_rule_source(), (
        "rules/drivers/pool_imports.yar is out of date; regenerate it with "
        "python -c 'from pooltagscan.drivers.yarascan import pool_import_rule_source as s; "
        'print(s(), end="")\' > rules/drivers/pool_imports.yar'
    )


def test_prefilter_decisions():
    rules = RuleSet()
    assert rules.immediates is not None and rules.notes == []
    expect = {
        "pooltags_x64.sys": True,
        "multiapi_x86.sys": True,
        "nopool_x64.sys": False,
        # No pool API import: a resolver plus a pool API name, or a KMDF binding.
        "dynamic_x64.sys": True,
        "dynamic_x86.sys": True,
        "kmdf_x86.sys": True,
        "videocb_x64.sys": True,
        "ordinal/byordinal_x64.sys": True,  # by ordinal from ntoskrnl.exe: may be one
        "ordinal/ntoskrnl.exe": False,
        "bad/usermode_x64.dll": False,
    }
    for name, wanted in expect.items():
        assert rules.imports_pool_api((DRIVERS / name).read_bytes()) is wanted, name


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_text_decoys_are_in_the_file_and_not_reported(reports, arch):
    """negative's tag-like string and PDB path are really in the file (so the test can
    fail) and are not evidence: tags come from code reaching a pool API only."""
    name = f"negative_{arch}.sys"
    data = (DRIVERS / name).read_bytes()
    for text in _truth(name)["text_decoys"]:
        assert text.encode() in data
    pe = pefile.PE(str(DRIVERS / name))
    (debug,) = pe.DIRECTORY_ENTRY_DEBUG
    assert b"NgPd" in debug.entry.PdbFileName
    assert {f.tag for f in reports[name].findings} == {"NgOk"}


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_indirect_shapes_claimed_by_the_samples(reports, arch):
    """The shapes dynamic.c, kmdf.c and videocb.c are built for are in the binaries."""
    dynamic = reports[f"dynamic_{arch}.sys"].findings
    path = DRIVERS / f"dynamic_{arch}.sys"
    (guarded,) = [f for f in dynamic if f.tag == "DyCf"]
    # Both CFG shapes call through a pointer in memory: x64 `call [rip+d]` (FF 15) is
    # the dispatch call itself; x86 calls the target register (FF D0+r) after the check.
    head = _file_bytes(path, guarded.api_site, 2)
    assert head == b"\xff\x15" if arch == "x64" else head[0] == 0xFF and head[1] >= 0xD0
    # The portable runtime's allocator: one site, one tag, six callers in a loop and two
    # more in DriverEntry; reported once, at the site.
    runtime = [f for f in dynamic if f.tag == "DyRt" and f.api == "ExAllocatePool2"]
    assert len(runtime) == 1 and runtime[0].evidence == "direct"
    kmdf = {f.api: f for f in reports[f"kmdf_{arch}.sys"].findings}
    # WdfMemoryCreate is WdfFunctions[192]: `call [reg + 192 * pointer size]`.
    size = 8 if arch == "x64" else 4
    memory = _file_bytes(DRIVERS / f"kmdf_{arch}.sys", kmdf["WdfMemoryCreate"].api_site, 7)
    assert (192 * size).to_bytes(4, "little") in memory


def test_wdf_and_struct_tables():
    """Facts from the public headers, kept as data (apis.py cites them)."""
    assert {i: a.name for i, a in WDF_APIS.items()} == {
        116: "WdfDriverCreate",
        192: "WdfMemoryCreate",
        198: "WdfLookasideListCreate",
    }
    assert WDF_APIS[116].field_offset == (28, 16)
    assert WDF_APIS[192].tag_index == 3 and WDF_APIS[198].tag_index == 5
    assert POOL_APIS["NdisAllocateNetBufferListPool"].field_offset == (8, 8)
    assert POOL_APIS["NdisAllocateNetBufferPool"].field_offset == (4, 4)
    assert POOL_APIS["NdisAllocateGenericObject"].tag_index == 1
    assert WDF_BIND.func_table_offset == (32, 24)


def test_apply_ops_in_execution_order():
    tag = int.from_bytes(b"PtFr", "little")
    assert apply_ops(tag, (("or", 0x80000000),)) == tag | 0x80000000
    # The sbb/and/add select idiom: 0 or all ones, masked, then offset.
    base = int.from_bytes(b"PtB1", "little")
    ops = (("and", 0x1000000), ("add", base))
    assert {apply_ops(0, ops), apply_ops(0xFFFFFFFF, ops)} == {
        base,
        int.from_bytes(b"PtB2", "little"),
    }
    assert apply_ops(1, (("shl", 4), ("sub", 0x11))) == 0xFFFFFFFF
    assert apply_ops(0x12345678, (("rol", 8),)) == 0x34567812


def test_build_script_reproduces_the_committed_binaries(tmp_path):
    """build.sh rebuilds byte-identical files (needs MinGW-w64; skipped without it)."""
    if not shutil.which("x86_64-w64-mingw32-gcc") or not shutil.which("i686-w64-mingw32-gcc"):
        pytest.skip("MinGW-w64 is not installed (see samples/drivers/build.sh)")
    copy = tmp_path / "drivers"
    shutil.copytree(DRIVERS, copy, ignore=shutil.ignore_patterns("*.sys", "*.exe", "*.dll"))
    subprocess.run(["bash", str(copy / "build.sh")], check=True, capture_output=True)
    built = sorted(
        p.relative_to(copy) for p in copy.rglob("*") if p.suffix in {".sys", ".exe", ".dll"}
    )
    committed = sorted(
        p.relative_to(DRIVERS) for p in DRIVERS.rglob("*") if p.suffix in {".sys", ".exe", ".dll"}
    )
    assert built == committed
    for relative in built:
        assert (copy / relative).read_bytes() == (DRIVERS / relative).read_bytes(), relative
