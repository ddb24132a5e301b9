"""Disassembling only the code the analysis reads: candidate functions first, then
whatever the data flow asks for, with the same results as the sweep of all code.

capstone costs a few µs per instruction, so decoding every byte of a 10 MB driver
takes seconds however the results are indexed; the pool API calls and the code their
tags come from are a small part of it. An x64 image's `.pdata` splits its code into
blocks (one per RUNTIME_FUNCTION begin, up to the next one: a function, its padding and
any leaf functions without unwind data, which the sweep of all code decodes from the
same starting points). A `PartialIndex` sweeps only some blocks, with the very code of
`disasm.CodeIndex`, so the facts it holds about them are the full sweep's facts.

Which blocks: first those where a 4-byte field names one of the import slots that
matter (`call/jmp [rip+disp]`, `mov reg, [rip+disp]` then `call reg`), found by a
vectorised byte search. Then every question the analysis asks of the index that the
decoded blocks cannot answer alone records the blocks it needs (`missing`), by
byte-level candidates that over-approximate the instructions of the undecoded code:

- an instruction, or its decoded form, in an undecoded block;
- jump and call edges into an instruction (`E8`/`E9`/`EB`/`0F 8x`/`7x`/`E0-E3`
  with the displacement that reaches it) from undecoded blocks: predecessors of a
  walk, callers of a wrapper, call targets that make a function start;
- `mov dword [rip+disp], imm32` (`C7 05`) stores into a global from undecoded blocks.

`analysis_indexes` yields indexes over growing block sets; the caller analyses with
each and stops at the first whose analysis recorded nothing missing. That run asked
only questions the decoded blocks answer exactly as the full sweep would, so its
results are the full sweep's (tests/test_drivers_sweep.py compares both on every
sample and real driver). Where the blocks cannot be told (x86, no `.pdata`) or the
passes do not settle quickly, it is the full sweep.

One deliberate narrowing: `call reg` sites are walked for an import slot only in
blocks that name a slot. A register can hold a slot's address at a call only if
the load reaches it by fall-through or a jump inside the function (the walk stops at
function entries), and such a load names the slot in its own block.
"""

from __future__ import annotations

import bisect
import os
import struct
from array import array
from collections.abc import Iterable, Iterator

import numpy as np

from pooltagscan.drivers.disasm import (
    _PIECE_BYTES,
    MAX_INSTRUCTIONS,
    NO_FALLTHROUGH,
    CodeIndex,
    Edges,
    code_runs,
)
from pooltagscan.drivers.pe import DriverImage

__all__ = ["CodePlan", "PartialIndex", "analysis_indexes"]

#: Off switch (tests and benchmarks compare both ways); the environment variable
#: POOLTAGSCAN_DRIVERS_SWEEP=full does the same from outside.
ENABLED = True
_MAX_PASSES = 12
#: Share of the blocks beyond which decoding the rest as one sweep costs less.
_MAX_SHARE = 0.6
_DIR_EXCEPTION = 3
_INT32 = np.dtype("<i4")


def _enabled() -> bool:
    return ENABLED and os.environ.get("POOLTAGSCAN_DRIVERS_SWEEP", "") != "full"


def _pdata_begins(image: DriverImage) -> list[int]:
    """Every RUNTIME_FUNCTION's BeginAddress, chained (cold) parts included: each is
    a point where the code of some function begins."""
    rva, size = image.directory(_DIR_EXCEPTION)
    table = image.file_bytes(rva, size) if rva and size else None
    if not table:
        return []
    usable = len(table) - len(table) % 12
    return sorted({begin for begin, _e, _u in struct.iter_unpack("<III", table[:usable]) if begin})


def _dwords(data: np.ndarray) -> np.ndarray:
    """The signed little-endian dword at every offset of `data` (len(data) - 3 of
    them), from four aligned views rather than byte gathers."""
    count = len(data) - 3
    result = np.empty(max(count, 0), np.int32)
    for shift in range(4):
        whole = (len(data) - shift) // 4
        result[shift::4] = data[shift : shift + 4 * whole].view(_INT32)[: len(result[shift::4])]
    return result


def _add_candidates(
    into: tuple[list, list],
    code: np.ndarray,
    dwords: np.ndarray,
    start: int,
    mask: np.ndarray,
    length: int,
    disp_at: int,
    wide: bool,
) -> None:
    """Append (target, source) of every position in `mask` read as a branch of
    `length` bytes whose displacement (rel32 when `wide`, else rel8) is at `disp_at`;
    positions whose branch would run past the code are left out."""
    offsets = np.flatnonzero(mask)
    offsets = offsets[offsets + length <= len(code)]
    if wide:
        disp = dwords[offsets + disp_at].astype(np.int64)
    else:
        disp = code[offsets + disp_at].view(np.int8).astype(np.int64)
    into[0].append(offsets + start + length + disp)
    into[1].append(offsets + start)


