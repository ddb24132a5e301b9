"""A seeded mutation fuzzer over every input format we read and over our sample drivers.

Each family of input starts from our own samples (`samples/formats`, `samples/dumps`,
`samples/drivers`) and mutates the bytes that drive the readers: dump headers, run and
block tables, bitmap bytes, range and program headers, the VMware state file, pool
pages, PE headers and import tables. Mutations: bit flips, 32/64-bit fields set to
extreme values (0, all ones, the sign bits, the file size and its neighbours, 2**52...),
copied and filled chunks, truncations. Mutant N of a family is the same bytes on every
run (seeded), so any finding can be replayed.

Every mutant is run through the real command line (`pooltagscan.cli.main`, in long-lived
worker processes): a dump with `scan --stats` (every eighth with `--format jsonl`, every
eighth with `--yara`), a driver with `drivers --format json`. A mutant passes when the run
ends with exit code 0 or 2, at most one error line, and no internal error; a run over the
time limit is a hang (the worker is killed and replaced).

    python benchmarks/fuzz_inputs.py                      # 10,000 mutants per family
    python benchmarks/fuzz_inputs.py --mutants 500 --family crash --family driver
    python benchmarks/fuzz_inputs.py --family minidump --replay 1234   # one mutant, verbose

Prints, per family: mutants tried, exit codes, tracebacks (internal errors or exceptions
escaping the CLI), hangs, multi-line errors, the peak RSS of one mutant's run and the
slowest run. `tests/test_fuzz.py` runs a few dozen mutants of every family in the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import random
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
FORMATS = SAMPLES / "formats"
DUMPS = SAMPLES / "dumps"
DRIVERS = SAMPLES / "drivers"
PAGE = 4096

Region = tuple[int, int]


# ---------------------------------------------------------------- where to mutate


def crash_regions(data: bytes) -> list[Region]:
    is64 = data[:8] == b"PAGEDU64"
    header = 0x2000 if is64 else 0x1000
    regions = [(0, 0x60), (0x88, 0x348) if is64 else (0x64, 0x320)]
    regions.append((0xF98, 0xFA0) if is64 else (0xF88, 0xF90))
    dump_type = struct.unpack_from("<I", data, 0xF98 if is64 else 0xF88)[0]
    if dump_type in (5, 6):
        bits = struct.unpack_from("<Q", data, header + 0x30)[0]
        regions += [(header, header + 0x38), (header + 0x38, header + 0x38 + min(bits // 8, PAGE))]
    return regions


def minidump_regions(data: bytes) -> list[Region]:
    is64 = data[:8] == b"PAGEDU64"
    header = 0x2000 if is64 else 0x1000
    blocks_at = 0x78 if is64 else 0x60
    table, count = struct.unpack_from("<II", data, header + blocks_at)
    record = 16 if is64 else 12
    return [(0, 0x60), (header, header + 0x100), (table, table + count * record)]


def lime_regions(data: bytes) -> list[Region]:
    regions, at = [], 0
    while at + 32 <= len(data) and data[at : at + 4] == b"EMiL":
        start, end = struct.unpack_from("<QQ", data, at + 8)
        regions.append((at, at + 32))
        at += 32 + end - start + 1
    return regions


def elf_regions(data: bytes) -> list[Region]:
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", data, 32)[0],
        *struct.unpack_from("<HH", data, 54),
    )
    return [(0, 64), (phoff, phoff + phentsize * phnum)]


def whole(data: bytes) -> list[Region]:
    return [(0, len(data))]


def raw_regions(data: bytes) -> list[Region]:
    """Pool pages: the first 24 pages that carry planted headers (and their neighbours)."""
    return [(p * PAGE, p * PAGE + PAGE) for p in range(0, min(len(data) // PAGE, 96), 4)]


def paging_regions(data: bytes) -> list[Region]:
    """The pages the paging samples append after their 2 MiB of pool pages: page tables,
    kernel images (headers, export and import tables) and loader entries."""
    return [(p * PAGE, p * PAGE + PAGE) for p in range(512, len(data) // PAGE)]


# A kernel address inside the first carved image of each paging sample (`pool` reads it
# through the page tables).
PAGING_ADDRESSES = {
    "win10-1809-x64.raw": 0xFFFFF80000400000 + 0x1010,
    "win7-x86.raw": 2336227328 + 0x1010,
    "xp-x86.raw": 4171235328 + 0x1010,
}


def pe_regions(data: bytes) -> list[Region]:
    import pefile

    lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    sections = struct.unpack_from("<H", data, lfanew + 6)[0]
    optional = struct.unpack_from("<H", data, lfanew + 20)[0]
    regions = [(0, 0x40), (lfanew, lfanew + 24 + optional + 40 * sections)]
    pe = pefile.PE(data=data, fast_load=True)
    for index in (0, 1, 3, 12):  # export, import, exception, IAT directories
        entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[index]
        if entry.VirtualAddress and entry.Size:
            offset = pe.get_offset_from_rva(entry.VirtualAddress)
            regions.append((offset, offset + min(entry.Size, 512)))
    return regions


# ---------------------------------------------------------------- the families


@dataclass
class Family:
    name: str
    files: list[Path]
    regions: object  # callable(bytes) -> list[Region]
    kind: str = "dump"  # or "driver", "vmware"
    samples: list[tuple[str, bytes, list[Region]]] = field(default_factory=list)

    def load(self) -> Family:
        if not self.samples:
            for path in self.files:
                data = path.read_bytes()
                self.samples.append((path.name, data, self.regions(data)))
        return self


PATTERN_DRIVERS = ("dynamic", "helpers", "kmdf", "minifilter", "negative", "structs", "videocb")


def code_regions(data: bytes) -> list[Region]:
    """pe_regions, plus the code and data sections in 256-byte pieces: mutated code
    drives the disassembly, the data flow and the indirect-call resolution."""
    import pefile

    pe = pefile.PE(data=data, fast_load=True)
    regions = pe_regions(data)
    for section in pe.sections:
        start, size = section.PointerToRawData, section.SizeOfRawData
        regions += [(at, min(at + 256, start + size)) for at in range(start, start + size, 256)]
    return regions


FAMILIES = {
    "crash": Family(
        "crash",
        [
            FORMATS / n
            for n in (
                "crash-full-x64.dmp",
                "crash-full-x86.dmp",
                "crash-bitmap-x64.dmp",
                "crash-kernel-bitmap-x64.dmp",
            )
        ],
        crash_regions,
    ),
    "minidump": Family(
        "minidump", [FORMATS / "minidump-x64.dmp", FORMATS / "minidump-x86.dmp"], minidump_regions
    ),
    "lime": Family("lime", [FORMATS / "lime-x86.lime"], lime_regions),
    "elfcore": Family("elfcore", [FORMATS / "elfcore-x64.elf"], elf_regions),
    "vmware": Family("vmware", [FORMATS / "vmware-x64.vmss"], whole, kind="vmware"),
    "raw": Family("raw", sorted(DUMPS.glob("*.raw")), raw_regions),
    # The kernel address space of the paging samples: the self-map search, translation,
    # object decoding and driver carving (each carved image goes through the driver
    # analysis), run by `report --drivers-from-dump --objects`, `scan --objects` and
    # `pool DUMP VA`.
    "paging": Family("paging", [DUMPS / n for n in PAGING_ADDRESSES], paging_regions, "paging"),
    "driver": Family(
        "driver",
        [
            DRIVERS / n
            for n in (
                "pooltags_x64.sys",
                "pooltags_x86.sys",
                "multiapi_x64.sys",
                "multiapi_x86.sys",
                "nopool_x64.sys",
            )
        ],
        pe_regions,
        kind="driver",
    ),
    # The drivers of the attribution patterns (runtime-resolved APIs, KMDF, NDIS structs,
    # helpers, decoys), code and data mutated too.
    "driver-code": Family(
        "driver-code",
        [DRIVERS / f"{n}_{a}.sys" for n in PATTERN_DRIVERS for a in ("x64", "x86")],
        code_regions,
        kind="driver",
    ),
}


# ---------------------------------------------------------------- mutations


def _extremes(size: int) -> list[int]:
    return [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0xFFFF, 0x10000,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, size, size - 1, size + 1,
            size // 2, size * 2, 1 << 32, 1 << 40, 1 << 52, (1 << 63) - 1, 1 << 63,
            (1 << 64) - 1]  # fmt: skip


def mutate(data: bytes, regions: list[Region], rng: random.Random) -> bytes:
    """One to three mutations, mostly inside `regions`."""
    buf = bytearray(data)
    regions = [(a, min(b, len(data))) for a, b in regions if a < min(b, len(data))] or whole(data)
    truncate = None
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        start, end = rng.choice(regions)
        op = rng.random()
        if op < 0.3:
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(start, end)
                buf[at] ^= 1 << rng.randrange(8)
        elif op < 0.75:
            width = rng.choice((4, 4, 8))
            slots = (end - start) // width
            if slots <= 0:
                continue
            at = start + width * rng.randrange(slots)
            value = rng.choice(_extremes(len(data))) % (1 << (8 * width))
            buf[at : at + width] = value.to_bytes(width, "little")
        elif op < 0.85:
            length = rng.randint(4, 64)
            src = rng.randrange(start, end)
            dst = rng.randrange(start, end)
            chunk = buf[src : src + length]
            buf[dst : dst + len(chunk)] = chunk
        elif op < 0.92:
            at = rng.randrange(start, end)
            length = rng.randint(1, 64)
            fill = rng.choice((0x00, 0xFF))
            buf[at : at + length] = bytes([fill]) * len(buf[at : at + length])
        else:
            truncate = rng.randrange(0, end) if rng.random() < 0.5 else rng.randrange(len(buf))
    if truncate is not None:
        del buf[truncate:]
    return bytes(buf)


def mutant(family: Family, seed: int, index: int) -> tuple[str, bytes]:
    """(sample name, bytes) of mutant `index` of `family`: the same on every run."""
    rng = random.Random(f"{seed}:{family.name}:{index}")
    name, data, regions = rng.choice(family.samples)
    return name, mutate(data, regions, rng)


# ---------------------------------------------------------------- running one


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no handler in the CLI swallows it."""


