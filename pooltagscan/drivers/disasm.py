"""Disassembly of a driver's code: one linear sweep that indexes what the analysis needs.

The sweep decodes every executable section once with capstone's light mode (no
operand details, several times faster) and keeps only compact facts:

- where each instruction starts and how long it is (two arrays, 5 bytes per
  instruction), so any instruction can be decoded again in detail on demand and a
  backward walk can step from an instruction to the one before it;
- the direct control-flow edges: jump sources per target (predecessors of a block) and
  call sites per target (the callers of a function);
- every call or jump through an import address table slot (`call [rip+disp]`,
  `call [abs32]`, `jmp [slot]` thunks) and every call or jump through a register,
  whose target the data-flow pass resolves later (`mov rbx, [slot]` ... `call rbx`);
- constant stores to global variables (`mov dword [rip+disp], imm32`), which are the
  values a global tag can hold;
- function entries: x64 `.pdata`, call targets, the entry point and the exports.

Detailed decoding (operands, registers read and written) is done lazily, only for the
few hundred instructions a backward walk visits, and cached per file.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import capstone
import numpy as np
from capstone import x86 as cs_x86

from pooltagscan.drivers.bulk import clear_after_nul, decode_lite, text
from pooltagscan.drivers.pe import DriverImage

__all__ = ["ApiSite", "CodeIndex", "merge_ranges"]

# Instruction flags kept by the sweep.
NO_FALLTHROUGH = 1  # control never reaches the next instruction (jmp, ret, int3...)
PADDING = 2  # alignment filler between functions (nop forms)

_STOPS = frozenset({"ret", "retf", "iret", "iretd", "iretq", "int3", "ud2", "hlt", ".byte"})
_RIP_MEM = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]")
_ABS_MEM = re.compile(r"(?<![:\w])\[(0x[0-9a-f]+|\d+)\]")
_MAX_INSN = 15
_PIECE_BYTES = 64 * 1024  # code handed to capstone at a time (see CodeIndex._pieces)
#: Instructions indexed per file at most (5 bytes each: 60 MB; about 50 MB of x64 code).
#: Real drivers have a few million; the rest of a larger code section is not analysed,
#: with a note. With the file itself (at most MAX_IMAGE_BYTES) this bounds the RSS.
MAX_INSTRUCTIONS = 12_000_000


class _Bits:
    """A read-only view of some bits of every byte of a bytearray, indexed like a list."""

    __slots__ = ("_data", "_mask", "_shift")

    def __init__(self, data: bytearray, shift: int, mask: int):
        self._data, self._shift, self._mask = data, shift, mask

    def __getitem__(self, index: int) -> int:
        return (self._data[index] >> self._shift) & self._mask

    def __len__(self) -> int:
        return len(self._data)


class Edges:
    """Branch edges target -> sites, compact: two uint32 arrays, sorted by target once
    the sweep is over (random code holds a jump every few instructions; a dict of lists
    cost ~150 bytes per target, this costs 8 per edge)."""

    def __init__(self) -> None:
        self._targets = array("I")
        self._sources = array("I")

    def add(self, target: int, source: int) -> None:
        self._targets.append(target)
        self._sources.append(source)

    def extend(self, targets: np.ndarray, sources: np.ndarray) -> None:
        """`add` for many edges at once (RVAs below 2**32)."""
        self._targets.frombytes(targets.astype("<u4").tobytes())
        self._sources.frombytes(sources.astype("<u4").tobytes())

    def finish(self) -> None:
        if not self._targets:
            return
        # One uint64 key per edge, sorted in place: by target, then by site, which is
        # the sweep's own order (sections are swept by ascending RVA). No index array.
        keys = np.frombuffer(self._targets, np.uint32).astype(np.uint64) << np.uint64(32)
        keys |= np.frombuffer(self._sources, np.uint32)
        self._targets = self._sources = array("I")
        keys.sort()
        self._targets = array("I", (keys >> np.uint64(32)).astype(np.uint32).tobytes())
        self._sources = array("I", keys.astype(np.uint32).tobytes())

    def get(self, target: int) -> array:
        """The sites branching to `target` (empty when none)."""
        low = bisect.bisect_left(self._targets, target)
        high = bisect.bisect_right(self._targets, target, low)
        return self._sources[low:high]

    def __contains__(self, target: int) -> bool:
        low = bisect.bisect_left(self._targets, target)
        return low < len(self._targets) and self._targets[low] == target

    def targets(self) -> Iterator[int]:
        """Every distinct target."""
        previous = None
        for target in self._targets:
            if target != previous:
                yield target
                previous = target


@dataclass(frozen=True)
class ApiSite:
    """A call (or tail jump) that reaches an import address table slot."""

    rva: int
    slot: int
    jump: bool  # `jmp [slot]`: a thunk or a tail call; arguments are laid out as at entry


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping union of half-open ranges."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _number(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


_STOP_BYTES = [m.encode() for m in sorted(_STOPS)]
_LOOP = np.frombuffer(b"loop", np.uint8)
_RIP = np.frombuffer(b"rip", np.uint8)


_HEX_WIDTH = 18  # "0x" and at most 16 digits
_NIBBLE = np.full(256, 255, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _hex_operands(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of operand texts that are a lone hex number (`0x1a2b`), vectorised:
    (uint64 values, whether each text is one). Other texts (memory, registers, a
    decimal number) are left to the caller."""
    width = texts.dtype.itemsize
    grid = np.ascontiguousarray(texts).view(np.uint8).reshape(len(texts), width)
    grid = grid[:, : min(width, _HEX_WIDTH + 1)]
    ok = (grid[:, 0] == ord("0")) & (grid[:, 1] == ord("x"))
    if grid.shape[1] > _HEX_WIDTH:
        ok &= grid[:, _HEX_WIDTH] == 0
    digits = grid[:, 2:_HEX_WIDTH]
    present = np.logical_and.accumulate(digits != 0, axis=1)
    nibbles = _NIBBLE[digits]
    ok &= ~(present & (nibbles == 255)).any(axis=1)
    count = present.sum(axis=1)
    ok &= count > 0
    shifts = (count[:, None] - 1 - np.arange(digits.shape[1])[None, :]).clip(0) * 4
    values = np.where(present, nibbles.astype(np.uint64) << shifts.astype(np.uint64), 0)
    return values.sum(axis=1, dtype=np.uint64), ok


