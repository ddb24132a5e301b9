"""Hostile inputs and a careless user, end to end: every run must end, in bounded time and
memory, with the right exit code, at most one line on stderr, no traceback, and the
evidence exactly as it was.

Each test builds its inputs in a temporary folder (see `hostile.py`) and runs the real
command in a subprocess that reports its peak RSS (`resource`), so the limits asserted
here are what a user's machine would see.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import hostile
import pytest
from conftest import DUMPS, REPO, carved_truth, load_manifest

from pooltagscan import cli

SAMPLE = DUMPS / "win10-1809-x64.raw"
FORMATS = REPO / "samples" / "formats"
DRIVERS = REPO / "samples" / "drivers"

# The command, then its peak RSS in KiB (the larger of itself and its workers) to a file.
# Its own peak is VmHWM: Linux carries ru_maxrss across exec, so RUSAGE_SELF would report
# the forking test process's size.
RUNNER = (
    "import os, resource, sys\n"
    "from pooltagscan.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "own = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "peak = max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "open(os.environ['PTS_RSS_FILE'], 'w').write(str(peak))\n"
    "sys.exit(code)\n"
)


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, seconds: float, rss_mb: float):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.seconds = seconds
        self.rss_mb = rss_mb

    @property
    def lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(tmp_path: Path, *args: str, timeout: float = 120, stdout=None) -> Run:
    rss_file = tmp_path / f"rss-{time.monotonic_ns()}"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        cwd=tmp_path,
        capture_output=stdout is None,
        stdout=stdout,
        stderr=subprocess.PIPE if stdout is not None else None,
        text=True,
        timeout=timeout,
        env={**os.environ, "PTS_RSS_FILE": str(rss_file)},
        check=False,
    )
    seconds = time.monotonic() - start
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else 0.0
    return Run(proc, seconds, rss)


def hostile_run(
    tmp_path: Path,
    *args: str,
    inputs: list[Path],
    code: int = 2,
    seconds: float = 30,
    rss_mb: float = 300,
    needles: tuple[str, ...] = (),
    lines: int | None = 1,
) -> Run:
    """Run, then assert the outcome a hostile input must have (see the module docstring)."""
    before = {p: sha256(p) for p in inputs if p.is_file()}
    result = run(tmp_path, *args, timeout=max(120, seconds * 4))
    assert result.code == code, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    if lines is not None:
        assert len(result.lines) == lines, result.stderr
    text = "\n".join(result.lines)
    for needle in needles:
        assert needle in text, result.stderr
    assert result.seconds < seconds, f"{result.seconds:.1f} s: {args}"
    assert 0 < result.rss_mb < rss_mb, f"{result.rss_mb:.0f} MB: {args}"
    assert {p: sha256(p) for p in before} == before, "an input changed"
    return result


# ------------------------------------------------------------- evidence is never written


def evidence(tmp_path: Path) -> Path:
    dump = tmp_path / "ev.raw"
    dump.write_bytes(SAMPLE.read_bytes())
    return dump


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink"])
def test_output_that_is_the_dump_is_refused(tmp_path, how):
    dump = evidence(tmp_path)
    target = {"same": dump, "hardlink": tmp_path / "link.raw", "symlink": tmp_path / "sym.raw"}[how]
    if how == "hardlink":
        os.link(dump, target)
    elif how == "symlink":
        target.symlink_to(dump.name)
    for args in (
        ("scan", str(dump), "-o", str(target)),
        ("scan", str(dump), "--stats", "-o", str(target)),
        ("diff", str(dump), str(dump), "-o", str(target)),
        ("report", str(dump), "--html", str(target)),
        ("report", str(dump), "-o", str(target)),
    ):
        hostile_run(tmp_path, *args, inputs=[dump], needles=("same file", "nothing was written"))
    assert dump.stat().st_size == SAMPLE.stat().st_size
    if how == "symlink":
        assert target.is_symlink()


def test_stdout_redirected_onto_the_dump_is_refused(tmp_path):
    """`scan ev.raw >> ev.raw` must not append a table to the evidence."""
    dump = evidence(tmp_path)
    before = sha256(dump)
    with open(dump, "a") as appended:
        result = run(tmp_path, "scan", str(dump), "--stats", "-q", stdout=appended)
    assert result.code == 2 and sha256(dump) == before
    want = (
        f"pooltagscan: error: standard output: is the same file as the dump {dump}; refusing "
        "to write to it (evidence is never overwritten; nothing was written)"
    )
    assert result.lines == [want]


def test_output_that_is_a_driver_is_refused(tmp_path):
    driver = tmp_path / "d.sys"
    driver.write_bytes((DRIVERS / "pooltags_x64.sys").read_bytes())
    folder = tmp_path / "drivers"
    folder.mkdir()
    inner = folder / "inner.sys"
    inner.write_bytes(driver.read_bytes())
    hostile_run(tmp_path, "drivers", str(driver), "-o", str(driver), inputs=[driver])
    # Found only by walking a folder: refused before anything is written all the same.
    hostile_run(
        tmp_path, "drivers", str(folder), "-o", str(inner), inputs=[inner],
        needles=("same file as the driver",),
    )  # fmt: skip


def test_output_that_is_another_input_is_refused(tmp_path):
    """Tag lists (also from the environment), rule files and the VMware state file."""
    dump = evidence(tmp_path)
    tags = tmp_path / "tags.txt"
    tags.write_text("Abcd - x.sys - test\n")
    rules = tmp_path / "r.yar"
    rules.write_text("rule r { condition: false }\n")
    hostile_run(tmp_path, "scan", str(dump), "--pooltag", str(tags), "-o", str(tags),
                inputs=[dump, tags])  # fmt: skip
    hostile_run(tmp_path, "scan", str(dump), "--yara", str(tmp_path), "-o", str(rules),
                inputs=[dump, rules], needles=("input files",))  # fmt: skip
    env_run = subprocess.run(
        [sys.executable, "-m", "pooltagscan", "scan", str(dump), "-q", "-o", str(tags)],
        capture_output=True, text=True, env={**os.environ, "POOLTAGSCAN_POOLTAG": str(tags)},
        check=False,
    )  # fmt: skip
    assert env_run.returncode == 2 and "same file as the tag list" in env_run.stderr
    vmem = tmp_path / "vm.vmem"
    vmss = tmp_path / "vm.vmss"
    vmem.write_bytes((FORMATS / "vmware-x64.vmem").read_bytes())
    vmss.write_bytes((FORMATS / "vmware-x64.vmss").read_bytes())
    hostile_run(tmp_path, "scan", str(vmem), "-q", "-o", str(vmss), inputs=[vmem, vmss],
                needles=("input files",))  # fmt: skip


def test_failed_run_leaves_the_output_as_it_was(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("earlier results\n")
    hostile_run(tmp_path, "scan", str(tmp_path / "missing.raw"), "-o", str(keep), inputs=[keep],
                needles=("no such file",))  # fmt: skip
    assert keep.read_text() == "earlier results\n"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_output_is_complete_or_absent(tmp_path):
    """A finished output appears at once, with the mode a plain write would give."""
    dump = evidence(tmp_path)
    out = tmp_path / "out.jsonl"
    result = run(tmp_path, "scan", str(dump), "--format", "jsonl", "-q", "-o", str(out))
    assert result.code == 0
    manifest = load_manifest("win10-1809-x64")
    assert len(out.read_text().splitlines()) == len(carved_truth(manifest))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_full_disk_is_one_line(tmp_path):
    dump = evidence(tmp_path)
    hostile_run(tmp_path, "scan", str(dump), "-q", "-o", "/dev/full", inputs=[dump],
                needles=("/dev/full", "No space left on device"))  # fmt: skip
    with open("/dev/full", "w") as full:
        result = run(tmp_path, "scan", str(dump), "-q", stdout=full)
    assert result.code == 2
    assert result.lines == [
        "pooltagscan: error: standard output: cannot write: No space left on device"
    ]


# ------------------------------------------------------------- a dump that changes


def _changing_scan(monkeypatch, change):
    """`cli.main`, with `change(victim)` run as the first window of a dump named
    victim.raw is read."""
    from pooltagscan.inputs import base

    original = base.MemoryImage.file_range
    done = []

    def hooked(self, offset, length):
        if self.path.endswith("victim.raw") and not done:
            done.append(True)
            change(Path(self.path))
        return original(self, offset, length)

    monkeypatch.setattr(base.MemoryImage, "file_range", hooked)
    return cli.main


def test_dump_that_shrinks_is_reported_and_the_batch_goes_on(tmp_path, monkeypatch, capsys):
    victim = tmp_path / "victim.raw"
    victim.write_bytes(SAMPLE.read_bytes())
    main = _changing_scan(monkeypatch, lambda p: os.truncate(p, 64 * 1024))
    good = DUMPS / "win7-x64.raw"
    code = main(["scan", str(victim), str(good), "--stats", "--format", "json", "-q"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines() == [
        (
            f"pooltagscan: error: {victim}: the file shrank during the scan (it was "
            f"{SAMPLE.stat().st_size} bytes, it is now 65536); the scan stopped at offset 0x10000"
        )
    ]
    assert json.loads(out)["dump"] == str(good)  # the good dump was still scanned


def test_dump_replaced_mid_scan_is_reported(tmp_path, monkeypatch, capsys):
    victim = tmp_path / "victim.raw"
    victim.write_bytes(SAMPLE.read_bytes())
    other = tmp_path / "other.raw"
    other.write_bytes((DUMPS / "win7-x64.raw").read_bytes())
    main = _changing_scan(monkeypatch, lambda p: os.replace(other, p))
    code = main(["scan", str(victim), "--stats", "-q"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "was replaced by another file during the scan" in err and str(victim) in err


@pytest.mark.parametrize("guard", [True, False], ids=["guarded", "unguarded"])
def test_dump_that_shrinks_under_the_scan_threads_is_one_line(tmp_path, guard):
    """Three scan threads map (or, without the SIGBUS guard, read) their windows side by
    side. A thread that meets the cut says where the file ended; one line."""
    from test_signals import ONE_BLAS_THREAD, threads

    from pooltagscan.inputs import mapguard

    if guard and not mapguard.available():
        pytest.skip("the SIGBUS guard is not built here")
    dump = tmp_path / "big.raw"
    with open(dump, "wb") as f:
        f.truncate(64 << 30)  # sparse
    env = dict(ONE_BLAS_THREAD)
    if not guard:
        env["POOLTAGSCAN_NO_MAPGUARD"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pooltagscan", "scan", str(dump), "--stats", "--layout", "x64",
         "--jobs", "3", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while threads(proc.pid) <= 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert threads(proc.pid) > 3, "the scan threads never started"
    time.sleep(0.2)
    os.truncate(dump, 1 << 30)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    # A thread that reads past the cut says where it stopped: the first page it found
    # missing, which is 1 GiB or, for a thread already past it when the file was cut,
    # a page further on (a window's start, or inside a window it was reading).
    said = re.fullmatch(
        rf"pooltagscan: error: {re.escape(str(dump))}: the file shrank during the scan "
        rf"\(it was {64 << 30} bytes, it is now {1 << 30}\); the scan stopped at offset "
        r"(0x[0-9a-f]+)",
        err.strip(),
    )
    assert said is not None, err
    stopped = int(said.group(1), 16)
    assert stopped >= 1 << 30 and stopped % 4096 == 0, err
    assert out == ""


def test_bad_dump_in_a_batch_is_skipped(tmp_path):
    bad = tmp_path / "bad.dmp"
    bad.write_bytes(b"PAGEDU64" + bytes(100))
    result = hostile_run(
        tmp_path, "scan", str(bad), str(SAMPLE), "--stats", "--format", "json", "-q",
        inputs=[bad], needles=("bad.dmp", "truncated crash dump"),
    )  # fmt: skip
    doc = json.loads(result.stdout)
    assert doc["dump"] == str(SAMPLE)
    assert doc["totals"]["total_allocs"] == len(carved_truth(load_manifest("win10-1809-x64")))


# ------------------------------------------------------------- crash dumps


@pytest.mark.parametrize("count", [0x80000000, 0xFFFFFFFF, 44])
def test_crash_dump_with_absurd_run_count(tmp_path, count):
    dump = hostile.crash_too_many_runs(tmp_path, count)
    hostile_run(tmp_path, "scan", str(dump), "-q", inputs=[dump], seconds=10,
                needles=(f"lists {count} physical memory runs", "at most 43"))  # fmt: skip


def test_crash_dump_with_an_empty_run_past_the_end(tmp_path):
    dump = hostile.crash_empty_run_past_eof(tmp_path)
    sample = run(tmp_path, "scan", str(FORMATS / "crash-full-x64.dmp"), "--format", "jsonl")
    result = hostile_run(tmp_path, "scan", str(dump), "--format", "jsonl", inputs=[dump],
                         code=0, seconds=10, lines=None)  # fmt: skip
    assert "1 empty physical memory run(s) in the dump header are skipped" in result.stderr
    assert result.stdout == sample.stdout and sample.stdout


def test_crash_dump_run_beyond_the_address_space(tmp_path):
    dump = hostile.crash_huge_base(tmp_path)
    hostile_run(tmp_path, "scan", str(dump), "-q", inputs=[dump], seconds=10,
                needles=("beyond the 52-bit physical address space",))  # fmt: skip


def test_bitmap_dump_with_alternating_bits(tmp_path):
    dump = hostile.crash_alternating_bitmap(tmp_path)
    result = hostile_run(tmp_path, "scan", str(dump), "--stats", inputs=[dump], code=0,
                         seconds=10, rss_mb=200, lines=None)  # fmt: skip
    assert "the bitmap marks 5200000 pages, the file holds 2" in result.stderr


# ------------------------------------------------------------- kernel minidumps


def test_minidump_with_200000_blocks_is_linear(tmp_path):
    dump = hostile.minidump_many_blocks(tmp_path, 200_000)
    result = hostile_run(tmp_path, "scan", str(dump), "--stats", "--format", "json", "-q",
                         inputs=[dump], code=0, seconds=30, lines=0)  # fmt: skip
    tags = {row["tag"]: row for row in json.loads(result.stdout)["tags"]}
    assert tags["Many"]["nonpaged_allocs"] == 400_000


def test_yara_over_an_x64_minidump(tmp_path):
    dump = hostile.minidump_sample(tmp_path)
    result = hostile_run(tmp_path, "scan", str(dump), "--yara", str(REPO / "rules" / "memory"),
                         "--format", "jsonl", "-q", inputs=[dump], code=0, lines=0)  # fmt: skip
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert hits and all(h["address"] >= 2**63 for h in hits)
    placed = [h for h in hits if h["allocation"] is not None]
    assert placed and all(0 <= h["offset_in_allocation"] < h["allocation_size"] for h in placed)


# ------------------------------------------------------------- YARA, rules and tag lists


def test_yara_rule_matching_everywhere_is_bounded(tmp_path):
    dump = tmp_path / "zeros.raw"
    with open(dump, "wb") as f:
        f.truncate(64 << 20)
    rule = hostile.yara_cap_rule(tmp_path)
    result = hostile_run(tmp_path, "scan", str(dump), "--yara", str(rule), "--layout", "x64",
                         "--format", "jsonl", inputs=[rule], code=0, lines=None,
                         rss_mb=600, seconds=60)  # fmt: skip
    assert len(result.stdout.splitlines()) == 10_000
    warnings = [line for line in result.lines if "matched more than a million times" in line]
    assert len(warnings) == 1 and "2 window(s)" in warnings[0]
    assert any("more hit(s) not listed" in line for line in result.lines)


@pytest.mark.parametrize(
    "option", ["--yara", "--pooltag", "--rules", "dump", "POOLTAGSCAN_POOLTAG"]
)
def test_fifo_is_refused_not_waited_on(tmp_path, option):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    command = {
        "--yara": ["scan", str(SAMPLE), "--yara", str(fifo)],
        "--pooltag": ["scan", str(SAMPLE), "--pooltag", str(fifo)],
        "--rules": ["drivers", str(DRIVERS / "pooltags_x64.sys"), "--rules", str(fifo)],
        "dump": ["scan", str(fifo)],
        "POOLTAGSCAN_POOLTAG": ["scan", str(SAMPLE)],
    }[option]
    env = {**os.environ, "POOLTAGSCAN_POOLTAG": str(fifo)} if option.startswith("POOL") else None
    proc = subprocess.run(
        [sys.executable, "-m", "pooltagscan", *command, "-q"],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"pooltagscan: error: {fifo}: is not a regular file (a FIFO (named pipe))"
        + (" (listed in POOLTAGSCAN_POOLTAG)" if option.startswith("POOL") else "")
    ]


def test_huge_tag_list_is_refused_before_reading(tmp_path):
    tags = hostile.big_tag_list(tmp_path)
    hostile_run(tmp_path, "scan", str(SAMPLE), "--pooltag", str(tags), "-q", inputs=[tags],
                seconds=10, rss_mb=150, needles=("far too large for a pool tag list",))  # fmt: skip


def test_largest_accepted_tag_list_is_bounded(tmp_path):
    tags = hostile.big_tag_list(tmp_path, (8 << 20) - 100)
    result = hostile_run(tmp_path, "scan", str(SAMPLE), "--pooltag", str(tags), "--stats", "-q",
                         inputs=[tags], code=0, lines=0, seconds=30, rss_mb=250)  # fmt: skip
    assert result.stdout


# ------------------------------------------------------------- saved statistics


def test_hostile_saved_statistics_are_one_line(tmp_path):
    for name, path in hostile.saved_stats_variants(tmp_path).items():
        result = hostile_run(tmp_path, "diff", str(path), str(path), "-q", inputs=[path],
                             seconds=20)  # fmt: skip
        assert str(path) in result.lines[0], name


def test_saved_statistics_with_a_bom_are_read(tmp_path):
    path = hostile.saved_stats_with_bom(tmp_path)
    result = hostile_run(tmp_path, "diff", str(path), str(path), "--format", "json", "-q",
                         inputs=[path], code=0, lines=0)  # fmt: skip
    rows = json.loads(result.stdout)["tags"]
    assert [(r["tag"], r["old_allocs"], r["new_bytes"]) for r in rows] == [("Proc", 2, 200)]


# ------------------------------------------------------------- drivers


def test_random_code_driver_is_bounded(tmp_path):
    driver = hostile.driver_random_code(tmp_path, 10)
    hostile_run(tmp_path, "drivers", str(driver), "-q", inputs=[driver], code=0, lines=0,
                seconds=60, rss_mb=300)  # fmt: skip


def test_aliased_sections_are_disassembled_once(tmp_path):
    driver = hostile.driver_aliased_sections(tmp_path)
    hostile_run(tmp_path, "drivers", str(driver), "-q", inputs=[driver], code=0, lines=0,
                seconds=10, rss_mb=200)  # fmt: skip


def test_wrapper_fan_out_is_bounded_and_complete(tmp_path):
    driver, tags = hostile.driver_fan_out(tmp_path)
    assert driver.stat().st_size < 32 * 1024
    result = hostile_run(tmp_path, "drivers", str(driver), "--format", "json", "-q",
                         inputs=[driver], code=0, lines=0, seconds=20)  # fmt: skip
    found = {r["tag"] for d in json.loads(result.stdout)["drivers"] for r in d["findings"]}
    assert found == tags


def test_zeros_named_sys_are_refused_after_one_page(tmp_path):
    driver = hostile.driver_zeros(tmp_path)
    hostile_run(tmp_path, "drivers", str(driver), "-q", inputs=[], seconds=5, rss_mb=120,
                needles=("zeros.sys", "not a PE image (no MZ header)"))  # fmt: skip


def test_pe_errors_are_plain_words(tmp_path):
    driver = hostile.driver_section_overflow(tmp_path)
    hostile_run(tmp_path, "drivers", str(driver), "-q", inputs=[driver],
                needles=("runs past the 4 GiB an image can span",))  # fmt: skip


# ------------------------------------------------------------- pipes


def test_closed_pipe_with_workers_ends_promptly(tmp_path):
    """`scan | head -1` with two workers, 15 times: exit 0 within seconds every time."""
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:  # 160 MiB: over the size from which workers are used
        f.writelines(SAMPLE.read_bytes() for _ in range(80))
    for _ in range(15):
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pooltagscan", "scan", str(big), "--format", "jsonl",
             "--jobs", "2", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=20) == 0, err
        assert first.startswith(b"{") and err == ""
        assert time.monotonic() - start < 15
