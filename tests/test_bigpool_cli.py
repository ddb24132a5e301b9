"""Big-pool records through the CLI: --source, csv's entry column, the table view."""

from __future__ import annotations

import csv
import io

from conftest import DUMPS, load_manifest
from test_cli import jsonl, pooltagscan

FIELDS = ("offset", "tag", "protected", "size", "pool", "state")


def test_source_bigpool_gives_the_planted_entries_in_every_format():
    family = "win7-x64"
    manifest = load_manifest(family)
    want = {e["entry"]: e for e in manifest["bigpool"] if not e["crosses"]}
    dump = str(DUMPS / f"{family}.raw")
    rows = jsonl(pooltagscan("scan", dump, "--source", "bigpool", "--format", "jsonl", "-q"))
    assert {r["entry"]: {k: r[k] for k in FIELDS} for r in rows} == {
        e: {k: w[k] for k in FIELDS} for e, w in want.items()
    }
    assert {r["source"] for r in rows} == {"bigpool"}
    table = pooltagscan("scan", dump, "--source", "bigpool", "-q").stdout.splitlines()
    at = table[0].index("Source")  # fixed columns; Owner and Description follow
    assert len(table) == len(want) + 1
    assert {line[at : at + 9].rstrip() for line in table[1:]} == {"bigpool"}
    text = pooltagscan("scan", dump, "--source", "bigpool", "--format", "csv", "-q").stdout
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert sorted(int(r["entry"]) for r in parsed) == sorted(want)
    page_csv = pooltagscan("scan", dump, "--source", "page", "--format", "csv", "-q").stdout
    page_rows = list(csv.DictReader(io.StringIO(page_csv)))
    assert len(page_rows) == len(manifest["allocations"])
    assert {r["entry"] for r in page_rows} == {""} and {r["source"] for r in page_rows} == {"page"}


def test_no_tables_scans_headers_only():
    dump = str(DUMPS / "win10-1809-x64.raw")
    rows = jsonl(pooltagscan("scan", dump, "--no-tables", "--format", "jsonl", "-q"))
    assert len(rows) == len(load_manifest("win10-1809-x64")["allocations"])
    assert {r["source"] for r in rows} == {"page"}
