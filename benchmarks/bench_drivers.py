"""Driver attribution throughput: `pooltagscan drivers` over a batch of driver files, and
over real-size drivers.

Part one builds a folder of N driver files (default 500) by copying the sample drivers of
samples/drivers/ round-robin (x64 and x86; with --include-real also the WinDivert and
WinPmem drivers the tests cached, when present), then times the real command on it,
end to end (process start, folder walk, YARA, disassembly, data flow, output).

Part two (skipped with --no-real-size) times real-size drivers generated from our own C by
gen_big_driver.py and built with MinGW-w64 (cached under benchmarks/out/drivers/): a batch
of four drivers with a few hundred KB of code each (x64 and x86), and one x64 driver with
about 10 MB of code (--big-functions functions of 16 to 32 statements, gcc -O1: about two
minutes to build on 2 cores, once). Each run's tags are compared with the generator's
ground truth.

Every measurement runs --repeat times (default 3) with the candidate path (the default,
drivers/candidates.py) and, unless --no-compare, as often with the full sweep
(POOLTAGSCAN_DRIVERS_SWEEP=full), interleaved so that both see the same machine load;
min and median are printed for each.

    python benchmarks/bench_drivers.py [--count 500] [--jobs N] [--include-real]
                                       [--no-real-size] [--big-functions 10000]
                                       [--repeat 3] [--no-compare]

Each copy is analysed from scratch (nothing is cached between files), so identical
copies cost what different drivers of the same size would. Prints the seconds, drivers
per second, MB of code per second (bytes of executable sections, 10^6 per MB), and the
number of records, and checks every file gave its expected tags. The target is 500
files in under 30 seconds on the 2-core machine, using all cores, and at least 3 MB of
code per second on the real-size drivers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLES = REPO / "samples" / "drivers"
SOURCES = [
    "pooltags_x64.sys",
    "pooltags_x86.sys",
    "multiapi_x64.sys",
    "multiapi_x86.sys",
    "nopool_x64.sys",
    "nopool_x86.sys",
]
REAL_CACHE = Path(
    os.environ.get("POOLTAGSCAN_TEST_CACHE", Path.home() / ".cache" / "pooltagscan-tests")
)


def sources(include_real: bool) -> list[Path]:
    files = [SAMPLES / name for name in SOURCES]
    if include_real:
        real = REAL_CACHE / "real-drivers" / "drivers"
        files += sorted(real.glob("*.sys")) if real.is_dir() else []
    return files


def expected_tags(files: list[Path]) -> dict[str, set[str]]:
    """Tag set per source file, from the samples' ground truth (real ones: skipped)."""
    truth = json.loads((SAMPLES / "ground_truth.json").read_text())["drivers"]
    expected = {}
    for path in files:
        entry = truth.get(path.name)
        if entry is None:
            continue
        if "same_as" in entry:
            entry = truth[entry["same_as"]]
        expected[path.name] = set(entry["tags"])
    return expected


def _code_bytes(path: Path) -> int:
    from gen_big_driver import code_bytes

    return code_bytes(path)


def _run_cli(
    paths: list[Path], jobs: int | None, full: bool = False
) -> tuple[float, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "pooltagscan", "drivers", *map(str, paths)]
    command += ["--format", "jsonl"] + (["--jobs", str(jobs)] if jobs else [])
    env = dict(os.environ)
    if full:
        env["POOLTAGSCAN_DRIVERS_SWEEP"] = "full"
    start = time.perf_counter()
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, result


def _modes(compare: bool) -> list[tuple[str, bool]]:
    return [("candidates", False)] + ([("full sweep", True)] if compare else [])


def _report(title: str, count: int, code: int, runs: dict[str, list[float]], extra: str) -> None:
    """One line per mode: min and median seconds, drivers/s and MB of code/s of both."""
    for mode, seconds in runs.items():
        best, middle = min(seconds), statistics.median(seconds)
        print(
            f"{title} [{mode}, {len(seconds)} runs]: min {best:.2f} s, median {middle:.2f} s: "
            f"{count / best:.1f} / {count / middle:.1f} drivers/s, "
            f"{code / 1e6 / best:.2f} / {code / 1e6 / middle:.2f} MB of code/s (min / median)"
            f"{extra}"
        )


