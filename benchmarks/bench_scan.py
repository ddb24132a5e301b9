"""Scan throughput: pooltagscan vs Volatility 3's PoolHeaderScanner vs a plain read.

Builds a sample dump (default 1 GiB, Windows 10 1809 x64 pages from the sample generator)
once under benchmarks/out/, then measures in one run, on the same file:
  - a sequential read of the file (the I/O ceiling),
  - our full tag-agnostic scan in one thread and with --jobs threads (every record built
    and let go, window by window), against a plain numpy pass over the file's mmap run
    in turn with it (ratio_scan_vs_numpy_pass), and once keeping every record,
  - the --stats view (scan threads count per-tag counters) with one job and with --jobs,
    against a numpy pass by one thread and by --jobs threads (the memory's ceiling),
  - Volatility 3's PoolHeaderScanner (its 15 built-in tags, FileLayer, poolheader-x64),
  - the peak RSS of the `pooltagscan scan --stats` command on the file.
All figures are warm page cache, filled as a read from disk fills it (see
warm_page_cache). Usage:
  python benchmarks/bench_scan.py [--size-mib 1024] [--family win10-1809-x64] [--rss-gib 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "samples"))
sys.path.insert(0, str(HERE))

import make_samples

from pooltagscan.inputs import open_image
from pooltagscan.parallel import default_jobs
from pooltagscan.records import SOURCE_PAGE, concat
from pooltagscan.scan import prepare, run
from pooltagscan.scanner.engine import scan_image


def ensure_dump(family: str, size: int) -> Path:
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    path = out / f"bench-{family}-{size >> 20}MiB.raw"
    if not path.exists() or path.stat().st_size != size:
        t = time.perf_counter()
        info = make_samples.write_bench_dump(path, family, size)
        print(
            f"built {path.name}: {info['allocations']} planted allocations "
            f"in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
        )
    return path


def numpy_pass(path: Path, threads: int = 1) -> float:
    """MB/s of one plain numpy pass (an OR-reduction) over the file's mmap, window by
    window: the limit a scan over the same mapping is held against. With `threads`, the
    windows are shared out among that many threads (numpy's reduction releases the GIL):
    what the machine's memory gives several cores streaming at once."""
    import mmap
    import threading

    size = path.stat().st_size
    starts = list(range(0, size - size % 8, 32 << 20))
    start = time.perf_counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:

        def share(k: int) -> None:
            for at in starts[k::threads]:
                view = np.frombuffer(m, np.uint64, count=min(32 << 20, size - at) // 8, offset=at)
                np.bitwise_or.reduce(view)
                del view

        others = [threading.Thread(target=share, args=(k,)) for k in range(1, threads)]
        for thread in others:
            thread.start()
        share(0)
        for thread in others:
            thread.join()
    return size / 1e6 / (time.perf_counter() - start)


def warm_page_cache(path: Path) -> None:
    """Put the whole file in the page cache the way reading a dump from disk does.

    The file is written back and dropped from the cache, then read in order: the
    kernel's readahead fills the cache with large folios. A file just written by the
    generator can sit in 4 KiB pages instead, which cost 5-10x more to map (30-80 ms a
    GiB against 4-7 ms, measured for MAP_POPULATE and for a numpy pass's page faults
    alike), and which pages it gets depends on the machine's history, not on the scan.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    sequential_read(path)


def sequential_read(path: Path) -> float:
    buf = bytearray(16 << 20)
    size = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            size += n
    return size / 1e6 / (time.perf_counter() - start)


class Truth:
    """Planted header offsets of a bench dump: one unit's manifest, repeated."""

    def __init__(self, family: str, size: int):
        unit_pages = make_samples.BENCH_UNIT_PAGES
        _, manifest = make_samples.build_family(family, pages=unit_pages)
        self.unit = unit_pages * 4096
        self.offsets = np.array(sorted(a["offset"] for a in manifest["allocations"]), np.int64)
        self.tags = {a["offset"]: a["tag"] for a in manifest["allocations"]}
        full, rest = divmod(size, self.unit)
        self.total = full * self.offsets.size + int(np.count_nonzero(self.offsets < rest))

    def hits(self, offsets: np.ndarray) -> int:
        """How many of `offsets` are planted headers."""
        inner = np.asarray(offsets, np.int64) % self.unit
        return int(np.count_nonzero(np.isin(inner, self.offsets)))


def our_scan(path: Path, jobs: int, tables: bool = True) -> float:
    """MB/s of a full, tag-agnostic scan (detection included) whose record batches are
    taken window by window and let go, as every view takes them: each window's records
    are all built and shipped, none is kept past its window. `tables` also searches for
    the big-page and tracker tables."""
    start = time.perf_counter()
    prepared = prepare(open_image(path), tables=tables)
    # The engine itself, with no view's work beside it.
    for batch in scan_image(prepared.image, prepared.config, jobs, tracker=lambda rows: None):
        del batch
    return path.stat().st_size / 1e6 / (time.perf_counter() - start)


def our_records(path: Path, jobs: int) -> tuple[float, np.ndarray, str, int]:
    """(MB/s, offsets of the header records, family, big-pool records) of a full scan
    that keeps every record (100 MB a GiB): the recall and precision figures, and the
    throughput when a caller holds the whole dump's records."""
    start = time.perf_counter()
    prepared = prepare(open_image(path))
    batches = list(run(prepared, jobs=jobs, tracker=lambda rows: None))
    seconds = time.perf_counter() - start
    records = concat(batches)
    page = records["source"] == SOURCE_PAGE
    return (
        path.stat().st_size / 1e6 / seconds,
        records["offset"][page],
        prepared.config.family.value,
        int(np.count_nonzero(~page)),
    )


def stats_seconds(path: Path, jobs: int) -> float:
    """Seconds of the `--stats` view in this process (detection, scan, per-tag counters
    counted by the scan threads), without the interpreter's start-up."""
    from pooltagscan.summary import ScanSummary, collect_stats

    start = time.perf_counter()
    prepared = prepare(open_image(path))
    collect_stats(prepared, ScanSummary(prepared.image.scanned_bytes), jobs=jobs)
    return time.perf_counter() - start


def table_split(path: Path) -> tuple[float, float]:
    """(ms of a window's work without the table search, ms it adds) summed over every
    window, in this process and interleaved: the table search's share without the noise
    of whole runs."""
    from pooltagscan.scanner import engine

    image = open_image(path)
    config = prepare(image).config
    plain = replace(config, tables=False)
    without = added = 0.0
    for window in image.windows(engine.WINDOW_BYTES):
        with image.words(window) as words:
            start = time.perf_counter()
            engine.window_results(image, plain, window, words)
            mid = time.perf_counter()
            engine.window_results(image, config, window, words)
            without += mid - start
            added += (time.perf_counter() - mid) - (mid - start)
    image.close()
    return without * 1000, added * 1000


def _hwm_kib(pid: int) -> int:
    """Peak RSS (VmHWM) of a live process, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def command_rss(path: Path, jobs: int) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of `pooltagscan scan --stats` on the file.

    The peak is sampled from /proc every 20 ms (VmHWM of the command, plus its workers when
    --jobs > 1): rusage would also count the benchmark process the command was forked
    from, which is far larger than the command itself.
    """
    cmd = [
        sys.executable,
        "-m",
        "pooltagscan",
        "scan",
        str(path),
        "--stats",
        "-q",
        "--format",
        "json",
        "--jobs",
        str(jobs),
        "-o",
        os.devnull,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        total = _hwm_kib(proc.pid) + sum(_hwm_kib(c) for c in _children(proc.pid))
        peak = max(peak, total)
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"scan command failed with status {proc.returncode}")
    return seconds, peak / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--family", default="win10-1809-x64", choices=make_samples.FAMILIES)
    ap.add_argument("--jobs", type=int, default=default_jobs())
    ap.add_argument("--skip-volatility", action="store_true")
    ap.add_argument(
        "--volatility-mib",
        type=int,
        default=16,
        help="MiB of the dump Volatility scans (0: all); the bench dump repeats a "
        "16 MiB unit, so a prefix gives the same MB/s in minutes instead of hours",
    )
    ap.add_argument(
        "--rss-gib",
        type=int,
        default=0,
        help="also build a dump of this many GiB and report the command's peak RSS",
    )
    args = ap.parse_args()

    path = ensure_dump(args.family, args.size_mib << 20)
    results: dict[str, object] = {"file": path.name, "size_mib": args.size_mib}
    warm_page_cache(path)
    results["read_mb_s"] = round(sequential_read(path), 1)
    truth = Truth(args.family, args.size_mib << 20)
    # Seven rounds of a numpy pass, a scan and a scan without the table search,
    # interleaved so that all three see the same machine (single runs of this 2-core
    # machine vary by 20%); medians. The ratio against the numpy pass is also given
    # against the pass's best round.
    rounds = [(numpy_pass(path), our_scan(path, 1), our_scan(path, 1, tables=False))
              for _ in range(7)]  # fmt: skip
    passes, scans, plains = (sorted(column)[3] for column in zip(*rounds))
    best_pass = max(r[0] for r in rounds)
    mbs, plain = scans, plains
    held, offsets, family, big = our_records(path, 1)
    scan_ms, table_ms = table_split(path)
    hits = truth.hits(offsets)
    results.update(
        scan_mb_s=round(mbs, 1),
        scan_records_held_mb_s=round(held, 1),
        scan_without_tables_mb_s=round(plain, 1),
        table_search_cost=round(1 - mbs / plain, 3),
        table_search_cost_in_process=round(table_ms / scan_ms, 3),
        layout=family,
        planted=truth.total,
        records=int(offsets.size),
        bigpool_records=big,
        recall=round(hits / truth.total, 5),
        precision=round(hits / max(1, offsets.size), 5),
    )
    mbs_jobs = our_scan(path, args.jobs)
    results[f"scan_jobs{args.jobs}_mb_s"] = round(mbs_jobs, 1)
    # The --stats view with one job and with --jobs, interleaved with a numpy pass by one
    # thread and by --jobs threads, median of seven. The passes' ratio is what the
    # machine's memory allows any streaming scan to gain from more cores; the scan's
    # ratio is also given against it.
    rounds = [(stats_seconds(path, 1), stats_seconds(path, args.jobs), numpy_pass(path, 1),
               numpy_pass(path, args.jobs)) for _ in range(7)]  # fmt: skip
    one, many, pass_one, pass_many = (sorted(column)[3] for column in zip(*rounds))
    results["stats_view_s"] = {"jobs1": round(one, 3), f"jobs{args.jobs}": round(many, 3)}
    results[f"ratio_stats_jobs{args.jobs}_vs_jobs1"] = round(one / many, 2)
    results[f"numpy_pass_threads{args.jobs}_mb_s"] = round(pass_many, 1)
    results[f"ratio_numpy_pass_threads{args.jobs}_vs_1"] = round(pass_many / pass_one, 2)
    results[f"ratio_stats_jobs{args.jobs}_vs_memory_ceiling"] = round(
        (one / many) / (pass_many / pass_one), 2
    )
    seconds, rss = command_rss(path, 1)
    results.update(command_seconds=round(seconds, 2), command_peak_rss_mib=round(rss, 1))
    if not args.skip_volatility:
        vol = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    str(HERE / "vol_baseline.py"),
                    str(path),
                    "--limit-mib",
                    str(args.volatility_mib),
                    # Volatility's handmade header types of the dump's own family.
                    "--isf",
                    "poolheader-x86" if family == "x86" else "poolheader-x64",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        results.update(
            volatility_mb_s=round(vol["mb_per_s"], 1),
            volatility_scanned_mib=vol["scanned_bytes"] >> 20,
            volatility_hits=vol["hits"],
            volatility_precision=round(truth.hits(vol["offsets"]) / max(1, vol["hits"]), 5),
            volatility_hits_per_tag=vol["per_tag"],
        )
        results["ratio_scan_vs_volatility"] = round(mbs / vol["mb_per_s"], 1)
    results["ratio_scan_vs_read"] = round(mbs / results["read_mb_s"], 3)
    results.update(
        numpy_pass_mb_s=round(passes, 1),
        numpy_pass_best_mb_s=round(best_pass, 1),
        ratio_scan_vs_numpy_pass=round(mbs / passes, 3),
        ratio_scan_vs_best_numpy_pass=round(mbs / best_pass, 3),
    )
    if args.rss_gib:
        big = ensure_dump(args.family, args.rss_gib << 30)
        seconds, rss = command_rss(big, 1)
        results[f"rss_{args.rss_gib}GiB"] = {
            "seconds": round(seconds, 1),
            "peak_rss_mib": round(rss, 1),
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
