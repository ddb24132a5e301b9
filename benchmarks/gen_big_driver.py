"""Real-size driver binaries for the benchmark, generated from our own C and built with
MinGW-w64 (the sample drivers' toolchain, see samples/drivers/build.sh).

    python benchmarks/gen_big_driver.py --functions 2000 --arch x64 [--out DIR]

writes C: `functions` functions that do what driver code does between allocations
(arithmetic on their arguments and globals, small loops, a switch, calls to each other
and to non-pool kernel routines), and about one in four also allocates or frees pool
memory with a tag of its own: directly (`ExAllocatePoolWithTag`, `ExAllocatePool2`,
`ExFreePoolWithTag`), through a wrapper (`BigAlloc(size, tag)`), through a tag
held in a local that is chosen by a branch. Each tag is `B` plus three characters
derived from the function's number, so the exact tag set (the ground truth) is known
from the generator, not from the tool. Four translation units are compiled in
parallel (gcc -O2) and linked into one native-subsystem image with .pdata on x64.

Built files are cached under benchmarks/out/drivers/ (gitignored), named by the
generator's parameters and a hash of the C sources and compiler flags, so a benchmark
run rebuilds only what changed. A 10 MB driver is never committed; the benchmark
builds it on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out" / "drivers"
DEFS = REPO / "samples" / "drivers" / "defs"
DDK = "/usr/share/mingw-w64/include/ddk"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_UNITS = 4
_CFLAGS = [
    "-O2",
    "-std=gnu99",
    "-w",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-stack-protector",
    "-D_WIN32_WINNT=0x0601",
    "-DNTDDI_VERSION=0x06010000",
    f"-I{DDK}",
]
_LDFLAGS = [
    "-shared",
    "-nostdlib",
    "-s",
    "-Wl,--subsystem,native",
    "-Wl,--no-insert-timestamp",
    "-Wl,--exclude-all-symbols",
]

_PRELUDE = """\
#include <ntddk.h>
typedef ULONG64 POOL_FLAGS;
PVOID NTAPI ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);
PVOID BigAlloc(SIZE_T size, ULONG tag);
extern volatile LONG g_State[64];
extern PVOID g_Keep[256];
"""


def tag_text(number: int) -> str:
    """The tag of function `number`: `B` and three base-62 digits (238,328 tags)."""
    digits = []
    for _ in range(3):
        number, digit = divmod(number, len(_ALPHABET))
        digits.append(_ALPHABET[digit])
    return "B" + "".join(digits)


def tag_value(text: str) -> str:
    """The C constant whose little-endian bytes are `text` (what the pool header holds)."""
    return f"0x{int.from_bytes(text.encode('ascii'), 'little'):08x}u"


def _function(
    number: int, count: int, rng: random.Random, tags: set[str], steps: tuple[int, int] = (2, 6)
) -> tuple[str, str]:
    """One generated function (its prototype, its code); `steps` bounds how many
    statements it has (larger functions: fewer of them for the same code size, which
    is what makes gcc fast on the 10 MB driver)."""
    name = f"Fn{number}"
    prototype = f"ULONG_PTR {name}(ULONG_PTR a, ULONG_PTR b);"
    body = [f"ULONG_PTR {name}(ULONG_PTR a, ULONG_PTR b)", "{", "    ULONG_PTR x = a ^ b;"]
    for step in range(rng.randint(*steps)):
        kind = rng.randrange(6)
        k = rng.randrange(1, 1 << 16)
        if kind == 0:
            body.append(f"    x = (x * {k}u) + (a >> {step + 1}) - g_State[{k % 64}];")
        elif kind == 1:
            body.append(f"    for (ULONG i = 0; i < (b & 15); i++) x += (x << 3) ^ {k}u ^ i;")
        elif kind == 2:
            body.append(
                f"    switch (x & 7) {{ case 0: x += {k}u; break; case 1: x ^= a; break; "
                f"case 2: x -= b * {k % 97}u; break; case 3: g_State[{k % 64}] = (LONG)x; break; "
                f"default: x = (x >> 1) | {k}u; }}"
            )
        elif kind == 3 and number > 0:
            callee = rng.randrange(max(0, number - 50), number)
            body.append(f"    x += Fn{callee}(x, b + {k}u);")
        elif kind == 4:
            body.append(f"    if (x & {1 << (k % 12)}u) KeStallExecutionProcessor((ULONG)(x & 7));")
        else:
            body.append(f"    x = ((x >> 24) | (x << 8)) + {k}u;")
    if rng.random() < 0.25:
        tag = tag_text(number)
        tags.add(tag)
        value = tag_value(tag)
        slot = number % 256
        size = 16 + 8 * rng.randrange(64)
        shape = rng.randrange(5)
        if shape == 0:
            body.append(
                f"    g_Keep[{slot}] = ExAllocatePoolWithTag(NonPagedPool, {size}, {value});"
            )
        elif shape == 1:
            body.append(f"    g_Keep[{slot}] = ExAllocatePool2(0x40ull, x & 0xfff, {value});")
        elif shape == 2:
            body.append(f"    g_Keep[{slot}] = BigAlloc({size} + (x & 31), {value});")
        elif shape == 3:
            other = tag_text(number + count)  # a second tag, chosen by a branch
            tags.add(other)
            body.append(f"    ULONG t = (x & 1) ? {value} : {tag_value(other)};")
            body.append(f"    g_Keep[{slot}] = ExAllocatePoolWithTag(PagedPool, {size}, t);")
        else:
            body.append(
                f"    if (g_Keep[{slot}]) {{ ExFreePoolWithTag(g_Keep[{slot}], {value}); "
                f"g_Keep[{slot}] = 0; }}"
            )
    body += ["    return x;", "}"]
    return prototype, "\n".join(body)


def generate(
    functions: int, seed: int, steps: tuple[int, int] = (2, 6)
) -> tuple[list[str], set[str]]:
    """C sources of `_UNITS` translation units and the exact tag set they allocate with."""
    rng = random.Random(seed)
    tags: set[str] = set()
    made = [_function(n, functions, rng, tags, steps) for n in range(functions)]
    prototypes = "\n".join(p for p, _ in made)
    units = []
    per_unit = -(-functions // _UNITS)
    for unit in range(_UNITS):
        chunk = made[unit * per_unit : (unit + 1) * per_unit]
        units.append(_PRELUDE + prototypes + "\n\n" + "\n\n".join(code for _, code in chunk))
    wrapper_tag = "BWrp"  # BigAlloc's own free passes a fixed tag
    tags.add(wrapper_tag)
    units[0] += f"""

