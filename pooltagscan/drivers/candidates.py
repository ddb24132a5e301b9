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

import os
import struct
from collections.abc import Iterable, Iterator

import numpy as np

from pooltagscan.drivers.disasm import MAX_INSTRUCTIONS, NO_FALLTHROUGH, CodeIndex, code_runs
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


def _le32(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Signed little-endian dwords of `data` at `offsets` (all within bounds)."""
    values = data[offsets].astype(np.uint32)
    for shift in (1, 2, 3):
        values |= data[offsets + shift].astype(np.uint32) << np.uint32(8 * shift)
    return values.view(np.int32).astype(np.int64)


def _add_candidates(
    into: tuple[list, list],
    code: np.ndarray,
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
        disp = _le32(code, offsets + disp_at)
    else:
        disp = code[offsets + disp_at].view(np.int8).astype(np.int64)
    into[0].append(offsets + start + length + disp)
    into[1].append(offsets + start)


class _Edges:
    """Candidate (target, source) pairs sorted by target."""

    def __init__(self, targets: list[np.ndarray], sources: list[np.ndarray]):
        target = np.concatenate(targets) if targets else np.zeros(0, np.int64)
        source = np.concatenate(sources) if sources else np.zeros(0, np.int64)
        order = np.argsort(target, kind="stable")
        self.targets, self.sources = target[order], source[order]

    def between(self, low: int, high: int) -> np.ndarray:
        """Sources of candidates whose target lies in [low, high)."""
        first = np.searchsorted(self.targets, low, "left")
        last = np.searchsorted(self.targets, high, "left")
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
        for run_start, run_end, _base in self.runs:
            low = np.searchsorted(begins, run_start, "right")
            high = np.searchsorted(begins, run_end, "left")
            edges = [run_start, *begins[low:high], run_end]
            starts += edges[:-1]
            ends += edges[1:]
        self.block_starts = np.array(starts, np.int64)
        self.block_ends = np.array(ends, np.int64)
        code = sum(end - start for start, end, _ in self.runs)
        #: Whether a partial index can stand for the full sweep here.
        self.usable = bool(begins) and len(starts) > 1 and code <= MAX_INSTRUCTIONS
        self.decoded_pieces: dict[tuple[int, int], np.ndarray] = {}
        self._calls: _Edges | None = None
        self._jumps: _Edges | None = None
        self._stores: _Edges | None = None
        self._seeds: frozenset[int] | None = None
        #: Detailed decodes by RVA, valid for every pass (the bytes do not change).
        self.detail_cache: dict = {}

    def __len__(self) -> int:
        return len(self.block_starts)

    def block_of(self, rva: int) -> int | None:
        """The block holding `rva`, or None outside the swept code."""
        block = int(np.searchsorted(self.block_starts, rva, "right")) - 1
        if block >= 0 and rva < self.block_ends[block]:
            return block
        return None

    def blocks_of(self, rvas: np.ndarray) -> np.ndarray:
        """Block of each RVA (-1 outside the swept code)."""
        blocks = np.searchsorted(self.block_starts, rvas, "right") - 1
        inside = (blocks >= 0) & (rvas < self.block_ends[np.maximum(blocks, 0)])
        return np.where(inside, blocks, -1)

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
                offsets = np.arange(len(code) - 3)
                rvas = offsets + start
                hits = rvas[np.isin(rvas + 4 + _le32(code, offsets), wanted)]
                found.update(int(b) for b in self.blocks_of(hits) if b >= 0)
            self._seeds = frozenset(found)
        return self._seeds

    def _build_edges(self) -> None:
        calls: tuple[list, list] = ([], [])
        jumps: tuple[list, list] = ([], [])
        stores: tuple[list, list] = ([], [])
        for start, code in self._code():
            size = len(code)

            def add(into, mask, length, disp_at, wide, code=code, start=start) -> None:
                _add_candidates(into, code, start, mask, length, disp_at, wide)

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

    def call_sources(self, low: int, high: int) -> np.ndarray:
        if self._calls is None:
            self._build_edges()
        assert self._calls is not None
        return self._calls.between(low, high)

    def jump_sources(self, low: int, high: int) -> np.ndarray:
        if self._jumps is None:
            self._build_edges()
        assert self._jumps is not None
        return self._jumps.between(low, high)

    def store_sources(self, rva: int) -> np.ndarray:
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
        self._decoded = np.zeros(len(plan), bool)
        self._decoded[sorted(blocks)] = True
        self.missing: set[int] = set()
        self._gaps: set[int] = set()
        super().__init__(plan.image, plan.slots, plan.skip)
        self._cache = plan.detail_cache
        self.const_stores = _CheckedStores(self, self.const_stores)

    # -- sweeping the chosen blocks -------------------------------------------------------

    def _select(self, start: int, end: int) -> list[tuple[int, int]]:
        plan = self._plan
        first = int(np.searchsorted(plan.block_starts, start, "left"))
        last = int(np.searchsorted(plan.block_starts, end, "left"))
        pieces: list[tuple[int, int]] = []
        for block in range(first, last):
            if not self._decoded[block]:
                continue
            low, high = int(plan.block_starts[block]), int(plan.block_ends[block])
            if pieces and pieces[-1][1] == low:
                pieces[-1] = (pieces[-1][0], high)
            else:
                pieces.append((low, high))
        return pieces

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

    def _decode_lite(self, code: bytes, address: int) -> np.ndarray:
        key = (address, len(code))
        cached = self._plan.decoded_pieces.get(key)
        if cached is None:
            cached = super()._decode_lite(code, address)
            self._plan.decoded_pieces[key] = cached
        return cached

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

    def _need_sources(self, sources: np.ndarray) -> None:
        if not len(sources):
            return
        blocks = self._plan.blocks_of(sources)
        for block in blocks[blocks >= 0]:
            if not self._decoded[block]:
                self.missing.add(int(block))

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
            first = np.searchsorted(calls.targets, function + 1, "left")
            targets = calls.targets[first : first + len(sources)]
            keep = [
                i for i, target in enumerate(targets) if self._position(int(target)) is not None
            ]
            self._need_sources(sources[keep])
        return following

    @property
    def register_calls(self) -> Iterator[tuple[int, bool]]:
        seeds = self._plan.seeds
        return (
            (rva, jump)
            for rva, jump in super().register_calls
            if self._plan.block_of(rva) in seeds
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