def _alarm(signum, frame):
    raise Hang()


def _peak_reset() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (Linux)


def _peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def command(family: Family, path: Path, index: int, sample: str = "") -> list[str]:
    if family.kind == "driver":
        return ["drivers", str(path), "--format", "json", "-q", "--jobs", "1"]
    if family.kind == "paging":
        if index % 3 == 0:
            return ["report", str(path), "--drivers-from-dump", "--objects", "--format",
                    "json", "-q", "--jobs", "1"]  # fmt: skip
        if index % 3 == 1:
            return ["scan", str(path), "--objects", "--format", "jsonl", "-q", "--jobs", "1"]
        return ["pool", str(path), hex(PAGING_ADDRESSES[sample]), "--hexdump", "-q"]
    args = ["scan", str(path), "-q", "--jobs", "1"]
    if index % 8 == 1:
        return [*args, "--format", "jsonl"]
    if index % 8 == 2:
        return [*args, "--yara", str(REPO / "rules" / "memory")]
    return [*args, "--stats"]


def run_one(family: Family, seed: int, index: int, folder: Path, timeout: float) -> dict:
    """Write mutant `index`, run the CLI on it in this process, classify the outcome."""
    from pooltagscan import cli

    name, data = mutant(family, seed, index)
    if family.kind == "vmware":
        path = folder / "mutant.vmem"
        if not path.exists():
            path.symlink_to(FORMATS / "vmware-x64.vmem")
        (folder / "mutant.vmss").write_bytes(data)
    else:
        path = folder / f"mutant{Path(name).suffix}"
        path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    outcome = {"family": family.name, "index": index, "sample": name}
    _peak_reset()
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(command(family, path, index, name))
    except Hang:
        code = "hang"
    except BaseException as exc:  # noqa: BLE001 - anything escaping the CLI is a finding
        code = "traceback"
        err.write(f"{type(exc).__name__}: {exc}\n")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    outcome["seconds"] = time.monotonic() - start
    outcome["rss_mb"] = _peak_mb()
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    internal = "internal error" in text or "analysis failed (" in (text + out.getvalue())
    if code in ("hang", "traceback"):
        outcome["verdict"] = code
    elif internal or code not in ((0, 1, 2) if family.kind == "paging" else (0, 2)):
        # (`pool` ends with 1 when no allocation holds the address)
        outcome["verdict"] = "traceback"
    elif len(lines) > 1:
        outcome["verdict"] = "multi-line"
    else:
        outcome["verdict"] = "ok"
    outcome["code"] = code
    outcome["stderr"] = text[-2000:]
    if family.kind != "vmware":
        path.unlink(missing_ok=True)
    return outcome


