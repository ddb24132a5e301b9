"""The sweep over capstone's records as numpy arrays (`drivers/bulk.py`) indexes exactly
what the per-instruction Python sweep does, on every sample and real driver, and the
analysis gives the same findings either way; and the candidate path (`candidates.py`:
only the blocks the analysis needs are decoded) reports exactly what the full sweep
does, on the same files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pooltagscan.drivers import candidates
from pooltagscan.drivers.attribution import AnalysisContext, analyze_file
from pooltagscan.drivers.disasm import CodeIndex
from pooltagscan.drivers.yarascan import RuleSet

REPO = Path(__file__).resolve().parent.parent
REAL = (
    Path(os.environ.get("POOLTAGSCAN_TEST_CACHE", Path.home() / ".cache" / "pooltagscan-tests"))
    / "real-drivers"
    / "drivers"
)
MORE = REAL.parent / "more"  # tests/test_drivers_real.py's MORE_DRIVERS
FILES = (
    sorted((REPO / "samples" / "drivers").rglob("*.sys"))
    + sorted(REAL.glob("*.sys"))
    + sorted(MORE.rglob("*.sys"))
)


def _index_facts(index: CodeIndex) -> tuple:
    return (
        index.starts.tobytes(),
        bytes(index._info),
        index.api_sites,
        list(index.register_calls),
        index.const_stores,
        index.loads_slot,
        index.truncated_at,
        index.function_starts,
        [list(e._targets) + list(e._sources) for e in (index.jump_sources, index.call_sources)],
    )


def _ids(path: Path) -> str:
    return path.name if MORE not in path.parents else f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", FILES, ids=_ids)
def test_bulk_sweep_matches_the_python_twin(path, monkeypatch):
    built: dict[bool, tuple] = {}
    reports = {}
    original = CodeIndex.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built[self.bulk] = _index_facts(self)

    monkeypatch.setattr(CodeIndex, "__init__", record)
    for bulk in (True, False):
        monkeypatch.setattr(CodeIndex, "bulk", bulk)
        reports[bulk] = analyze_file(str(path), AnalysisContext(RuleSet()))
    assert reports[True].findings == reports[False].findings
    assert reports[True].unresolved == reports[False].unresolved
    if built:  # files importing no pool API are never disassembled
        assert built[True] == built[False]
        assert len(built[True][0]) > 0


def _outcome(report) -> tuple:
    return (
        report.findings,
        report.unresolved,
        report.call_sites,
        report.untagged_frees,
        report.pool_apis,
        report.indirect_apis,
        report.notes,
    )


@pytest.mark.parametrize("path", FILES, ids=_ids)
def test_candidate_path_matches_the_full_sweep(path, monkeypatch):
    passes: list[int] = []
    original = candidates.PartialIndex.__init__

    def record(self, plan, blocks):
        original(self, plan, blocks)
        passes.append(len(self.missing))

    monkeypatch.setattr(candidates.PartialIndex, "__init__", record)
    context = AnalysisContext(RuleSet())
    partial = analyze_file(str(path), context)
    monkeypatch.setattr(candidates, "ENABLED", False)
    full = analyze_file(str(path), context)
    assert _outcome(partial) == _outcome(full)
    if passes:  # the last partial pass, when it was kept, needed nothing more
        assert passes[-1] == 0 or len(passes) == candidates._MAX_PASSES


def test_the_candidate_path_is_taken_on_x64_drivers_with_pdata(monkeypatch):
    """dynamic_x64.sys: x64 with .pdata (8 blocks), so it is analysed on a partial
    index of the 2 blocks that name its pool and resolver imports, which settles in one
    pass (the same findings as the full sweep: checked above)."""
    kept = []
    original = candidates.PartialIndex.__init__

    def record(self, plan, blocks):
        original(self, plan, blocks)
        kept.append((len(set(blocks)), len(plan)))

    monkeypatch.setattr(candidates.PartialIndex, "__init__", record)
    analyze_file(str(REPO / "samples" / "drivers" / "dynamic_x64.sys"), AnalysisContext(RuleSet()))
    assert kept == [(2, 8)]


def test_the_environment_switch_selects_the_full_sweep(monkeypatch):
    monkeypatch.setenv("POOLTAGSCAN_DRIVERS_SWEEP", "full")
    made = []
    original = candidates.PartialIndex.__init__
    monkeypatch.setattr(
        candidates.PartialIndex,
        "__init__",
        lambda self, *args: made.append(1) or original(self, *args),
    )
    analyze_file(str(REPO / "samples" / "drivers" / "dynamic_x64.sys"), AnalysisContext(RuleSet()))
    assert made == []
