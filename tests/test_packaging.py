"""A wheel carries what the installed package needs at run time: the YARA rules.

The rules live in the repository's top-level `rules/`, outside the package; setup.py
copies them into the wheel as `pooltagscan/_rules/`. This builds a real wheel (the
README's quick start is `pip install .`), checks the rule files are in it byte for byte,
and runs the driver analysis from the unpacked wheel, away from the checkout, to show
the code that loads the rules finds them there: the low-confidence YARA fallback works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "rules"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        # pip fetches the build backend (setuptools) into an isolated environment.
        pytest.skip(f"pip wheel failed (offline?): {result.stderr.strip()[-300:]}")
    (built,) = out.glob("pooltagscan-*.whl")
    return built


def test_wheel_holds_every_rule_file(wheel):
    with zipfile.ZipFile(wheel) as bundle:
        packaged = {
            name.removeprefix("pooltagscan/_rules/"): bundle.read(name)
            for name in bundle.namelist()
            if name.startswith("pooltagscan/_rules/")
        }
    expected = {str(p.relative_to(RULES)): p.read_bytes() for p in RULES.rglob("*.yar")}
    assert sorted(expected) == ["drivers/pool_imports.yar", "drivers/tag_immediates.yar",
                                "memory/examples.yar"]  # fmt: skip
    assert packaged == expected


def test_installed_wheel_finds_its_rules(wheel, tmp_path):
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as bundle:
        bundle.extractall(unpacked)
    sample = REPO / "samples" / "drivers" / "pooltags_x64.sys"
    # -I: no current directory or PYTHONPATH on sys.path; the unpacked wheel goes first,
    # so `pooltagscan` is the installed copy, not this checkout.
    script = f"""
import json, sys
sys.path.insert(0, {str(unpacked)!r})
import pooltagscan
from pooltagscan.drivers.attribution import AnalysisContext, analyze_file
from pooltagscan.drivers.yarascan import RuleSet, builtin_rules_dir
rules = RuleSet()
report = analyze_file({str(sample)!r}, AnalysisContext(rules))
print(json.dumps({{
    "package": pooltagscan.__file__,
    "rules_dir": str(builtin_rules_dir()),
    "notes": rules.notes,
    "yara": sorted(f.tag for f in report.findings if f.evidence == "yara"),
}}))
"""
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["package"] == str(unpacked / "pooltagscan" / "__init__.py")
    assert found["rules_dir"] == str(unpacked / "pooltagscan" / "_rules" / "drivers")
    assert found["notes"] == []  # no "rules are missing" warning
    assert found["yara"] == ["PtYf"]  # the fallback's finding (samples/drivers/README.md)