def real_size(jobs: int | None, big_functions: int, repeat: int, compare: bool) -> bool:
    """Time the generated real-size drivers; False when a run's tags were wrong."""
    sys.path.insert(0, str(HERE))
    from gen_big_driver import build

    mid = [build(2000, arch, seed) for seed in (11, 12) for arch in ("x64", "x86")]
    big = [build(big_functions, "x64", 11, steps=(16, 32), opt="-O1")]
    ok = True
    for title, paths in (("few-hundred-KB batch", mid), ("large driver", big)):
        runs: dict[str, list[float]] = {mode: [] for mode, _ in _modes(compare)}
        records = 0
        for _ in range(repeat):
            for mode, full in _modes(compare):
                seconds, result = _run_cli(paths, jobs, full)
                if result.returncode != 0:
                    print(result.stderr, file=sys.stderr)
                    return False
                runs[mode].append(seconds)
                records = len(result.stdout.splitlines())
                found: dict[str, set[str]] = {}
                for line in result.stdout.splitlines():
                    record = json.loads(line)
                    found.setdefault(record["path"], set()).add(record["tag"])
                for path in paths:
                    truth = set(json.loads(path.with_suffix(".json").read_text())["tags"])
                    tags = found.get(str(path), set())
                    if tags != truth:
                        ok = False
                        print(
                            f"{path.name} ({mode}): {len(truth - tags)} tags missed, "
                            f"{len(tags - truth)} extra",
                            file=sys.stderr,
                        )
        code = sum(_code_bytes(p) for p in paths)
        sizes = ", ".join(f"{_code_bytes(p) / 1e6:.2f}" for p in paths)
        title = f"{title}: {len(paths)} driver(s) ({sizes} MB of code)"
        _report(title, len(paths), code, runs, f", {records} records")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="driver files in the batch")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all)")
    parser.add_argument(
        "--include-real", action="store_true", help="also copy the cached real drivers"
    )
    parser.add_argument(
        "--no-real-size", action="store_true", help="skip the generated real-size drivers"
    )
    parser.add_argument(
        "--big-functions",
        type=int,
        default=10000,
        help="functions of the large generated driver (10000: about 10 MB of code)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--no-compare", action="store_true", help="do not also time the full sweep")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    files = sources(args.include_real)
    expected = expected_tags(files)
    compare = not args.no_compare
    runs: dict[str, list[float]] = {mode: [] for mode, _ in _modes(compare)}
    with tempfile.TemporaryDirectory(prefix="pooltagscan-bench-") as tmp:
        batch = Path(tmp) / "drivers"
        batch.mkdir()
        origin = {}
        for number in range(args.count):
            source = files[number % len(files)]
            copy = batch / f"{number:04d}_{source.name}"
            shutil.copyfile(source, copy)
            origin[copy.name] = source.name
        for _ in range(args.repeat):
            for mode, full in _modes(compare):
                seconds, result = _run_cli([batch], args.jobs, full)
                if result.returncode != 0:
                    print(result.stderr, file=sys.stderr)
                    return 1
                runs[mode].append(seconds)
                found: dict[str, set[str]] = {}
                for line in result.stdout.splitlines():
                    record = json.loads(line)
                    found.setdefault(record["driver"], set()).add(record["tag"])
                wrong = [
                    name
                    for name, source in origin.items()
                    if source in expected and found.get(name, set()) != expected[source]
                ]
                if wrong:
                    print(f"{len(wrong)} copies gave unexpected tags ({mode}), e.g. {wrong[:3]}",
                          file=sys.stderr)  # fmt: skip
                    return 1
    code = sum(_code_bytes(files[n % len(files)]) for n in range(args.count))
    title = (
        f"{args.count} driver files ({len(files)} distinct, "
        f"jobs={args.jobs or 'all cores'}, {os.cpu_count()} CPUs)"
    )
    _report(title, args.count, code, runs, f", {len(result.stdout.splitlines())} records")
    print("every copy gave exactly its ground-truth tags")
    if not args.no_real_size and not real_size(args.jobs, args.big_functions, args.repeat, compare):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
