"""Fleet throughput: 32 dumps of 256 MiB scanned three ways, in one run.

    .venv/bin/python benchmarks/bench_fleet.py [--dumps 32] [--mib 256] [--keep]

1. `pooltagscan scan DUMP --stats` on each dump in turn (the single-machine baseline,
   with its own worker processes: --jobs defaults to every core);
2. `pooltagscan fleet scan` on the embedded cluster (one worker per core), timed from
   the command's start, cluster start-up included;
3. `pooltagscan fleet scan --scheduler` on a `dask scheduler` and two `dask worker`
   processes started here (timed once they are up, as an existing cluster would be).

The dumps are made by the sample generator (`write_bench_dump`, the five families in
turn) under benchmarks/out/fleet (gitignored) and deleted at the end unless --keep.
The generator makes one dump per family; the others are copies of those (the generator
takes seconds per dump). They fit in the page cache of the development machine, so the figures are CPU figures,
not disk ones; every fleet run also computes each dump's sha256 (read a second time).
Prints dumps/s and GB/s of each mode, and the on-paper projection for 1,000 hosts of
16 GB on 20 workers from the per-worker rate measured in mode 3.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "fleet"
PY = sys.executable
DASK = str(Path(PY).with_name("dask"))


def load_samples():
    spec = importlib.util.spec_from_file_location("make_samples", REPO / "samples/make_samples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_samples"] = module
    spec.loader.exec_module(module)
    return module


def make_dumps(count: int, size: int) -> list[Path]:
    need = count * size
    free = shutil.disk_usage(OUT.parent if OUT.parent.exists() else REPO).free
    existing = sum(p.stat().st_size for p in OUT.glob("*.raw")) if OUT.exists() else 0
    if free + existing < need + (1 << 30):
        sys.exit(f"bench_fleet: needs {need / 2**30:.1f} GiB free, has {free / 2**30:.1f} GiB")
    OUT.mkdir(parents=True, exist_ok=True)
    samples = load_samples()
    paths = []
    # One dump per family from the generator (seconds each), then copies of it: a
    # generator call per dump would take 20 minutes for 32 dumps.
    made: dict[str, Path] = {}
    for i in range(count):
        family = samples.FAMILIES[i % len(samples.FAMILIES)]
        path = OUT / f"host{i:03d}-{family}.raw"
        if not path.exists() or path.stat().st_size != size:
            if family in made:
                shutil.copyfile(made[family], path)
            else:
                samples.write_bench_dump(path, family, size)
        made.setdefault(family, path)
        paths.append(path)
    return paths


def run(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)  # fmt: skip
    took = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench_fleet: {' '.join(command[:4])}... failed: {done.stderr[-500:]}")
    return took


@contextlib.contextmanager
def dask_cluster(workers: int):
    folder = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    info = folder / "scheduler.json"
    procs = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "start_new_session": True, "cwd": folder}  # fmt: skip
    try:
        procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(info),
                ],
                **quiet,
            )
        )
        while not info.exists() or not info.read_text().strip():
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [
                        DASK,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                    ],
                    **quiet,
                )
            )
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def figures(name: str, seconds: float, dumps: int, total: int) -> dict:
    return {
        "mode": name,
        "seconds": round(seconds, 2),
        "dumps_per_s": round(dumps / seconds, 2),
        "gb_per_s": round(total / seconds / 1e9, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dumps", type=int, default=32)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="workers of mode 3")
    parser.add_argument("--keep", action="store_true", help="keep the generated dumps")
    args = parser.parse_args()
    size = args.mib << 20
    t = time.perf_counter()
    paths = make_dumps(args.dumps, size)
    print(f"made {len(paths)} dumps of {args.mib} MiB in {time.perf_counter() - t:.1f} s",
          flush=True)  # fmt: skip
    total = len(paths) * size
    listing = OUT / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    cmd = [PY, "-m", "pooltagscan"]
    results = []
    try:
        # Warm the page cache once so that no mode pays the first read alone.
        for p in paths:
            with open(p, "rb") as f:
                while f.read(64 << 20):
                    pass
        seq = sum(run([*cmd, "scan", str(p), "--stats", "-q"]) for p in paths)
        results.append(figures("scan --stats, each in turn", seq, len(paths), total))
        print(results[-1], flush=True)
        store = OUT / "store-local"
        shutil.rmtree(store, ignore_errors=True)
        local = run([*cmd, "fleet", "scan", "--list", str(listing), "--out", str(store), "-q"])
        results.append(figures("fleet scan, embedded cluster", local, len(paths), total))
        print(results[-1], flush=True)
        with dask_cluster(args.workers) as address:
            store = OUT / "store-remote"
            shutil.rmtree(store, ignore_errors=True)
            remote = run([*cmd, "fleet", "scan", "--list", str(listing), "--out", str(store),
                          "--scheduler", address, "-q"])  # fmt: skip
        results.append(
            figures(f"fleet scan, scheduler + {args.workers} workers", remote, len(paths), total)
        )
        print(results[-1], flush=True)
    finally:
        if not args.keep:
            for p in paths:
                p.unlink(missing_ok=True)
            for sub in ("store-local", "store-remote"):
                shutil.rmtree(OUT / sub, ignore_errors=True)
    per_worker = total / remote / args.workers  # bytes/s per worker process, mode 3
    fleet_bytes = 1000 * 16e9
    seconds = fleet_bytes / (20 * per_worker)
    projection = {
        "hosts": 1000,
        "bytes_per_host": 16e9,
        "workers": 20,
        "per_worker_gb_per_s": round(per_worker / 1e9, 3),
        "hours": round(seconds / 3600, 2),
        "storage_gb_per_s_needed": round(20 * per_worker / 1e9, 2),
        "sha256_included": True,
    }
    print(json.dumps({"cores": os.cpu_count(), "dumps": len(paths), "mib": args.mib,
                      "results": results, "projection": projection}, indent=1))  # fmt: skip
    storage = {rate: fleet_bytes / (rate * 1e9) / 3600 for rate in (1, 5, 10)}
    print(
        f"projection: 1,000 hosts x 16 GB = 16 TB on 20 workers at the measured "
        f"{per_worker / 1e9:.2f} GB/s per worker (scan + sha256, data in memory): "
        f"{projection['hours']:.1f} h of compute, which needs the shared storage to deliver "
        f"{projection['storage_gb_per_s_needed']:.1f} GB/s; reading 16 TB alone takes "
        + ", ".join(f"{h:.1f} h at {r} GB/s" for r, h in storage.items())
        + "; the run takes the longer of the two"
    )


if __name__ == "__main__":
    main()
