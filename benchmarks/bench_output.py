"""Record output speed: `scan --format jsonl|csv|json|table` against `scan --stats`.

The record views must stay within 2x of `--stats` on the 1 GiB bench dump (issue 10): the
scan is the same, so the difference is the cost of rendering and writing records. Each
command runs as a user runs it (a subprocess, stdout to /dev/null, -q), interleaved and
repeated, and the median is reported with its ratio to --stats. Warm page cache. Usage:
  python benchmarks/bench_output.py [--size-mib 1024] [--family win10-1809-x64] [--runs 5]
      [--command PATH]   # another pooltagscan executable (e.g. an older checkout's venv)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "samples"))
sys.path.insert(0, str(HERE))

import make_samples
from bench_scan import ensure_dump, warm_page_cache

VIEWS = {
    "stats": ["--stats"],
    "jsonl": ["--format", "jsonl"],
    "csv": ["--format", "csv"],
    "json": ["--format", "json"],
    "table": ["--format", "table"],
}


def timed(command: list[str], dump: Path, view: list[str]) -> float:
    """Wall seconds of one command, output to /dev/null; run beside the dump, so that
    `python -m pooltagscan` of another checkout does not import this one from the cwd."""
    start = time.perf_counter()
    with open(os.devnull, "w") as sink:
        subprocess.run(
            [*command, "scan", dump.name, *view, "-q"], stdout=sink, check=True, cwd=dump.parent
        )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--family", default="win10-1809-x64", choices=make_samples.FAMILIES)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--views", default="stats,jsonl,csv", help="comma-separated, of " + ",".join(VIEWS)
    )
    ap.add_argument("--command", help="pooltagscan executable (default: this Python's module)")
    args = ap.parse_args()

    command = [args.command] if args.command else [sys.executable, "-m", "pooltagscan"]
    if args.command and not shutil.which(args.command):
        raise SystemExit(f"{args.command}: not an executable")
    dump = ensure_dump(args.family, args.size_mib << 20)
    views = args.views.split(",")
    if "stats" not in views:
        views.insert(0, "stats")
    warm_page_cache(dump)
    seconds: dict[str, list[float]] = {v: [] for v in views}
    for _ in range(args.runs):  # interleaved: every view sees the same machine
        for view in views:
            seconds[view].append(timed(command, dump, VIEWS[view]))
    median = {v: statistics.median(s) for v, s in seconds.items()}
    results: dict[str, object] = {"file": dump.name, "runs": args.runs}
    for view in views:
        results[f"{view}_seconds"] = round(median[view], 2)
    for view in views:
        if view != "stats":
            results[f"ratio_{view}_vs_stats"] = round(median[view] / median["stats"], 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