def _contains(texts: np.ndarray, needle: np.ndarray) -> np.ndarray:
    """Per fixed-width bytes string of `texts`, whether it holds `needle` (vectorised)."""
    width = texts.dtype.itemsize
    grid = np.ascontiguousarray(texts).view(np.uint8).reshape(len(texts), width)
    found = np.ones((len(texts), width - len(needle) + 1), bool)
    for offset, byte in enumerate(needle):
        found &= grid[:, offset : width - len(needle) + 1 + offset] == byte
    return found.any(axis=1)


class CodeIndex:
    """The indexed code of one image (see the module docstring)."""

    #: The sweep over capstone's records as numpy arrays (`bulk`); False runs the
    #: per-instruction Python twin, kept to show both index the same (tests compare).
    bulk = True

    def __init__(
        self,
        image: DriverImage,
        slots: Iterable[int],
        skip: Iterable[tuple[int, int]] = (),
        extra_starts: Iterable[int] = (),
    ):
        self.image = image
        self.is64 = image.arch == "x64"
        mode = capstone.CS_MODE_64 if self.is64 else capstone.CS_MODE_32
        self._lite = capstone.Cs(capstone.CS_ARCH_X86, mode)
        self._lite.skipdata = True
        self._detail = capstone.Cs(capstone.CS_ARCH_X86, mode)
        self._detail.detail = True
        self._slots = frozenset(slots)

        self.starts = array("I")
        # Per instruction, one byte: its length (at most 15) in the low four bits, its
        # flags (NO_FALLTHROUGH, PADDING) above them; `sizes` and `flags` read it.
        self._info = bytearray()
        self.sizes = _Bits(self._info, 0, 0x0F)
        self.flags = _Bits(self._info, 4, 0x03)
        self.jump_sources = Edges()  # target -> jump sites
        self.call_sources = Edges()  # target -> call sites
        self.api_sites: list[ApiSite] = []
        self._register_calls = array("I")  # `call reg` / `jmp reg` sites...
        self._register_jumps = bytearray()  # ...and whether each is a jump
        self.truncated_at: int | None = None  # RVA where the instruction budget ran out
        self.loads_slot = False  # some `mov reg, [slot]`: register calls need resolving
        self.const_stores: dict[int, list[tuple[int, int]]] = {}  # global -> (value, rva)
        self._code: list[tuple[int, int, memoryview]] = []  # (start, end, bytes) decoded
        self._code_starts: list[int] | None = None  # their starts, for bisect
        self._cache: dict[int, capstone.CsInsn | None] = {}

        view = memoryview(image.data)
        for run_start, run_end, base in code_runs(image, skip):
            if self.truncated_at is not None:
                break
            for piece_start, piece_end in self._select(run_start, run_end):
                if self.truncated_at is not None:
                    break
                chunk = view[piece_start + base : piece_end + base]
                swept_end = piece_start + self._sweep(chunk, piece_start)
                self._code.append((piece_start, swept_end, chunk[: swept_end - piece_start]))
                self._after_piece(piece_end)
        self._code.sort(key=lambda c: c[0])
        self.jump_sources.finish()
        self.call_sources.finish()

        starts = set(image.pdata_function_starts())
        starts.update(s.rva for s in self.api_sites if s.jump and self._after_padding(s.rva))
        starts.update(self.call_sources.targets())
        starts.add(image.entry_rva)
        starts.update(image.export_rvas())
        starts.update(extra_starts)
        self.function_starts = sorted(rva for rva in starts if self._position(rva) is not None)
        self._function_set = frozenset(self.function_starts)

    # -- hooks for an index of part of the code (candidates.PartialIndex) -----------------

    def _select(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of the code run [start, end) to sweep: all of it here."""
        return [(start, end)]

    def _after_piece(self, end: int) -> None:
        """Called after each swept part (nothing to do when everything is swept)."""

    def _decode_lite(self, code: bytes, address: int) -> np.ndarray:
        """capstone's light decoding of `code` as one array (`bulk.decode_lite`)."""
        return decode_lite(self._lite, code, address)

    def _is_gap(self, position: int) -> bool:
        """Whether `position` marks code that was not swept (never, here)."""
        return False

    # -- the sweep ----------------------------------------------------------------------

    def _pieces(self, chunk: memoryview, base: int) -> Iterable[tuple[int, int, str, str]]:
        """capstone's light decoding of `chunk`, in bounded pieces.

        capstone decodes a whole buffer into an array of ~240-byte instruction records
        before the first is returned (10 MiB of code cost 1.2 GB), so the sweep hands it
        _PIECE_BYTES at a time. An instruction starting within _MAX_INSN bytes of a
        piece's end may be cut by it, so the next piece starts there instead: the
        instructions are exactly those of one sweep over the whole chunk.
        """
        total = len(chunk)
        position = 0
        while position < total:
            end = min(total, position + _PIECE_BYTES)
            last = total if end == total else end - _MAX_INSN
            resume = position
            for insn in self._lite.disasm_lite(chunk[position:end], base + position):
                offset = insn[0] - base
                if offset >= last:
                    break
                yield insn
                resume = offset + insn[1]
            position = resume if resume > position else position + 1

    def _sweep(self, chunk: memoryview, base: int) -> int:
        """Index `chunk` (code at RVA `base`); returns how many of its bytes were swept
        (all of them unless the instruction budget ran out).

        The same pieces and instructions as `_pieces` (see there), each piece decoded by
        capstone into one array (`bulk.decode_lite`) and classified with array
        operations; only branches, `mov`s touching memory by address and the two-operand
        padding candidates are looked at one by one, by the same methods as in
        `_sweep_python`, in address order.
        """
        if not self.bulk:
            return self._sweep_python(chunk, base)
        total = len(chunk)
        position = 0
        while position < total:
            end = min(total, position + _PIECE_BYTES)
            last = total if end == total else end - _MAX_INSN
            batch = self._decode_lite(bytes(chunk[position:end]), base + position)
            offsets = batch["address"] - np.uint64(base)
            batch = batch[: int(np.searchsorted(offsets, last, "left"))]
            resume = position
            if len(batch):
                resume = int(batch["address"][-1]) - base + int(batch["size"][-1])
            room = MAX_INSTRUCTIONS - len(self.starts)
            if len(batch) > room:
                self._index_batch(batch[:room])
                self.truncated_at = int(batch["address"][room])
                return self.truncated_at - base
            self._index_batch(batch)
            position = resume if resume > position else position + 1
        return total

    def _index_batch(self, batch: np.ndarray) -> None:
        """Index decoded instructions (in address order): what `_sweep_python` does per
        instruction, as array operations plus a loop over the few that need a look."""
        count = len(batch)
        if not count:
            return
        self.starts.frombytes(batch["address"].astype("<u4").tobytes())
        mnemonics = np.ascontiguousarray(batch["mnemonic"])
        letters = mnemonics.view(np.uint8).reshape(count, mnemonics.dtype.itemsize)
        branch = (letters[:, 0] == ord("j")) | (mnemonics == b"call")
        branch |= (letters[:, : len(_LOOP)] == _LOOP).all(axis=1)
        stops = ~branch & np.isin(mnemonics, _STOP_BYTES)
        rest = ~(branch | stops)
        padding = rest & (mnemonics == b"nop")
        looks = np.flatnonzero(rest & ((mnemonics == b"xchg") | (mnemonics == b"lea")))
        operands = batch["op_str"]
        for i in looks:
            if _is_padding_text(mnemonics[i].decode("ascii"), text(operands[i])):
                padding[i] = True
        moves = np.flatnonzero(rest & ~padding & (mnemonics == b"mov"))
        if len(moves):
            texts = clear_after_nul(operands[moves])
            if self.is64:
                moves = moves[_contains(texts, _RIP)]
            else:
                moves = moves[(np.ascontiguousarray(texts).view(np.uint8) == ord("[")).reshape(
                    len(texts), texts.dtype.itemsize).any(axis=1)]  # fmt: skip
        flags = np.where(branch & (mnemonics == b"jmp"), NO_FALLTHROUGH, 0).astype(np.uint8)
        flags[stops] = NO_FALLTHROUGH
        flags[padding] = PADDING
        addresses, sizes = batch["address"], batch["size"]
        is_move = np.zeros(count, bool)
        is_move[moves] = True
        # Direct branches (`jne 0x1234`, `call 0x5678`): their edges in bulk; the
        # loop below only sees branches through memory or registers (and targets
        # capstone writes in decimal, which `_branch` reads as before).
        branches = np.flatnonzero(branch)
        if len(branches):
            targets, direct = _hex_operands(operands[branches])
            if direct.any():
                sites = addresses[branches[direct]]
                targets = targets[direct]
                calls = mnemonics[branches[direct]] == b"call"
                inside = targets <= np.uint64(0xFFFFFFFF)
                self.call_sources.extend(targets[inside & calls], sites[inside & calls])
                self.jump_sources.extend(targets[inside & ~calls], sites[inside & ~calls])
                branch = branch.copy()
                branch[branches[direct]] = False
        for i in np.flatnonzero(branch | is_move):
            address, size = int(addresses[i]), int(sizes[i])
            operand_text = text(operands[i])
            if is_move[i]:
                self._global_mov(address, size, operand_text)
            else:
                mnemonic = mnemonics[i].decode("ascii")
                self._branch(address, size, mnemonic, operand_text, mnemonic == "call")
        self._info.extend((sizes.astype(np.uint8) | (flags << 4)).tobytes())

    def _sweep_python(self, chunk: memoryview, base: int) -> int:
        """The per-instruction twin of `_sweep` (same results, several times slower)."""
        starts_append, info_append = self.starts.append, self._info.append
        is64 = self.is64
        room = MAX_INSTRUCTIONS - len(self.starts)
        for address, size, mnemonic, operands in self._pieces(chunk, base):
            if room <= 0:
                self.truncated_at = address
                return address - base
            room -= 1
            starts_append(address)
            flag = 0
            first = mnemonic[0]
            if first == "j" or mnemonic == "call" or mnemonic.startswith("loop"):
                is_call = mnemonic == "call"
                if mnemonic == "jmp":
                    flag = NO_FALLTHROUGH
                self._branch(address, size, mnemonic, operands, is_call)
            elif mnemonic in _STOPS:
                flag = NO_FALLTHROUGH
            elif mnemonic == "nop" or _is_padding_text(mnemonic, operands):
                flag = PADDING
            elif mnemonic == "mov" and ("rip" in operands if is64 else "[" in operands):
                self._global_mov(address, size, operands)
            info_append(size | flag << 4)
        return len(chunk)

    @property
    def register_calls(self) -> Iterator[tuple[int, bool]]:
        """(rva, is jump) of every call or jump through a register, in address order."""
        return zip(self._register_calls, map(bool, self._register_jumps))

    def _branch(self, address: int, size: int, mnemonic: str, operands: str, is_call: bool) -> None:
        target = _number(operands)
        if target is not None:
            if 0 <= target <= 0xFFFFFFFF:  # beyond the image's RVAs: nothing to find there
                (self.call_sources if is_call else self.jump_sources).add(target, address)
            return
        if "[" not in operands:
            if mnemonic in ("call", "jmp"):
                self._register_calls.append(address)
                self._register_jumps.append(not is_call)
            return
        slot = self._memory_target(address, size, operands)
        if slot is not None and slot in self._slots and mnemonic in ("call", "jmp"):
            self.api_sites.append(ApiSite(address, slot, jump=not is_call))

    def _memory_target(self, address: int, size: int, operands: str) -> int | None:
        """RVA of a `[rip+disp]` (x64) or `[abs32]` (x86) operand, else None."""
        if self.is64:
            match = _RIP_MEM.search(operands)
            if not match:
                return None
            disp = int(match.group(2), 0)
            return address + size + (disp if match.group(1) == "+" else -disp)
        match = _ABS_MEM.search(operands)
        if not match:
            return None
        return (int(match.group(1), 0) - self.image.image_base) & 0xFFFFFFFF

    def _global_mov(self, address: int, size: int, operands: str) -> None:
        destination, _, source = operands.partition(", ")
        if "[" in destination:
            if destination.startswith("dword ptr") and source:
                value = _number(source)
                target = self._memory_target(address, size, destination)
                if value is not None and target is not None:
                    self.const_stores.setdefault(target, []).append((value & 0xFFFFFFFF, address))
        elif "[" in source and not self.loads_slot:
            target = self._memory_target(address, size, source)
            if target is not None and target in self._slots:
                self.loads_slot = True

    def _after_padding(self, rva: int) -> bool:
        """Whether only alignment padding separates `rva` from the end of the code before
        it: then `rva` begins a function (an import thunk, for `jmp [slot]`)."""
        position = self.index_of(rva)
        if position is None:
            return False
        cursor = position - 1
        while cursor >= 0 and position - cursor <= 16:
            if self._is_gap(cursor):
                return True  # PartialIndex: noted as code it needs
            if self.flags[cursor] & NO_FALLTHROUGH:
                return True
            if not self.flags[cursor] & PADDING:
                return False
            cursor -= 1
        return cursor < 0

    # -- queries --------------------------------------------------------------------------

    def index_of(self, rva: int) -> int | None:
        """Position of the instruction starting at `rva`, or None."""
        return self._position(rva)

    def _position(self, rva: int) -> int | None:
        index = bisect.bisect_left(self.starts, rva)
        if index < len(self.starts) and self.starts[index] == rva:
            return index
        return None

    def is_instruction(self, rva: int) -> bool:
        return self.index_of(rva) is not None

    def containing(self, rva: int) -> int | None:
        """Position of the instruction whose bytes cover `rva`."""
        index = bisect.bisect_right(self.starts, rva) - 1
        if index >= 0 and rva < self.starts[index] + self.sizes[index]:
            return index
        return None

    def is_function_start(self, rva: int) -> bool:
        return rva in self._function_set

    def next_function_start(self, function: int) -> int | None:
        """The first function entry after `function`, or None."""
        following = bisect.bisect_right(self.function_starts, function)
        if following < len(self.function_starts):
            return self.function_starts[following]
        return None

    def function_of(self, rva: int) -> int | None:
        """The nearest function entry at or before `rva`."""
        index = bisect.bisect_right(self.function_starts, rva) - 1
        return self.function_starts[index] if index >= 0 else None

    def predecessors(self, index: int) -> list[int]:
        """Instruction positions control can come from into instruction `index`."""
        result = []
        if index > 0:
            previous = index - 1
            if (
                self.starts[previous] + self.sizes[previous] == self.starts[index]
                and not self.flags[previous] & NO_FALLTHROUGH
            ):
                result.append(previous)
        for source in self.jump_sources.get(self.starts[index]):
            position = self.index_of(source)
            if position is not None:
                result.append(position)
        return result

    def callers(self, function: int) -> list[tuple[int, bool]]:
        """(site, is tail jump) of every direct call or unconditional jump to `function`."""
        sites = [(rva, False) for rva in self.call_sources.get(function)]
        for rva in self.jump_sources.get(function):
            insn = self.decode(rva)
            if insn is not None and insn.mnemonic == "jmp":
                sites.append((rva, True))
        return sites

    def code_bytes(self, start: int, end: int) -> bytes:
        """The decoded code bytes between two RVAs (within one decoded run)."""
        if self._code_starts is None:
            self._code_starts = [run[0] for run in self._code]
        position = bisect.bisect_right(self._code_starts, start) - 1
        if position >= 0:
            run_start, run_end, chunk = self._code[position]
            if start < run_end:
                return bytes(chunk[start - run_start : min(end, run_end) - run_start])
        return b""

    def register_name(self, register: int) -> str:
        """Capstone's name of a register id (`r8d`)."""
        return self._detail.reg_name(register) or ""

    def decode(self, rva: int) -> capstone.CsInsn | None:
        """The instruction at `rva` with full operand details (cached)."""
        if rva in self._cache:
            return self._cache[rva]
        insn = None
        raw = self.code_bytes(rva, rva + _MAX_INSN)
        if raw:
            insn = next(self._detail.disasm(raw, rva, 1), None)
        self._cache[rva] = insn
        return insn

    def thunk_slot(self, function: int) -> int | None:
        """The IAT slot when `function` is a lone `jmp [slot]` import thunk."""
        insn = self.decode(function)
        if insn is None or insn.mnemonic != "jmp" or len(insn.operands) != 1:
            return None
        operand = insn.operands[0]
        if operand.type != cs_x86.X86_OP_MEM or operand.mem.index:
            return None
        if self.is64:
            if operand.mem.base != cs_x86.X86_REG_RIP:
                return None
            return insn.address + insn.size + operand.mem.disp
        if operand.mem.base:
            return None
        return (operand.mem.disp - self.image.image_base) & 0xFFFFFFFF


def _is_padding_text(mnemonic: str, operands: str) -> bool:
    """The two-operand filler forms: `xchg ax, ax` and `lea esi, [esi]` (capstone shows
    `lea esi, [esi+eiz*1+0]` that way too); plain and multi-byte `nop` are checked by
    the caller, `int3` stops the sweep's fall-through anyway."""
    if mnemonic == "xchg":
        return operands == "ax, ax"
    if mnemonic == "lea":
        register, _, memory = operands.partition(", ")
        return memory == f"[{register}]"
    return False


def code_runs(
    image: DriverImage, skip: Iterable[tuple[int, int]] = ()
) -> list[tuple[int, int, int]]:
    """(start RVA, end RVA, file offset minus RVA) of the code the sweep decodes, in
    address order: the executable sections less `skip`.

    Section headers may alias (overlapping RVAs, or the same raw bytes given again at
    other RVAs, a trick to multiply a disassembler's work): every RVA and every file
    byte is in one run at most.
    """
    skipped = merge_ranges(skip)
    runs: list[tuple[int, int, int]] = []
    swept_rvas: list[tuple[int, int]] = []
    swept_raw: list[tuple[int, int]] = []
    for section in sorted(image.executable_sections(), key=lambda s: s.rva):
        start, end = section.rva, section.rva + section.loaded_size
        base = section.raw_offset - section.rva
        aliased = [(lo - base, hi - base) for lo, hi in swept_raw]
        holes = merge_ranges([*skipped, *swept_rvas, *aliased])
        for run_start, run_end in _subtract((start, end), holes):
            runs.append((run_start, run_end, base))
            swept_rvas.append((run_start, run_end))
            swept_raw.append((run_start + base, run_end + base))
    return runs


def _subtract(span: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`span` minus the (sorted, merged) `holes`."""
    start, end = span
    pieces = []
    for hole_start, hole_end in holes:
        if hole_end <= start or hole_start >= end:
            continue
        if hole_start > start:
            pieces.append((start, hole_start))
        start = max(start, hole_end)
    if start < end:
        pieces.append((start, end))
    return pieces
