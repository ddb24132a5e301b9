"""The sweep over capstone's records as numpy arrays (`drivers/bulk.py`) indexes exactly
what the per-instruction Python sweep does, on every sample and real driver, and the
analysis gives the same findings either way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pooltagscan.drivers.attribution import AnalysisContext, analyze_file
from pooltagscan.drivers.disasm import CodeIndex
from pooltagscan.drivers.yarascan import RuleSet

REPO = Path(__file__).resolve().parent.parent
REAL = (
    Path(os.environ.get("POOLTAGSCAN_TEST_CACHE", Path.home() / ".cache" / "pooltagscan-tests"))
    / "real-drivers"
    / "drivers"
)
FILES = sorted((REPO / "samples" / "drivers").rglob("*.sys")) + sorted(REAL.glob("*.sys"))


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


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
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