class _Edges:
    """Candidate (target, source) pairs sorted by target. Kept as `array`s: the
    queries are one target at a time, where `bisect` on an array costs a fraction of
    a numpy call."""

    def __init__(self, targets: list[np.ndarray], sources: list[np.ndarray]):
        target = np.concatenate(targets) if targets else np.zeros(0, np.int64)
        source = np.concatenate(sources) if sources else np.zeros(0, np.int64)
        order = np.argsort(target, kind="stable")
        self.targets = array("q", target[order].astype(np.int64).tobytes())
        self.sources = array("q", source[order].astype(np.int64).tobytes())

    def between(self, low: int, high: int) -> array:
        """Sources of candidates whose target lies in [low, high)."""
        first = bisect.bisect_left(self.targets, low)
        last = bisect.bisect_left(self.targets, high, first)
        return self.sources[first:last]


class CodePlan:
    """One file's blocks, byte-level candidates and decoded pieces, shared by the
    indexes of successive passes (each decodes only the blocks it adds)."""

    def __init__(self, image: DriverImage, slots: Iterable[int], skip: Iterable[tuple[int, int]]):
        self.image = image
        self.slots = frozenset(slots)
        self.skip = list(skip)
        self.runs = code_runs(image, self.skip)
        begins = _pdata_begins(image) if image.arch == "x64" else []
        starts: list[int] = []
        ends: list[int] = []
        bases: list[int] = []
        for run_start, run_end, base in self.runs:
            low = np.searchsorted(begins, run_start, "right")
            high = np.searchsorted(begins, run_end, "left")
            edges = [run_start, *begins[low:high], run_end]
            starts += edges[:-1]
            ends += edges[1:]
            bases += [base] * (len(edges) - 1)
        self.block_starts = np.array(starts, np.int64)
        self.block_ends = np.array(ends, np.int64)
        self.block_bases = bases  # file offset minus RVA, per block
        code = sum(end - start for start, end, _ in self.runs)
        #: Whether a partial index can stand for the full sweep here.
        self.usable = bool(begins) and len(starts) > 1 and code <= MAX_INSTRUCTIONS
        self.block_facts: dict[int, tuple] = {}  # block start -> what indexing it gave
        self._starts_list = [int(x) for x in self.block_starts]
        self._ends_list = [int(x) for x in self.block_ends]
        self._calls: _Edges | None = None
        self._jumps: _Edges | None = None
        self._stores: _Edges | None = None
        self._seeds: frozenset[int] | None = None
        self._dword_cache: dict[int, np.ndarray] = {}  # run start -> `_dwords` of it
        #: Detailed decodes by RVA, valid for every pass (the bytes do not change).
        self.detail_cache: dict = {}

    def __len__(self) -> int:
        return len(self.block_starts)

    def block_of(self, rva: int) -> int | None:
        """The block holding `rva`, or None outside the swept code."""
        block = bisect.bisect_right(self._starts_list, rva) - 1
        if block >= 0 and rva < self._ends_list[block]:
            return block
        return None

    def blocks_of(self, rvas: np.ndarray) -> np.ndarray:
        """Block of each RVA (-1 outside the swept code)."""
        blocks = np.searchsorted(self.block_starts, rvas, "right") - 1
        inside = (blocks >= 0) & (rvas < self.block_ends[np.maximum(blocks, 0)])
        return np.where(inside, blocks, -1)

    def _dwords_of(self, start: int, code: np.ndarray) -> np.ndarray:
        cached = self._dword_cache.get(start)
        if cached is None:
            cached = self._dword_cache[start] = _dwords(code)
        return cached

    def _code(self) -> Iterator[tuple[int, np.ndarray]]:
        data = np.frombuffer(self.image.data, np.uint8)
        for start, end, base in self.runs:
            low, high = max(0, start + base), min(len(data), end + base)
            if high > low:
                yield low - base, data[low:high]

    @property
    def seeds(self) -> frozenset[int]:
        """Blocks where some 4-byte field, read as a rip-relative displacement, names
        one of the slots: every instruction that reads a slot is among them."""
        if self._seeds is None:
            wanted = np.array(sorted(self.slots), np.int64)
            found: set[int] = set()
            for start, code in self._code():
                if len(code) < 4 or not len(wanted):
                    continue
                # In 32 bits (RVAs are): rva + 4 + disp, then only the few in the
                # slots' span go through isin.
                values = np.arange(start + 4, start + len(code) + 1, dtype=np.uint32)
                values += self._dwords_of(start, code).view(np.uint32)
                near = np.flatnonzero((values >= wanted[0]) & (values <= wanted[-1]))
                near = near[np.isin(values[near], wanted)]
                hits = near.astype(np.int64) + start
                found.update(int(b) for b in self.blocks_of(hits) if b >= 0)
            self._seeds = frozenset(found)
        return self._seeds

    def _build_edges(self) -> None:
        calls: tuple[list, list] = ([], [])
        jumps: tuple[list, list] = ([], [])
        stores: tuple[list, list] = ([], [])
        for start, code in self._code():
            size = len(code)

            dwords = self._dwords_of(start, code)

            def add(into, mask, length, disp_at, wide, code=code, start=start, dwords=dwords):
                _add_candidates(into, code, dwords, start, mask, length, disp_at, wide)

            add(calls, code == 0xE8, 5, 1, True)
            add(jumps, code == 0xE9, 5, 1, True)
            short = (code == 0xEB) | ((code >= 0x70) & (code <= 0x7F))
            add(jumps, short | ((code >= 0xE0) & (code <= 0xE3)), 2, 1, False)
            if size > 1:
                near = np.zeros(size, bool)
                near[:-1] = (code[:-1] == 0x0F) & ((code[1:] & 0xF0) == 0x80)
                add(jumps, near, 6, 2, True)
                store = np.zeros(size, bool)
                store[:-1] = (code[:-1] == 0xC7) & (code[1:] == 0x05)
                add(stores, store, 10, 2, True)
        self._calls, self._jumps, self._stores = _Edges(*calls), _Edges(*jumps), _Edges(*stores)

    def call_sources(self, low: int, high: int) -> array:
        if self._calls is None:
            self._build_edges()
        assert self._calls is not None
        return self._calls.between(low, high)

    def jump_sources(self, low: int, high: int) -> array:
        if self._jumps is None:
            self._build_edges()
        assert self._jumps is not None
        return self._jumps.between(low, high)

    def store_sources(self, rva: int) -> array:
        if self._stores is None:
            self._build_edges()
        assert self._stores is not None
        # C7 05 disp32 imm32: the operand is relative to the end of the immediate.
        return self._stores.between(rva, rva + 1)