# ---------------------------------------------------------------- many, in workers


def _worker(conn, names: list[str], seed: int, timeout: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    families = {n: FAMILIES[n].load() for n in names}
    with tempfile.TemporaryDirectory(prefix="pts-fuzz-") as folder:
        while True:
            task = conn.recv()
            if task is None:
                return
            name, index = task
            sub = Path(folder) / name
            sub.mkdir(exist_ok=True)
            conn.send(run_one(families[name], seed, index, sub, timeout))


def fuzz(names: list[str], mutants: int, seed: int, jobs: int, timeout: float):
    """Yield the outcome of every mutant, `jobs` workers at a time."""
    ctx = multiprocessing.get_context("fork")
    tasks = [(name, i) for i in range(mutants) for name in names]
    workers: list[list] = []  # [process, conn, task, started]

    def spawn():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, names, seed, timeout), daemon=True)
        proc.start()
        child.close()
        return [proc, parent, None, 0.0]

    try:
        workers = [spawn() for _ in range(jobs)]
        pending = list(reversed(tasks))
        while pending or any(w[2] for w in workers):
            for w in workers:
                if w[2] is None and pending:
                    w[2] = pending.pop()
                    w[3] = time.monotonic()
                    w[1].send(w[2])
            for i, w in enumerate(workers):
                if w[2] is None:
                    continue
                if w[1].poll(0.01):
                    try:
                        yield w[1].recv()
                        w[2] = None
                        continue
                    except EOFError:
                        pass
                elif time.monotonic() - w[3] < 2 * timeout + 5 and w[0].is_alive():
                    continue
                # Hung in native code, or dead: record it, replace the worker.
                name, index = w[2]
                dead = not w[0].is_alive()
                yield {"family": name, "index": index, "verdict": "traceback" if dead else "hang",
                       "code": w[0].exitcode, "seconds": time.monotonic() - w[3],
                       "rss_mb": 0.0, "stderr": "worker died" if dead else "killed by the watchdog",
                       "sample": "?"}  # fmt: skip
                w[0].kill()
                w[0].join()
                workers[i] = spawn()
    finally:
        for w in workers:
            with contextlib.suppress(OSError, ValueError):
                w[1].send(None)
            w[0].join(1)
            if w[0].is_alive():
                w[0].kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=10_000, help="per family (default 10000)")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), default=[])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per mutant")
    parser.add_argument("--replay", type=int, help="run one mutant here and show its output")
    args = parser.parse_args(argv)
    names = args.family or sorted(FAMILIES)
    if args.replay is not None:
        with tempfile.TemporaryDirectory() as folder:
            for name in names:
                result = run_one(FAMILIES[name].load(), args.seed, args.replay, Path(folder),
                                 args.timeout)  # fmt: skip
                print(result)
        return 0
    stats: dict[str, Counter] = {n: Counter() for n in names}
    peak: dict[str, float] = dict.fromkeys(names, 0.0)
    slowest: dict[str, float] = dict.fromkeys(names, 0.0)
    slowest_index: dict[str, int] = dict.fromkeys(names, -1)
    findings = []
    start = time.monotonic()
    results = fuzz(names, args.mutants, args.seed, max(1, args.jobs), args.timeout)
    for done, result in enumerate(results, 1):
        name = result["family"]
        stats[name]["tried"] += 1
        stats[name][result["verdict"]] += 1
        stats[name][f"exit {result['code']}"] += 1
        peak[name] = max(peak[name], result["rss_mb"])
        if result["seconds"] > slowest[name]:
            slowest[name], slowest_index[name] = result["seconds"], result["index"]
        if result["verdict"] != "ok":
            findings.append(result)
        if done % 1000 == 0:
            print(f"... {done} mutants, {time.monotonic() - start:.0f} s", file=sys.stderr)
    print(f"seed {args.seed}, {args.timeout:.0f} s per mutant, {time.monotonic() - start:.0f} s")
    header = f"{'family':<10} {'tried':>7} {'exit 0':>7} {'exit 2':>7} {'tracebacks':>10} " \
             f"{'hangs':>6} {'multi-line':>10} {'RSS max':>8} {'slowest':>8}"  # fmt: skip
    print(header)
    for name in names:
        c = stats[name]
        print(f"{name:<10} {c['tried']:>7} {c['exit 0']:>7} {c['exit 2']:>7} "
              f"{c['traceback']:>10} {c['hang']:>6} {c['multi-line']:>10} "
              f"{peak[name]:>6.0f}MB {slowest[name]:>7.2f}s")  # fmt: skip
    print("slowest mutants: " + ", ".join(f"{n} --replay {i}" for n, i in slowest_index.items()))
    for result in findings[:20]:
        print(f"\n{result['verdict']}: --family {result['family']} --replay {result['index']} "
              f"({result['sample']}, exit {result['code']}, {result['seconds']:.1f} s)\n"
              f"{result['stderr'].strip()[-600:]}")  # fmt: skip
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
