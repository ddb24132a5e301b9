"""Shared test fixtures: where the samples and the optional real reference data live."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
DUMPS = SAMPLES / "dumps"


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (or POOLTAGSCAN_SHARED_DATA), if present."""
    env = os.environ.get("POOLTAGSCAN_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def shared_file(name: str) -> Path:
    """A reference file from shared/data, or skip the test when it is absent."""
    base = shared_data_dir()
    if base is None or not (base / name).is_file():
        pytest.skip(f"reference data {name} not available (../shared/data absent)")
    return base / name


def load_module(name: str, path: Path):
    """Import a script of the repository (samples/, benchmarks/) by path."""
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_manifest(family: str) -> dict:
    return json.loads((DUMPS / f"{family}.json").read_text())


def carved_truth(manifest: dict) -> list[dict]:
    """Every block a perfect scan reports: the planted headers, then the big-page table
    entries that lie whole in one page (one cut by a page boundary cannot be read)."""
    return manifest["allocations"] + [e for e in manifest["bigpool"] if not e["crosses"]]


@pytest.fixture(scope="session")
def make_samples():
    return load_module("make_samples", SAMPLES / "make_samples.py")