class _CheckedStores(dict):
    """`CodeIndex.const_stores` that notes the undecoded blocks which may store into a
    global whenever a global is looked up."""

    def __init__(self, index: PartialIndex, stores: dict):
        super().__init__(stores)
        self._index = index

    def get(self, key, default=None):
        self._index._need_stores(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self._index._need_stores(key)
        return super().__contains__(key)


class PartialIndex(CodeIndex):
    """A `CodeIndex` over some blocks of a `CodePlan`; `missing` collects the blocks
    its answers would have needed (see the module docstring)."""

    def __init__(self, plan: CodePlan, blocks: Iterable[int]):
        self._plan = plan
        decoded = np.zeros(len(plan), bool)
        decoded[sorted(blocks)] = True
        self._decoded_array = decoded
        self._decoded = decoded.tolist()  # per-query lookups: a list is faster
        self.missing: set[int] = set()
        self._gaps: set[int] = set()
        self._prepared = False
        super().__init__(plan.image, plan.slots, plan.skip)
        self._cache = plan.detail_cache
        self.const_stores = _CheckedStores(self, self.const_stores)

    # -- sweeping the chosen blocks -------------------------------------------------------

    def _select(self, start: int, end: int) -> list[tuple[int, int]]:
        plan = self._plan
        first = int(np.searchsorted(plan.block_starts, start, "left"))
        last = int(np.searchsorted(plan.block_starts, end, "left"))
        # One piece per block (block ends are instruction boundaries of the full
        # sweep), so that what a block holds is indexed once for every pass.
        return [
            (int(plan.block_starts[block]), int(plan.block_ends[block]))
            for block in range(first, last)
            if self._decoded[block]
        ]

    def _after_piece(self, end: int) -> None:
        """A marker instruction (no length, no fall-through) where undecoded code
        follows, so a scan by position stops there instead of running into the next
        decoded piece as if it were adjacent."""
        block = self._plan.block_of(end)
        if block is not None and self._decoded[block]:
            return  # the next run starts here and is decoded: truly adjacent
        self._gaps.add(len(self.starts))
        self.starts.append(end)
        self._info.append(NO_FALLTHROUGH << 4)

    def _sweep(self, chunk: memoryview, base: int) -> int:
        """The full sweep's indexing of one block, done the first time a pass needs
        the block and replayed by later passes."""
        if not self._prepared:
            self._prepared = True
            self._index_new_blocks()
        facts = self._plan.block_facts.get(base)
        if facts is None:
            facts = self._plan.block_facts[base] = self._index_block(chunk, base)
        starts, info, jumps, calls, api_sites, registers, register_jumps, loads, stores = facts
        self.starts.frombytes(starts)
        self._info.extend(info)
        for edges, (targets, sources) in ((self.jump_sources, jumps), (self.call_sources, calls)):
            edges._targets.extend(targets)
            edges._sources.extend(sources)
        self.api_sites.extend(api_sites)
        self._register_calls.extend(registers)
        self._register_jumps.extend(register_jumps)
        self.loads_slot = self.loads_slot or loads
        for target, values in stores.items():
            self.const_stores.setdefault(target, []).extend(values)
        return len(chunk)

    def _index_new_blocks(self) -> None:
        """Decode the blocks this pass adds (those that fit one capstone piece), index
        their instructions with one `_index_batch` call and split what it found per
        block: numpy's per-call cost, paid per block, was most of a pass."""
        plan = self._plan
        blocks = [
            int(b)
            for b in np.flatnonzero(self._decoded_array)
            if int(plan.block_starts[b]) not in plan.block_facts
            and plan.block_ends[b] - plan.block_starts[b] <= _PIECE_BYTES
        ]
        if not blocks:
            return
        data = plan.image.data
        batches = []
        for block in blocks:
            start, end = int(plan.block_starts[block]), int(plan.block_ends[block])
            base = plan.block_bases[block]
            batches.append(self._decode_lite(bytes(data[start + base : end + base]), start))
        facts = self._index_records(np.concatenate(batches))
        starts, info, jumps, calls, api_sites, registers, register_jumps, loads, stores = facts
        addresses = np.frombuffer(starts, np.uint32)
        bounds = np.array([int(plan.block_starts[b]) for b in blocks], np.int64)
        ends = np.array([int(plan.block_ends[b]) for b in blocks], np.int64)

        def split(rvas) -> tuple[np.ndarray, np.ndarray]:
            values = np.asarray(rvas, np.int64)
            return np.searchsorted(values, bounds, "left"), np.searchsorted(values, ends, "left")

        cuts = split(addresses)
        jump_cuts, call_cuts = split(jumps[1]), split(calls[1])
        site_cuts = split([site.rva for site in api_sites])
        register_cuts = split(registers)
        per_block_stores: list[dict] = [{} for _ in blocks]
        for target, values in stores.items():
            for value, rva in values:
                which = int(np.searchsorted(bounds, rva, "right")) - 1
                per_block_stores[which].setdefault(target, []).append((value, rva))
        for number, block in enumerate(blocks):
            low, high = cuts[0][number], cuts[1][number]
            j_low, j_high = jump_cuts[0][number], jump_cuts[1][number]
            c_low, c_high = call_cuts[0][number], call_cuts[1][number]
            r_low, r_high = register_cuts[0][number], register_cuts[1][number]
            plan.block_facts[int(plan.block_starts[block])] = (
                starts[4 * low : 4 * high], info[low:high],
                (jumps[0][j_low:j_high], jumps[1][j_low:j_high]),
                (calls[0][c_low:c_high], calls[1][c_low:c_high]),
                api_sites[site_cuts[0][number] : site_cuts[1][number]],
                registers[r_low:r_high], register_jumps[r_low:r_high],
                loads, per_block_stores[number],
            )  # fmt: skip

    def _index_block(self, chunk: memoryview, base: int) -> tuple:
        """`CodeIndex._sweep` of one block into fresh containers: its facts alone."""
        return self._isolated(lambda: CodeIndex._sweep(self, chunk, base))

    def _index_records(self, records: np.ndarray) -> tuple:
        """`CodeIndex._index_batch` of decoded records into fresh containers."""
        return self._isolated(lambda: self._index_batch(records))

    def _isolated(self, work) -> tuple:
        """Run indexing `work` into fresh containers and return what it filled (the
        per-block facts, see `_sweep`); the index's own containers are untouched.
        (A block's `loads_slot` is that of its batch: batches only grow together.)"""
        saved = (
            self.starts, self._info, self.jump_sources, self.call_sources, self.api_sites,
            self._register_calls, self._register_jumps, self.loads_slot, self.const_stores,
        )  # fmt: skip
        self.starts, self._info = array("I"), bytearray()
        self.jump_sources, self.call_sources = Edges(), Edges()
        self.api_sites, self.loads_slot, self.const_stores = [], False, {}
        self._register_calls, self._register_jumps = array("I"), bytearray()
        try:
            work()
            return (
                self.starts.tobytes(), bytes(self._info),
                (self.jump_sources._targets, self.jump_sources._sources),
                (self.call_sources._targets, self.call_sources._sources),
                self.api_sites, self._register_calls, bytes(self._register_jumps),
                self.loads_slot, self.const_stores,
            )  # fmt: skip
        finally:
            (
                self.starts, self._info, self.jump_sources, self.call_sources, self.api_sites,
                self._register_calls, self._register_jumps, self.loads_slot, self.const_stores,
            ) = saved  # fmt: skip

    def _is_gap(self, position: int) -> bool:
        if position in self._gaps:
            self._need(self.starts[position] - 1)
            self._need(self.starts[position])
            return True
        return False

    # -- noting what is needed -------------------------------------------------------------

    def _need(self, rva: int) -> bool:
        """Whether `rva` lies in an undecoded block (noted as missing)."""
        block = self._plan.block_of(rva)
        if block is not None and not self._decoded[block]:
            self.missing.add(block)
            return True
        return False

    def _need_sources(self, sources: Iterable[int]) -> None:
        block_of, decoded = self._plan.block_of, self._decoded
        for source in sources:
            block = block_of(source)
            if block is not None and not decoded[block]:
                self.missing.add(block)

    def _need_stores(self, rva: int) -> None:
        self._need_sources(self._plan.store_sources(rva))

    # -- the queries, answered as the full sweep would or noted --------------------------

    def index_of(self, rva: int) -> int | None:
        if self._need(rva):
            return None
        position = self._position(rva)
        return None if position in self._gaps else position

    def containing(self, rva: int) -> int | None:
        if self._need(rva):
            return None
        return super().containing(rva)

    def decode(self, rva: int):
        if self._need(rva):
            return None
        return super().decode(rva)

    def code_bytes(self, start: int, end: int) -> bytes:
        self._need(start)
        return super().code_bytes(start, end)

    def predecessors(self, index: int) -> list[int]:
        rva = self.starts[index]
        self._need_sources(self._plan.jump_sources(rva, rva + 1))
        block = self._plan.block_of(rva)
        if block is not None and self._plan.block_starts[block] == rva:
            self._need(rva - 1)  # fall-through from the code before
        return super().predecessors(index)

    def callers(self, function: int) -> list[tuple[int, bool]]:
        self._need_sources(self._plan.call_sources(function, function + 1))
        self._need_sources(self._plan.jump_sources(function, function + 1))
        return super().callers(function)

    def is_function_start(self, rva: int) -> bool:
        if self._need(rva):
            return False
        if rva not in self._function_set:
            self._need_sources(self._plan.call_sources(rva, rva + 1))
        return super().is_function_start(rva)

    def next_function_start(self, function: int) -> int | None:
        following = super().next_function_start(function)
        block = self._plan.block_of(function)
        high = following
        if high is None:
            high = int(self._plan.block_ends[block]) if block is not None else function + 1
        # A call from undecoded code to an instruction in between would make it an
        # entry; only instruction starts can be.
        sources = self._plan.call_sources(function + 1, high)
        if len(sources):
            calls = self._plan._calls
            assert calls is not None
            first = bisect.bisect_left(calls.targets, function + 1)
            targets = calls.targets[first : first + len(sources)]
            self._need_sources(
                source
                for source, target in zip(sources, targets)
                if self._position(target) is not None
            )
        return following

    @property
    def register_calls(self) -> Iterator[tuple[int, bool]]:
        seeds = self._plan.seeds
        return (
            (rva, jump) for rva, jump in super().register_calls if self._plan.block_of(rva) in seeds
        )


def analysis_indexes(
    image: DriverImage, slots: Iterable[int], skip: Iterable[tuple[int, int]] = ()
) -> Iterator[CodeIndex]:
    """Indexes to analyse `image` with, until one's analysis notes nothing `missing`
    (a plain `CodeIndex` never does): partial ones over growing sets of blocks, then,
    if those do not settle, the full sweep."""
    skip = list(skip)
    slots = frozenset(slots)
    plan = CodePlan(image, slots, skip) if _enabled() and image.arch == "x64" else None
    if plan is not None and plan.usable:
        blocks = set(plan.seeds)
        for _ in range(_MAX_PASSES):
            if len(blocks) > _MAX_SHARE * len(plan):
                break
            index = PartialIndex(plan, blocks)
            yield index
            if not index.missing:
                return
            blocks |= index.missing
    yield CodeIndex(image, slots, skip=skip)
