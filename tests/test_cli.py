"""The `pooltagscan` command end to end, through a subprocess as a user runs it."""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import DUMPS, REPO, load_manifest

from pooltagscan import cli, files
from pooltagscan.progress import ProgressBar

CONTRACT_KEYS = [
    "offset",
    "tag",
    "protected",
    "size",
    "pool",
    "state",
    "layout",
    "confidence",
    "source",
    "owner",
    "description",
]
SAMPLE = DUMPS / "win10-1809-x64.raw"


def stderr_lines(stderr: str, *paths: object) -> list[str]:
    """stderr's lines with times as `T s` and each dump's name whole again: the summary
    line elides a long path's middle folders to fit 100 columns (render.summary.fit_path);
    the elided form is checked to be exactly that before it is put back."""
    from pooltagscan.render.summary import fit_path

    lines = []
    for line in stderr.splitlines():
        for path in map(str, paths):
            shown = fit_path(path, line.split(": ", 2)[-1])
            if shown != path and line.startswith(f"pooltagscan: {shown}: "):
                line = f"pooltagscan: {path}: " + line[len(f"pooltagscan: {shown}: ") :]
        lines.append(re.sub(r"in \d+\.\d\d s", "in T s", line))
    return lines


def pooltagscan(*args: str, env: dict | None = None, check_exit: int | None = 0):
    proc = subprocess.run(
        [sys.executable, "-m", "pooltagscan", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    if check_exit is not None:
        assert proc.returncode == check_exit, proc.stderr
    return proc


def jsonl(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_jsonl_follows_contract_and_manifest():
    manifest = load_manifest("win10-1809-x64")
    proc = pooltagscan("scan", str(SAMPLE), "--format", "jsonl", "--source", "page")
    rows = jsonl(proc)
    assert all(list(r) == CONTRACT_KEYS for r in rows)
    truth = {a["offset"]: a for a in manifest["allocations"]}
    assert [r["offset"] for r in rows] == sorted(truth)
    for r in rows:
        want = truth[r["offset"]]
        assert (r["tag"], r["protected"], r["size"], r["pool"], r["state"]) == (
            want["tag"],
            want["protected"],
            want["size"],
            want["pool"],
            want["state"],
        )
        assert r["layout"] == "x64"
    # One summary line: 5,533 page records of 820 KiB, over the dump (2 MiB plus the
    # 94 pages of loaded drivers gen_images appends), x64 on 205 pages.
    line = "\n".join(stderr_lines(proc.stderr, SAMPLE)) + "\n"
    assert (
        line
        == f"pooltagscan: {SAMPLE}: 5,533 records, 820 KiB in T s over 2.4 MiB; x64 (x64 205)\n"
    )
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal


def test_stats_json_counts_match_manifest():
    manifest = load_manifest("win7-x64")
    doc = json.loads(
        pooltagscan("scan", str(DUMPS / "win7-x64.raw"), "--stats", "--format", "json").stdout
    )
    assert doc["kind"] == "pooltagscan-stats" and doc["layout"] == "x64"
    expected: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for a in manifest["allocations"]:
        c = expected[a["tag"]]
        if a["state"] == "free":
            c["free_allocs"] += 1
            c["free_bytes"] += a["size"]
        else:
            c[f"{a['pool']}_allocs"] += 1
            c[f"{a['pool']}_bytes"] += a["size"]
        c["total_allocs"] += 1
        c["total_bytes"] += a["size"]
    for e in manifest["bigpool"]:
        if e["crosses"]:
            continue  # an entry cut by a page boundary is not reported
        c = expected[e["tag"]]
        if e["state"] == "free":
            c["free_allocs"] += 1
            c["free_bytes"] += e["size"]
        else:
            c[f"{e['pool']}_allocs"] += 1
            c[f"{e['pool']}_bytes"] += e["size"]
        c["total_allocs"] += 1
        c["total_bytes"] += e["size"]
    assert {row["tag"] for row in doc["tags"]} == set(expected)
    for row in doc["tags"]:
        for key in (
            "nonpaged_allocs",
            "nonpaged_bytes",
            "paged_allocs",
            "paged_bytes",
            "free_allocs",
            "free_bytes",
            "total_allocs",
            "total_bytes",
        ):
            assert row[key] == expected[row["tag"]][key], (row["tag"], key)
    assert doc["totals"]["total_allocs"] == sum(c["total_allocs"] for c in expected.values())
    by_tag = {row["tag"]: row for row in doc["tags"]}
    assert by_tag["Proc"]["owner"] == "nt!ps" and by_tag["Proc"]["description"]
    assert by_tag["WdRv"]["owner"] == ""  # a third-party tag nobody knows
    # default order: bytes, largest first
    totals = [row["total_bytes"] for row in doc["tags"]]
    assert totals == sorted(totals, reverse=True)


def test_stats_table_sorted_by_tag():
    from pooltagscan.render.stats import TABLE_LEGEND, TRACKER_LEGEND

    out = pooltagscan("scan", str(SAMPLE), "--stats", "--sort", "tag").stdout.splitlines()
    legend = [*TABLE_LEGEND, *TRACKER_LEGEND]  # the sample holds a tracker table
    assert out[: len(legend) + 1] == [*legend, ""]  # live defined above the table
    out = out[len(legend) + 1 :]
    assert out[0].split()[:3] == ["Tag", "NP", "Allocs"]
    tags = [line[:10].rstrip() for line in out[2:-1]]
    assert tags == sorted(tags)
    assert out[-1].startswith("TOTAL")


@pytest.mark.parametrize(
    ("patterns", "predicate"),
    [
        (["Pro?"], lambda t: t == "Proc"),
        (["Irp"], lambda t: t == "Irp "),
        (["Mm*", "W*"], lambda t: t.startswith(("Mm", "W"))),
        (["*\\x00"], lambda t: t.endswith("\\x00")),
        (["proc"], lambda t: False),  # case-sensitive like !poolfind
    ],
)
def test_tag_patterns_like_poolfind(patterns, predicate):
    manifest = load_manifest("win10-1809-x64")
    args = [arg for p in patterns for arg in ("--tag", p)]
    rows = jsonl(pooltagscan("scan", str(SAMPLE), "--format", "jsonl", *args))
    expected = sorted(a["offset"] for a in manifest["allocations"] if predicate(a["tag"]))
    assert [r["offset"] for r in rows if r["source"] == "page"] == expected
    big = sorted(
        e["entry"] for e in manifest["bigpool"] if predicate(e["tag"]) and not e["crosses"]
    )
    assert sorted(r["entry"] for r in rows if r["source"] == "bigpool") == big


def test_pool_state_and_confidence_filters():
    manifest = load_manifest("win7-x86")
    rows = jsonl(
        pooltagscan(
            "scan",
            str(DUMPS / "win7-x86.raw"),
            "--format",
            "jsonl",
            "--pool",
            "paged",
            "--state",
            "free",
            "--source",
            "page",
        )
    )
    expected = [
        a["offset"]
        for a in manifest["allocations"]
        if a["pool"] == "paged" and a["state"] == "free"
    ]
    assert [r["offset"] for r in rows] == expected and expected
    seg = DUMPS / "win11-segheap-x64.raw"
    high = jsonl(pooltagscan("scan", str(seg), "--format", "jsonl", "--min-confidence", "high"))
    everything = jsonl(pooltagscan("scan", str(seg), "--format", "jsonl"))
    assert {r["confidence"] for r in high} == {"high"}
    assert len(high) == sum(r["confidence"] == "high" for r in everything) < len(everything)


def test_table_json_and_csv_views_agree():
    rows = jsonl(pooltagscan("scan", str(SAMPLE), "--format", "jsonl", "--tag", "Thre"))
    table = pooltagscan("scan", str(SAMPLE), "--tag", "Thre").stdout.splitlines()
    assert table[0].split() == [
        "Address",
        "Tag",
        "P",
        "Size",
        "Pool",
        "State",
        "Layout",
        "Conf",
        "Source",
        "Owner",
        "Description",
    ]
    assert [int(line.split()[0], 16) for line in table[1:]] == [r["offset"] for r in rows]
    # Owner and description from the tag database, the description cut to 28 columns.
    assert table[1].endswith("  page     nt!ps         thread object (ETHREAD), on…")
    assert {(r["owner"], r["description"][:27]) for r in rows} == {
        ("nt!ps", "thread object (ETHREAD), on")
    }
    doc = json.loads(pooltagscan("scan", str(SAMPLE), "--format", "json", "--tag", "Thre").stdout)
    assert doc["layout"] == "x64" and doc["pooltype_encoding"] == "vista"
    assert doc["allocations"] == rows and doc["count"] == len(rows)
    parsed = list(
        csv.DictReader(
            io.StringIO(pooltagscan("scan", str(SAMPLE), "--format", "csv", "--tag", "Thre").stdout)
        )
    )
    assert [int(r["offset"]) for r in parsed] == [r["offset"] for r in rows]
    assert list(parsed[0]) == [*CONTRACT_KEYS[:-2], "entry", "owner", "description"]


def test_forced_layout_is_reported():
    proc = pooltagscan("scan", str(DUMPS / "xp-x86.raw"), "--layout", "x86", "--stats", "-v")
    assert "layout chosen by --layout: x86 (xp PoolType encoding" in proc.stderr
    quiet = pooltagscan("scan", str(DUMPS / "xp-x86.raw"), "--layout", "x86", "--stats")
    assert "layout chosen" not in quiet.stderr and " x86 forced (x86 " in quiet.stderr


def test_sort_is_refused_for_records_and_orders_stats():
    """--sort orders --stats and --tracker rows; records come in scan order, so asking to
    sort them is a usage error rather than an option silently ignored."""
    for view in ([], ["--format", "jsonl"], ["--format", "csv"]):
        proc = pooltagscan("scan", str(SAMPLE), "--sort", "tag", *view, check_exit=2)
        assert proc.stdout == ""
        assert proc.stderr == (
            "pooltagscan: error: --sort orders --stats and --tracker rows; "
            "records come in scan order\n"
        )
    stats = pooltagscan("scan", str(SAMPLE), "--stats", "--sort", "tag", "--format", "csv")
    tags = [row["tag"] for row in csv.DictReader(io.StringIO(stats.stdout))]
    assert tags == sorted(tags) and len(tags) > 20
    tracker = pooltagscan("scan", str(SAMPLE), "--tracker", "--sort", "tag", "--format", "csv")
    tags = [row["tag"] for row in csv.DictReader(io.StringIO(tracker.stdout))]
    assert tags == sorted(tags) and len(tags) > 20


def test_records_carry_owner_and_description_of_a_pooltag_file(tmp_path):
    tags = tmp_path / "localtag.txt"
    tags.write_text('WdRv - wdrv.sys - our "sample", third-party driver\n')
    args = ("scan", str(SAMPLE), "--pooltag", str(tags), "--tag", "WdRv")
    rows = jsonl(pooltagscan(*args, "--format", "jsonl"))
    assert rows and {(r["owner"], r["description"]) for r in rows} == {
        ("wdrv.sys", 'our "sample", third-party driver')
    }
    parsed = list(csv.DictReader(io.StringIO(pooltagscan(*args, "--format", "csv").stdout)))
    assert [(r["owner"], r["description"]) for r in parsed] == [
        (r["owner"], r["description"]) for r in rows
    ]
    unknown = jsonl(pooltagscan("scan", str(SAMPLE), "--format", "jsonl", "--tag", "WdRv"))
    assert {(r["owner"], r["description"]) for r in unknown} == {("", "")}


def test_user_pooltag_file_and_environment(tmp_path):
    tags = tmp_path / "localtag.txt"
    tags.write_text("WdRv - wdrv.sys - our sample third-party driver\n")
    doc = json.loads(
        pooltagscan(
            "scan", str(SAMPLE), "--stats", "--format", "json", "--pooltag", str(tags)
        ).stdout
    )
    row = next(r for r in doc["tags"] if r["tag"] == "WdRv")
    assert (row["owner"], row["description"]) == ("wdrv.sys", "our sample third-party driver")
    doc = json.loads(
        pooltagscan(
            "scan",
            str(SAMPLE),
            "--stats",
            "--format",
            "json",
            env={"POOLTAGSCAN_POOLTAG": str(tags)},
        ).stdout
    )
    assert next(r for r in doc["tags"] if r["tag"] == "WdRv")["owner"] == "wdrv.sys"


def test_output_file(tmp_path):
    target = tmp_path / "out.jsonl"
    proc = pooltagscan("scan", str(SAMPLE), "--format", "jsonl", "-o", str(target))
    assert proc.stdout == ""
    manifest = load_manifest("win10-1809-x64")
    whole_big = [e for e in manifest["bigpool"] if not e["crosses"]]
    assert len(target.read_text().splitlines()) == len(manifest["allocations"]) + len(whole_big)


def one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_inputs(tmp_path):
    one_line_error(
        pooltagscan("scan", str(tmp_path / "nope.raw"), check_exit=None), "nope.raw", "no such file"
    )
    one_line_error(pooltagscan("scan", str(tmp_path), check_exit=None), "is a directory")
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    one_line_error(pooltagscan("scan", str(empty), check_exit=None), "empty.raw", "empty file")
    short = tmp_path / "short.raw"
    short.write_bytes(b"\1" * 100)
    one_line_error(
        pooltagscan("scan", str(short), check_exit=None),
        "short.raw",
        "shorter than one 4096-byte page",
    )
    bad_db = tmp_path / "bad.txt"
    bad_db.write_bytes(b"\0\1\2garbage")
    one_line_error(
        pooltagscan("scan", str(SAMPLE), "--pooltag", str(bad_db), check_exit=None), "bad.txt"
    )
    one_line_error(pooltagscan("scan", str(SAMPLE), "--tag", "TOOLONG", check_exit=None), "--tag")


def test_batch_skips_bad_file_and_continues(tmp_path):
    proc = pooltagscan(
        "scan",
        str(tmp_path / "missing.raw"),
        str(SAMPLE),
        "--format",
        "jsonl",
        "--source",
        "page",
        check_exit=2,
    )
    rows = jsonl(proc)
    assert len(rows) == len(load_manifest("win10-1809-x64")["allocations"])
    assert {r["dump"] for r in rows} == {str(SAMPLE)}
    assert "missing.raw: no such file" in proc.stderr


def test_partial_last_page_is_scanned(tmp_path):
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.raw"
    cut.write_bytes(data[: len(data) - 4096 + 1000])  # last page incomplete
    proc = pooltagscan("scan", str(cut), "--format", "jsonl", "--source", "page")
    assert "the last 1000 bytes are not scanned" in proc.stderr
    manifest = load_manifest("win10-1809-x64")
    limit = len(data) - 4096
    assert [r["offset"] for r in jsonl(proc)] == [
        a["offset"] for a in manifest["allocations"] if a["offset"] < limit
    ]


def test_unreadable_file(tmp_path, monkeypatch, capsys):
    """Root can read anything, so the permission failure is injected at the open call."""
    target = tmp_path / "locked.raw"
    target.write_bytes(b"\0" * 8192)

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files, "_open_readonly", denied)
    assert cli.main(["scan", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pooltagscan: error: {target}: cannot read: Permission denied"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_for_real(tmp_path):
    target = tmp_path / "locked.raw"
    target.write_bytes(b"\0" * 8192)
    target.chmod(0)
    one_line_error(pooltagscan("scan", str(target), check_exit=None), "locked.raw", "cannot")


def test_dump_is_never_written(tmp_path):
    dump = tmp_path / "evidence.raw"
    dump.write_bytes(SAMPLE.read_bytes())
    dump.chmod(0o444)
    before = (hashlib.sha256(dump.read_bytes()).hexdigest(), dump.stat().st_mtime_ns)
    for fmt in ("table", "jsonl"):
        pooltagscan("scan", str(dump), "--format", fmt)
    pooltagscan("scan", str(dump), "--stats")
    assert (hashlib.sha256(dump.read_bytes()).hexdigest(), dump.stat().st_mtime_ns) == before


def test_closed_pipe_is_not_an_error():
    proc = subprocess.Popen(
        [sys.executable, "-m", "pooltagscan", "scan", str(SAMPLE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0
    assert "Traceback" not in err and "Broken" not in err


def test_progress_bar_only_when_enabled():
    stream = io.StringIO()
    bar = ProgressBar("scanning x", stream=stream, delay=0.0, enabled=True)
    bar(50, 100)
    bar(100, 100)
    bar.close()
    text = stream.getvalue()
    assert "\rscanning x [" in text and "100%" in text and text.endswith("\n")
    quiet = io.StringIO()
    bar = ProgressBar("scanning x", stream=quiet, delay=0.0, enabled=False)
    bar(50, 100)
    bar.close()
    assert quiet.getvalue() == ""


def test_tags_is_an_alias_of_tag():
    """The Volatility plugin says --tags: the same word works here, and mixes with --tag."""
    mixed = pooltagscan("scan", str(SAMPLE), "--tags", "Pro?", "--tag", "Thr*", "--format",
                        "jsonl", "-q").stdout  # fmt: skip
    plain = pooltagscan("scan", str(SAMPLE), "--tag", "Pro?", "--tag", "Thr*", "--format",
                        "jsonl", "-q").stdout  # fmt: skip
    assert mixed == plain and {json.loads(line)["tag"] for line in plain.splitlines()} == {
        "Proc",
        "Thre",
    }