volatile LONG g_State[64];
PVOID g_Keep[256];

__attribute__((noinline)) PVOID BigAlloc(SIZE_T size, ULONG tag)
{{
    PVOID p = ExAllocatePoolWithTag(NonPagedPool, size, tag);
    if (p == NULL && g_Keep[0]) ExFreePoolWithTag(g_Keep[0], {tag_value(wrapper_tag)});
    return p;
}}

static VOID Unload(PDRIVER_OBJECT DriverObject) {{ UNREFERENCED_PARAMETER(DriverObject); }}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{{
    ULONG_PTR x = (ULONG_PTR)RegistryPath;
    DriverObject->DriverUnload = Unload;
    for (ULONG i = 0; i < 4; i++) x = Fn{functions - 1}(x, i);
    return (NTSTATUS)(x & 1);
}}
"""
    return units, tags


def _run(command: list[str]) -> None:
    """Run a build step; on failure, stop with the tool's last lines (not thousands)."""
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-15:])
        raise SystemExit(f"{command[0]} failed:\n{tail}")


def _cflags(opt: str) -> list[str]:
    return [opt, *_CFLAGS[1:]]


def _source_hash(units: list[str], arch: str, opt: str = "-O2") -> str:
    """Names the cached build: the C it is made from and how it is compiled."""
    digest = hashlib.sha256(json.dumps([units, _cflags(opt), _LDFLAGS, arch]).encode())
    return digest.hexdigest()[:12]


def build(
    functions: int,
    arch: str = "x64",
    seed: int = 11,
    out: Path = OUT,
    steps: tuple[int, int] = (2, 6),
    opt: str = "-O2",
) -> Path:
    """The driver for these parameters (built now, or from the cache); its ground truth is
    `<driver>.json` beside it: {"tags": [...], "code_bytes": N, ...}."""
    out.mkdir(parents=True, exist_ok=True)
    units, tags = generate(functions, seed, steps)
    shape = "" if steps == (2, 6) and opt == "-O2" else f"s{steps[0]}-{steps[1]}{opt}_"
    target = out / f"big_{functions}_{arch}_{seed}_{shape}{_source_hash(units, arch, opt)}.sys"
    if target.is_file() and target.with_suffix(".json").is_file():
        return target
    prefix = "x86_64-w64-mingw32-" if arch == "x64" else "i686-w64-mingw32-"
    if not shutil.which(prefix + "gcc"):
        raise SystemExit(
            f"{prefix}gcc not found: apt-get install -y gcc-mingw-w64-x86-64 "
            "gcc-mingw-w64-i686 binutils-mingw-w64"
        )
    with tempfile.TemporaryDirectory(prefix="bigdrv-") as tmp:
        work = Path(tmp)
        definition = work / "extra.def"
        text = (DEFS / "ntoskrnl_extra.def").read_text()
        if arch == "x64":
            text = "\n".join(line.split("@")[0] for line in text.splitlines())
        definition.write_text(text + "\n")
        library = work / "libextra.a"
        dlltool = [prefix + "dlltool", "-d", str(definition), "-l", str(library)]
        _run(dlltool + ([] if arch == "x64" else ["-k"]))
        extra = ["-mno-stack-arg-probe"] if arch == "x64" else ["-fno-asynchronous-unwind-tables"]

        def compile_unit(number: int) -> Path:
            source = work / f"unit{number}.c"
            source.write_text(units[number])
            obj = source.with_suffix(".o")
            cmd = [prefix + "gcc", *_cflags(opt), *extra, "-c", str(source), "-o", str(obj)]
            _run(cmd)
            return obj

        with ThreadPoolExecutor(max_workers=2) as pool:
            objects = list(pool.map(compile_unit, range(_UNITS)))
        entry = "DriverEntry" if arch == "x64" else "_DriverEntry@8"
        base = "0x140000000" if arch == "x64" else "0x10000"
        link = [prefix + "gcc", *_LDFLAGS, f"-Wl,--image-base,{base}", f"-Wl,--entry,{entry}"]
        link += [str(o) for o in objects] + ["-o", str(target), str(library), "-lntoskrnl", "-lhal"]
        _run(link)
    truth = {
        "generator": "benchmarks/gen_big_driver.py",
        "functions": functions,
        "steps": list(steps),
        "opt": opt,
        "arch": arch,
        "seed": seed,
        "tags": sorted(tags),
        "code_bytes": code_bytes(target),
    }
    target.with_suffix(".json").write_text(json.dumps(truth, indent=1) + "\n")
    return target


def code_bytes(path: Path) -> int:
    """Bytes of executable sections an analysis disassembles (raw data within the
    virtual size), the unit of the benchmark's "MB of code per second"."""
    import pefile

    pe = pefile.PE(str(path), fast_load=True)
    total = 0
    for section in pe.sections:
        if section.Characteristics & 0x20000020:  # code or execute
            size = section.SizeOfRawData
            if section.Misc_VirtualSize:
                size = min(size, section.Misc_VirtualSize)
            total += size
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", type=int, default=2000)
    parser.add_argument("--arch", choices=("x64", "x86"), default="x64")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--steps", type=int, nargs=2, default=(2, 6), help="statements per function (min max)"
    )
    parser.add_argument("--opt", default="-O2", help="gcc optimisation flag")
    args = parser.parse_args()
    path = build(args.functions, args.arch, args.seed, args.out, tuple(args.steps), args.opt)
    truth = json.loads(path.with_suffix(".json").read_text())
    print(f"{path}: {path.stat().st_size:,} bytes, {truth['code_bytes']:,} of code, "
          f"{len(truth['tags'])} tags")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
