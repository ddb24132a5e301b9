"""Recovering the tag argument of a pool API call by following its value backwards.

Starting at a call site with the location of the tag argument (a register or a stack
slot), the walk steps backwards instruction by instruction, through fall-through and
jump predecessors, until an instruction defines that location:

- `mov loc, imm` (also `push imm`, `xor r, r`) ends the walk with a constant;
- `mov loc, reg`, `mov loc, [rsp+N]`, `pop`, `cmov`, `lea r, [base+disp]` and stack
  pointer changes (`push`, `pop`, `sub/add rsp`, callee-popped x86 arguments) move the
  walk onto another location - this is how an immediate moved through another register,
  or stored to an argument slot with `mov [esp+N], reg`, is still found;
- `or/and/xor/add/sub/shl/shr loc, imm` are remembered and applied to the constant at
  the end (`tag | PROTECTED_POOL` in a free wrapper); `sbb r, r` starts the branchless
  select idiom (`cond ? A : B` compiled as sbb/and/add) and yields both outcomes;
- `mov loc, [global]` ends with the global's address: its initial value in the image
  and the constants the code stores into it are the tags (evidence `global`; `data`
  when the variable lies in a read-only section, a constant the compiler did not fold);
- `call F` where the location is the return register and F is a function of the
  driver: the values F returns (`mov eax, imm; ret`) are followed (evidence `return`);
- reaching a function entry with a location the caller sets (an argument register or a
  stack slot above the return address) ends with "parameter of function F": the
  resolver then repeats the walk at every direct caller of F (wrappers, and import
  thunks, which are wrappers of one instruction);
- anything else (a value loaded through a pointer, a call's return value, arithmetic
  on unknowns, no way back) ends as unknown, with the reason, and the caller of this
  module may fall back to the YARA heuristic.

All paths are followed, so a tag chosen on two branches yields both constants. The walk
is bounded (instructions per path, states per resolution, wrapper depth), and so is the
whole file's analysis: a work budget shared by every walk (`DEFAULT_BUDGET`). What the
walks find above a function's parameter is remembered per (call site, location,
pending arithmetic, depth), so wrappers called from many wrappers are resolved once
each, not once per path through them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import capstone
from capstone import x86 as cs_x86

from pooltagscan.drivers.apis import PoolApi
from pooltagscan.drivers.disasm import NO_FALLTHROUGH, ApiSite, CodeIndex

__all__ = [
    "DATA",
    "DIRECT",
    "GLOBAL",
    "RETURN",
    "WRAPPER",
    "TagResolver",
    "TagValue",
    "Value",
]

DIRECT, WRAPPER, GLOBAL = "direct", "wrapper", "global"
#: A read-only initialised constant loaded into the tag argument, and a tag returned by
#: a helper function: both weaker than an immediate at the call (see attribution.py).
DATA, RETURN = "data", "return"
_MAX_RETURN_DEPTH = 2  # helpers returning what other helpers return

_MASK = 0xFFFFFFFF
_SCN_MEM_WRITE = 0x80000000
_HIGH_HALF = ("hi32", 0)  # pending: the upper 32 bits of a 64-bit value
_MAX_DISTANCE = 400  # instructions along one path
_MAX_STATES = 5000  # states visited by one backward walk
_MAX_OPS = 8  # pending arithmetic steps (more means a loop is changing the value)
_MAX_WRAPPER_DEPTH = 4
# FLT_CONTEXT_END, and how many context registrations are read (FltMgr has 8 context
# types, each registered once or a few times for different sizes).
_REGISTRATION_END = 0xFFFF
_MAX_REGISTRATIONS = 64
#: Work allowed per file, in backward-walk states and instructions scanned. Real drivers
#: use a few thousand to a few hundred thousand; a file built to fan out (every wrapper
#: called from dozens of others, level after level) stops here with a note instead of
#: running for minutes. Results found before the budget ran out are kept.
DEFAULT_BUDGET = 2_000_000
BUDGET_REASON = "the per-file analysis budget ran out"

_REG, _MEM, _IMM = cs_x86.X86_OP_REG, cs_x86.X86_OP_MEM, cs_x86.X86_OP_IMM
_ARITHMETIC = frozenset({"add", "sub", "or", "and", "xor", "shl", "sal", "shr", "rol", "ror"})
_READ_ONLY_MEMORY = frozenset({"cmp", "test", "push", "bt", "call", "jmp", "prefetch"})
_SP_SPECIAL = frozenset(
    {"leave", "enter", "pushfd", "pushfq", "popfd", "popfq", "pushal", "popal", "pushad", "popad"}
)
_X64_ARGS = ("rcx", "rdx", "r8", "r9")
_VOLATILE = {
    True: frozenset({"rax", "rcx", "rdx", "r8", "r9", "r10", "r11"}),
    False: frozenset({"rax", "rcx", "rdx"}),
}


def _families() -> dict[str, str]:
    """Register name -> the name of its full 64-bit register (`r8d` -> `r8`)."""
    table = {}
    for letters, low in (("ax", "al"), ("bx", "bl"), ("cx", "cl"), ("dx", "dl")):
        family = "r" + letters
        for name in (family, "e" + letters, letters, low, letters[0] + "h"):
            table[name] = family
    for letters in ("si", "di", "bp", "sp"):
        family = "r" + letters
        for name in (family, "e" + letters, letters, letters + "l"):
            table[name] = family
    for number in range(8, 16):
        family = f"r{number}"
        for suffix in ("", "d", "w", "b"):
            table[family + suffix] = family
    return table


_FAMILY = _families()

# A location is ("reg", family), ("stk", offset from the stack pointer) or
# ("frm", base register family, offset): a slot addressed through the frame pointer.
Location = tuple


@dataclass(frozen=True)
class Value:
    """One outcome of a backward walk.

    `kind` is "const" (`value` is the constant with pending arithmetic applied, `where`
    the instruction that set it), "global" (`value` is the variable's RVA), "param"
    (`value` is the function entry, `location` where the caller puts the argument),
    "return" (`value` is a function of the driver whose return value it is), or
    "unknown" (`reason` says why). Walks for a pointer (`TagResolver.pointer_values`)
    also give "address" (`value` an RVA: `lea r, [rip+X]`), "stack" (`value` the
    offset from the stack pointer at the instruction `where`: `lea r, [rsp+N]`) and
    "frame" (`value` the offset from the frame pointer: `lea r, [ebp-N]`).
    """

    kind: str
    value: int = 0
    where: int = -1
    location: Location | None = None
    ops: tuple[tuple[str, int], ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class TagValue:
    """A tag constant that reaches a pool API, with how it was found.

    `site` is the call whose argument carries the constant (the API call, or the
    outermost wrapper call); `api_site` the call to the API itself (through a thunk:
    the call to the thunk); `via` the wrapper functions between them, innermost first;
    `source` the instruction that loads the constant, or the global variable's RVA.
    """

    value: int
    evidence: str
    site: int
    api_site: int
    source: int
    via: tuple[int, ...] = ()


@dataclass
class SiteResult:
    """What the resolver learned about one API call site."""

    site: ApiSite
    values: list[TagValue] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def apply_ops(value: int, ops: tuple[tuple[str, int], ...]) -> int:
    """Apply remembered arithmetic, in execution order, to a 32-bit constant."""
    for op, operand in ops:
        if op == "add":
            value += operand
        elif op == "sub":
            value -= operand
        elif op == "or":
            value |= operand
        elif op == "and":
            value &= operand
        elif op == "xor":
            value ^= operand
        elif op in ("shl", "sal"):
            value <<= operand & 31
        elif op == "shr":
            value = (value & _MASK) >> (operand & 31)
        elif op == "rol":
            shift = operand & 31
            value = ((value << shift) | ((value & _MASK) >> (32 - shift))) if shift else value
        elif op == "ror":
            shift = operand & 31
            value = (((value & _MASK) >> shift) | (value << (32 - shift))) if shift else value
        value &= _MASK
    return value & _MASK


class TagResolver:
    """Backward data flow over one `CodeIndex`; see the module docstring."""

    def __init__(
        self, index: CodeIndex, pool_slots: Mapping[int, PoolApi], budget: int = DEFAULT_BUDGET
    ):
        self.index = index
        self.budget = budget
        self.spent = 0  # walk states and instructions scanned so far
        self._memo: dict[tuple, _Found] = {}
        self.image = index.image
        self.is64 = index.is64
        self.ptr = 8 if self.is64 else 4
        self.pool_slots = pool_slots
        self._volatile = _VOLATILE[self.is64]
        self._reg_names: dict[int, str | None] = {}
        self._callee_pops: dict[int, int | None] = {}
        self._clobbers: dict[int, frozenset[str]] = {}
        self._register_targets: dict[int, int] = {}  # `call reg` site -> IAT slot
        self._want_address = False  # a walk for a pointer: `lea` gives an address
        #: Finds the instructions naming some addresses (set by the caller: see
        #: indirect.data_references); used for stores into global structures.
        self.reference_finder: Callable[[set[int]], list[int]] | None = None
        self._returns: dict[tuple, list[tuple[int, int]]] = {}

    def add_call_targets(self, targets: Mapping[int, int]) -> None:
        """Indirect call sites whose target is known (site -> key of `pool_slots`), so
        that x86 walks know how many argument bytes those callees pop."""
        self._register_targets.update(targets)

    # -- argument locations --------------------------------------------------------------

    def argument(self, api: PoolApi, jump: bool) -> Location:
        """Where the tag argument of `api` is just before a call (or a tail jump) to it."""
        if self.is64:
            if api.tag_index < 4:
                return ("reg", _X64_ARGS[api.tag_index])
            offset = 0x20 + 8 * (api.tag_index - 4)
        else:
            offset = 4 * api.x86_slot
        # A jump leaves the return address of the current function on the stack.
        return ("stk", offset + (self.ptr if jump else 0))

    # -- register helpers -----------------------------------------------------------------

    def _family(self, reg: int) -> str | None:
        name = self._reg_names.get(reg)
        if name is None and reg not in self._reg_names:
            name = _FAMILY.get(self.index.register_name(reg))
            self._reg_names[reg] = name
        return name

    def _writes(self, insn: capstone.CsInsn, family: str) -> bool:
        try:
            _, written = insn.regs_access()
        except capstone.CsError:
            return True
        return any(self._family(r) == family for r in written)

    # -- the walk ---------------------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        """Whether the file's work budget ran out (later walks gave up at once)."""
        return self.spent >= self.budget

    def _spend(self, amount: int) -> bool:
        """Charge `amount` to the budget; False once it is used up."""
        self.spent += amount
        return self.spent < self.budget

    def walk(self, rva: int, location: Location, ops: tuple = ()) -> list[Value]:
        """Every value `location` can hold just before the instruction at `rva` runs."""
        index = self.index
        start = index.index_of(rva)
        if start is None:
            return [Value("unknown", reason=f"no instruction at {rva:#x}")]
        if self.exhausted:
            return [Value("unknown", reason=BUDGET_REASON)]
        results: list[Value] = []
        stack = [(start, location, ops, 0)]
        seen: set = set()
        while stack:
            position, loc, pending, distance = stack.pop()
            key = (position, loc, pending)
            if key in seen:
                continue
            seen.add(key)
            if not self._spend(1):
                results.append(Value("unknown", reason=BUDGET_REASON))
                break
            if len(seen) > _MAX_STATES:
                results.append(Value("unknown", reason="too many paths to follow"))
                break
            here = index.starts[position]
            if index.is_function_start(here):
                results.append(self._at_entry(here, loc, pending))
                continue
            predecessors = index.predecessors(position)
            if not predecessors:
                results.append(
                    Value("unknown", reason=f"no known path into {here:#x} (unknown caller)")
                )
                continue
            if distance >= _MAX_DISTANCE:
                results.append(Value("unknown", reason="definition too far back"))
                continue
            for previous in predecessors:
                insn = index.decode(index.starts[previous])
                if insn is None:
                    results.append(Value("unknown", reason="undecodable instruction"))
                    continue
                for outcome in self._step(insn, loc, pending):
                    if isinstance(outcome, Value):
                        results.append(outcome)
                    elif len(outcome[1]) > _MAX_OPS:
                        results.append(Value("unknown", reason="value changes in a loop"))
                    else:
                        stack.append((previous, outcome[0], outcome[1], distance + 1))
        return results

    def _at_entry(self, function: int, loc: Location, ops: tuple) -> Value:
        """The walk reached a function entry: is `loc` something the caller sets?"""
        if loc[0] == "reg" and loc[1] != "rsp":
            return Value("param", function, location=loc, ops=ops)
        if loc[0] == "stk" and loc[1] >= self.ptr:
            return Value("param", function, location=loc, ops=ops)
        return Value("unknown", reason=f"not an argument at the entry of {function:#x}")

    def _step(self, insn: capstone.CsInsn, loc: Location, ops: tuple) -> list:
        if loc[0] == "reg":
            return self._step_register(insn, loc[1], ops)
        if loc[0] == "stk":
            return self._step_stack(insn, loc[1], ops)
        return self._step_frame(insn, loc[1], loc[2], ops)

    def _unknown(self, insn: capstone.CsInsn, what: str) -> Value:
        return Value("unknown", reason=f"{what} at {insn.address:#x} ({insn.mnemonic})")

    def _source(self, insn: capstone.CsInsn, operand, ops: tuple):
        """The value an instruction copies from `operand` (a Value or a new location)."""
        if operand.type == _IMM:
            immediate = operand.imm
            if ops and ops[0] == _HIGH_HALF:
                # The tag is the upper half of a 64-bit store (`movabs rax, imm64`
                # then `mov [rsp+N-4], rax`: compilers merge adjacent fields).
                immediate, ops = immediate >> 32, ops[1:]
            return Value("const", apply_ops(immediate & _MASK, ops), where=insn.address)
        if ops and _HIGH_HALF in ops:
            return self._unknown(insn, "upper half of a computed value")
        if operand.type == _REG:
            family = self._family(operand.reg)
            if family is None or family == "rsp" or operand.size < 4:
                return self._unknown(insn, "copied from a partial or special register")
            return (("reg", family), ops)
        if operand.type != _MEM:
            return self._unknown(insn, "unsupported operand")
        mem = operand.mem
        if mem.segment or mem.index:
            return self._unknown(insn, "loaded from computed memory")
        if mem.base == cs_x86.X86_REG_RIP:
            target = insn.address + insn.size + mem.disp
            return Value("global", target, where=insn.address, ops=ops)
        if mem.base == 0:
            target = (mem.disp - self.image.image_base) & _MASK
            return Value("global", target, where=insn.address, ops=ops)
        family = self._family(mem.base)
        if family == "rsp":
            return (("stk", mem.disp), ops)
        if family == "rbp":
            return (("frm", "rbp", mem.disp), ops)
        return self._unknown(insn, "loaded through a pointer")

    def _step_register(self, insn: capstone.CsInsn, family: str, ops: tuple) -> list:
        mnemonic = insn.mnemonic
        if mnemonic == "call":
            if family in self._volatile and family in self._call_clobbers(insn):
                if family == "rax":
                    target = self._direct_target(insn)
                    if target is not None and self.index.thunk_slot(target) is None:
                        return [Value("return", target, where=insn.address, ops=ops)]
                return [self._unknown(insn, "result or leftover of a call")]
            return [(("reg", family), ops)]
        if not self._writes(insn, family):
            return [(("reg", family), ops)]
        operands = insn.operands
        destination = operands[0] if operands else None
        source = operands[1] if len(operands) > 1 else None
        if (
            destination is None
            or destination.type != _REG
            or self._family(destination.reg) != family
        ):
            if (
                mnemonic == "xchg"
                and source is not None
                and source.type == _REG
                and destination is not None
            ):
                return [self._source(insn, destination, ops)]
            return [self._unknown(insn, "set implicitly")]
        if destination.size < 4:
            return [self._unknown(insn, "partial register write")]
        if mnemonic in ("mov", "movabs") and source is not None:
            return [self._source(insn, source, ops)]
        if mnemonic in ("movsxd", "movsx", "movzx") and source is not None:
            if source.size >= 4:
                return [self._source(insn, source, ops)]
            return [self._unknown(insn, "widened from a narrower value")]
        if (
            mnemonic in ("xor", "sub")
            and source is not None
            and source.type == _REG
            and self._family(source.reg) == family
        ):
            return [Value("const", apply_ops(0, ops), where=insn.address)]
        if (
            mnemonic == "sbb"
            and source is not None
            and source.type == _REG
            and self._family(source.reg) == family
        ):
            # The branchless select idiom (`cond ? A : B` as sbb/and/add): the register is
            # 0 or all ones depending on the carry flag, so the result is one of two.
            return [
                Value("const", apply_ops(0, ops), where=insn.address),
                Value("const", apply_ops(_MASK, ops), where=insn.address),
            ]
        if mnemonic in _ARITHMETIC and source is not None and source.type == _IMM:
            return [(("reg", family), ((mnemonic, source.imm & _MASK),) + ops)]
        if mnemonic == "not" and source is None:
            return [(("reg", family), (("xor", _MASK),) + ops)]
        if mnemonic == "lea" and source is not None:
            mem = source.mem
            base = self._family(mem.base) if mem.base else None
            if self._want_address and not mem.index and not mem.segment:
                if mem.base == cs_x86.X86_REG_RIP:
                    target = insn.address + insn.size + mem.disp
                    return [Value("address", target, where=insn.address)]
                if base == "rsp":
                    return [Value("stack", mem.disp, where=insn.address)]
                if base == "rbp":
                    return [Value("frame", mem.disp, where=insn.address)]
            if base and base != "rsp" and mem.base != cs_x86.X86_REG_RIP and not mem.index:
                return [(("reg", base), (("add", mem.disp & _MASK),) + ops)]
            return [self._unknown(insn, "an address")]
        if mnemonic.startswith("cmov") and source is not None:
            return [self._source(insn, source, ops), (("reg", family), ops)]
        if mnemonic == "pop":
            return [(("stk", 0), ops)]
        if mnemonic == "xchg" and source is not None:
            return [self._source(insn, source, ops)]
        return [self._unknown(insn, "computed")]

    def _stack_pointer_change(self, insn: capstone.CsInsn, offset: int, ops: tuple):
        """For instructions that write the stack pointer: the slot's offset before them."""
        operands = insn.operands
        destination = operands[0] if operands else None
        if destination is None or destination.type != _REG:
            return None
        if self._family(destination.reg) != "rsp":
            return None
        source = operands[1] if len(operands) > 1 else None
        mnemonic = insn.mnemonic
        if mnemonic == "sub" and source is not None and source.type == _IMM:
            before = offset - source.imm
            if before < 0:
                return [self._unknown(insn, "stack slot allocated but not written")]
            return [(("stk", before), ops)]
        if mnemonic == "add" and source is not None and source.type == _IMM:
            return [(("stk", offset + source.imm), ops)]
        if (
            mnemonic == "lea"
            and source is not None
            and source.type == _MEM
            and self._family(source.mem.base) == "rsp"
            and not source.mem.index
        ):
            return [(("stk", offset + source.mem.disp), ops)]
        return [self._unknown(insn, "stack pointer changed")]

    def _memory_write(self, insn, base: str, offset: int, location: Location, ops: tuple):
        """An instruction that writes `[base + d]`: defines, clobbers or misses the slot."""
        operands = insn.operands
        if not operands or operands[0].type != _MEM or insn.mnemonic in _READ_ONLY_MEMORY:
            return None
        mem = operands[0].mem
        if mem.index or not mem.base or self._family(mem.base) != base:
            return None
        start, size = mem.disp, operands[0].size
        if start == offset and size >= 4:
            source = operands[1] if len(operands) > 1 else None
            if insn.mnemonic == "mov" and source is not None:
                return [self._source(insn, source, ops)]
            if insn.mnemonic in _ARITHMETIC and source is not None and source.type == _IMM:
                return [(location, ((insn.mnemonic, source.imm & _MASK),) + ops)]
            return [self._unknown(insn, "stack slot computed")]
        if start == offset - 4 and size == 8 and insn.mnemonic == "mov" and len(operands) > 1:
            return [self._source(insn, operands[1], (_HIGH_HALF, *ops))]
        if start < offset + 4 and offset < start + max(size, 1):
            return [self._unknown(insn, "stack slot partly overwritten")]
        return None

    def _step_stack(self, insn: capstone.CsInsn, offset: int, ops: tuple) -> list:
        mnemonic = insn.mnemonic
        location = ("stk", offset)
        if mnemonic == "push":
            if offset == 0:
                return [self._source(insn, insn.operands[0], ops)]
            if offset < self.ptr:
                return [self._unknown(insn, "stack slot partly pushed")]
            return [(("stk", offset - self.ptr), ops)]
        if mnemonic == "pop":
            return [(("stk", offset + self.ptr), ops)]
        if mnemonic == "call":
            if self.is64:
                if offset < 0x20:
                    return [self._unknown(insn, "home space a call may overwrite")]
                return [(location, ops)]
            return [(("stk", offset + self._x86_callee_pops(insn)), ops)]
        if mnemonic in _SP_SPECIAL:
            return [self._unknown(insn, "stack frame changed")]
        changed = self._stack_pointer_change(insn, offset, ops)
        if changed is not None:
            return changed
        written = self._memory_write(insn, "rsp", offset, location, ops)
        return written if written is not None else [(location, ops)]

    def _step_frame(self, insn: capstone.CsInsn, base: str, offset: int, ops: tuple) -> list:
        location = ("frm", base, offset)
        if insn.mnemonic != "push" and self._writes(insn, base):
            operands = insn.operands
            source = operands[1] if len(operands) > 1 else None
            if (
                insn.mnemonic == "mov"
                and source is not None
                and source.type == _REG
                and self._family(source.reg) == "rsp"
            ):
                return [(("stk", offset), ops)]
            if (
                insn.mnemonic == "lea"
                and source is not None
                and source.type == _MEM
                and self._family(source.mem.base) == "rsp"
                and not source.mem.index
            ):
                return [(("stk", offset + source.mem.disp), ops)]
            return [self._unknown(insn, "frame pointer changed")]
        written = self._memory_write(insn, base, offset, location, ops)
        return written if written is not None else [(location, ops)]

    def _direct_target(self, insn: capstone.CsInsn) -> int | None:
        operand = insn.operands[0] if insn.operands else None
        if operand is None or operand.type != _IMM:
            return None
        return operand.imm & _MASK

    # -- registers across calls ----------------------------------------------------------

    def _call_clobbers(self, insn: capstone.CsInsn) -> frozenset[str]:
        """Registers a call may change: every volatile one, unless it is a direct call
        to a function of the driver whose code we can read. Compilers that see the
        callee (gcc's interprocedural register allocation) keep values in volatile
        registers across calls that leave them alone, so the callee's own writes are
        what counts there."""
        operand = insn.operands[0] if insn.operands else None
        if operand is None or operand.type != _IMM:
            return self._volatile
        return self._function_clobbers(operand.imm & _MASK, depth=0)

    def _function_clobbers(self, function: int, depth: int) -> frozenset[str]:
        """Register families a function of the driver (and what it calls) may write."""
        cached = self._clobbers.get(function)
        if cached is not None:
            return cached
        index = self.index
        position = index.index_of(function)
        if position is None or depth > 2 or index.thunk_slot(function) is not None:
            return self._volatile
        end = index.next_function_start(function)
        if end is None:
            end = index.starts[-1] + 1
        written: set[str] = set()
        cursor = position
        while cursor < len(index.starts) and index.starts[cursor] < end:
            if cursor - position > 2000 or not self._spend(1):
                return self._volatile
            insn = index.decode(index.starts[cursor])
            if insn is None:
                return self._volatile
            if insn.mnemonic in ("call", "jmp") and insn.operands:
                target = insn.operands[0]
                if target.type != _IMM:
                    return self._volatile  # indirect: anything may run
                calls_out = insn.mnemonic == "call" or index.is_function_start(target.imm)
                if calls_out and target.imm != function:
                    written |= self._function_clobbers(target.imm & _MASK, depth + 1)
            try:
                _, registers = insn.regs_access()
            except capstone.CsError:
                return self._volatile
            written.update(f for f in map(self._family, registers) if f is not None)
            cursor += 1
        result = frozenset(written & self._volatile)
        self._clobbers[function] = result
        return result

    # -- x86 stack arithmetic across calls ---------------------------------------------

    def _x86_callee_pops(self, insn: capstone.CsInsn) -> int:
        """Bytes of arguments the callee of an x86 call removes from the stack (stdcall).

        Known from our API table for pool APIs (also when called through a register
        that `register_sites` resolved) and from the callee's `ret N` for the driver's
        own functions. For other imports the size is not in the image; compilers
        that keep a fixed frame re-adjust with `sub esp, N` right after the call, which
        gives it away, and push-style code is assumed to be cdecl.
        """
        operand = insn.operands[0] if insn.operands else None
        slot = self._register_targets.get(insn.address)
        if slot is not None:
            operand = None  # a resolved indirect call: the table says
        if operand is not None and operand.type == _IMM:
            target = operand.imm & _MASK
            slot = self.index.thunk_slot(target)
            if slot is None:
                pops = self._callee_ret(target)
                if pops is not None:
                    return pops
        elif (
            operand is not None
            and operand.type == _MEM
            and not operand.mem.base
            and not operand.mem.index
        ):
            slot = (operand.mem.disp - self.image.image_base) & _MASK
        elif operand is not None and operand.type == _REG:
            slot = self._register_targets.get(insn.address)
        api = self.pool_slots.get(slot) if slot is not None else None
        if api is not None:
            return api.x86_stack_bytes
        following = self.index.decode(insn.address + insn.size)
        if (
            following is not None
            and following.mnemonic == "sub"
            and len(following.operands) == 2
            and following.operands[0].type == _REG
            and self._family(following.operands[0].reg) == "rsp"
            and following.operands[1].type == _IMM
        ):
            return following.operands[1].imm
        return 0

    def _callee_ret(self, function: int) -> int | None:
        """`N` of the first `ret N` of a function of the driver (0 for a plain `ret`)."""
        if function in self._callee_pops:
            return self._callee_pops[function]
        insn = next(self._rets(function), None)
        result = None if insn is None else insn.operands[0].imm if insn.operands else 0
        self._callee_pops[function] = result
        return result

    # -- resolving sites ------------------------------------------------------------------

    def register_sites(self) -> list[ApiSite]:
        """`call reg` / `jmp reg` sites whose register holds a pool API's import address."""
        if not self.index.loads_slot:
            return []
        sites = []
        for rva, jump in self.index.register_calls:
            insn = self.index.decode(rva)
            if insn is None or not insn.operands or insn.operands[0].type != _REG:
                continue
            family = self._family(insn.operands[0].reg)
            if family is None:
                continue
            slots = {
                v.value for v in self.walk(rva, ("reg", family)) if v.kind == "global" and not v.ops
            }
            if len(slots) == 1:
                (slot,) = slots
                if slot in self.pool_slots:
                    sites.append(ApiSite(rva, slot, jump))
                    self._register_targets[rva] = slot
        return sites

    def global_values(self, rva: int) -> list[tuple[int, int]]:
        """(value, where) pairs a global variable can hold, as far as the image tells.

        The constants stored into it by the code, plus its initial value from the file.
        The initial value is left out when it is zero-fill (`.bss`) or zero while the
        code stores constants into the variable: that is a placeholder set before use.
        """
        stores = [(value, where) for value, where in self.index.const_stores.get(rva, ())]
        initial = self.image.read_u32(rva)
        if initial is not None and (initial != 0 or not stores):
            stores.append((initial, rva))
        return stores

    def pointer_values(self, rva: int, location: Location) -> list[Value]:
        """What a pointer argument can be at `rva`: "address" (a static RVA), "stack"
        (a stack address) or other outcomes of `walk`. x86 code writes a static
        address as an immediate (`push offset X`, `mov [esp+N], X`): such constants
        inside the image become addresses."""
        self._want_address = True
        try:
            values = self.walk(rva, location)
        finally:
            self._want_address = False
        result = []
        for value in values:
            if value.kind == "const" and not value.ops and not self.is64:
                address = (value.value - self.image.image_base) & _MASK
                if self.image.section_at(address) is not None:
                    value = Value("address", address, where=value.where)
            result.append(value)
        return result

    def _field_values(self, site: ApiSite, api: PoolApi, result: SiteResult) -> None:
        """Tags stored into the structure whose address is the tag argument."""
        offset = api.field(self.is64)
        assert offset is not None
        for pointer in self.pointer_values(site.rva, self.argument(api, site.jump)):
            if pointer.kind == "address":
                field_rva = pointer.value + offset
                evidence = self._global_evidence(field_rva)
                stores = []
                if self.reference_finder is not None:
                    references = self.reference_finder({field_rva, field_rva - 4})
                    stores = self.struct_stores(field_rva, references)
                found = [
                    item
                    for item in self.global_values(field_rva)
                    if not (stores and item[0] == 0 and item[1] == field_rva)
                ]
                found = list(dict.fromkeys(found + stores))
                if not found:
                    result.failures.append(f"structure field {field_rva:#x} holds no constant")
                for constant, _where in found:
                    result.values.append(
                        TagValue(constant, evidence, site.rva, site.rva, field_rva)
                    )
            elif pointer.kind in ("stack", "frame"):
                slot: Location = ("frm", "rbp", pointer.value + offset)
                if pointer.kind == "stack":
                    delta = self._stack_delta(pointer.where, site.rva)
                    if delta is None:
                        result.failures.append("stack pointer changes between a structure's "
                                               "address and the call")  # fmt: skip
                        continue
                    slot = ("stk", pointer.value - delta + offset)
                for value in self.walk(site.rva, slot):
                    if value.kind == "const":
                        result.values.append(
                            TagValue(value.value, DIRECT, site.rva, site.rva, value.where)
                        )
                    elif value.kind == "global":
                        for constant, _where in self.global_values(value.value):
                            evidence = self._global_evidence(value.value)
                            item = TagValue(
                                apply_ops(constant, value.ops), evidence, site.rva, site.rva,
                                value.value,
                            )  # fmt: skip
                            result.values.append(item)
                    else:
                        result.failures.append(value.reason or f"structure field: {value.kind}")
            else:
                result.failures.append(
                    pointer.reason or "structure pointer is not a static or stack address"
                )

    def _registration_values(self, site: ApiSite, api: PoolApi, result: SiteResult) -> None:
        """The tags of the entries of a static registration whose address is the
        argument (FltRegisterFilter's FLT_CONTEXT_REGISTRATION array): its pointer is an
        absolute address in the file (relocated at load), the entries follow it up to
        the end marker, at most _MAX_REGISTRATIONS of them."""
        layout = api.registration_layout(self.is64)
        assert layout is not None
        pointer_at, entry_size, tag_at = layout
        for pointer in self.pointer_values(site.rva, self.argument(api, site.jump)):
            if pointer.kind != "address":
                result.failures.append(
                    pointer.reason or "registration pointer is not a static address"
                )
                continue
            raw = self.image.file_bytes(pointer.value + pointer_at, self.ptr)
            if raw is None or len(raw) < self.ptr:
                result.failures.append(f"registration {pointer.value:#x} is not in the file")
                continue
            array = int.from_bytes(raw, "little")
            if not array:
                continue  # no contexts registered: nothing allocated under a tag
            array = (array - self.image.image_base) & ((1 << (8 * self.ptr)) - 1)
            for entry in range(array, array + _MAX_REGISTRATIONS * entry_size, entry_size):
                head = self.image.file_bytes(entry, 2)
                tag = self.image.read_u32(entry + tag_at)
                if head is None or len(head) < 2 or tag is None:
                    result.failures.append(f"registration entry {entry:#x} is not in the file")
                    break
                if int.from_bytes(head, "little") == _REGISTRATION_END:
                    break
                evidence = self._global_evidence(entry + tag_at)
                result.values.append(TagValue(tag, evidence, site.rva, site.rva, entry + tag_at))
            else:
                result.failures.append(f"registration array {array:#x} has no end marker")

    def _stack_delta(self, start: int, end: int) -> int | None:
        """How the stack pointer moves from the instruction at `start` to the one at
        `end` along the straight line between them (pushes, pops, `sub/add rsp`, x86
        callee-popped arguments), or None when that cannot be told."""
        index = self.index
        first, last = index.index_of(start), index.index_of(end)
        if first is None or last is None or not 0 <= last - first <= _MAX_DISTANCE:
            return None
        delta = 0
        for cursor in range(first, last):
            insn = index.decode(index.starts[cursor])
            if insn is None:
                return None
            mnemonic = insn.mnemonic
            operands = insn.operands
            if mnemonic == "push":
                delta -= self.ptr
            elif mnemonic == "pop":
                delta += self.ptr
            elif mnemonic == "call":
                delta += 0 if self.is64 else self._x86_callee_pops(insn)
            elif (
                mnemonic in ("sub", "add")
                and len(operands) == 2
                and operands[0].type == _REG
                and self._family(operands[0].reg) == "rsp"
            ):
                if operands[1].type != _IMM:
                    return None
                delta += operands[1].imm if mnemonic == "add" else -operands[1].imm
            elif mnemonic in _SP_SPECIAL or self._writes(insn, "rsp"):
                return None
        return delta

    def struct_stores(self, field_rva: int, references: list[int]) -> list[tuple[int, int]]:
        """(value, where) of constants that instructions in `references` store into
        the 4 bytes at `field_rva` (a dword store there, or the upper half of a qword
        store 4 bytes below), following a stored register back to its immediate."""
        found = []
        for rva in references:
            insn = self.index.decode(rva)
            if insn is None or insn.mnemonic != "mov" or len(insn.operands) != 2:
                continue
            destination, source = insn.operands
            if destination.type != _MEM:
                continue
            mem = destination.mem
            if mem.index or mem.segment:
                continue
            if mem.base == cs_x86.X86_REG_RIP:
                address = (insn.address + insn.size + mem.disp) & _MASK
            elif mem.base == 0 and not self.is64:
                address = (mem.disp - self.image.image_base) & _MASK
            else:
                continue
            if address == field_rva and destination.size >= 4:
                ops: tuple = ()
            elif address == field_rva - 4 and destination.size == 8:
                ops = (_HIGH_HALF,)
            else:
                continue
            if source.type == _IMM:
                value = self._source(insn, source, ops)
                outcomes = [value]
            elif source.type == _REG and self._family(source.reg):
                outcomes = self.walk(rva, ("reg", self._family(source.reg)), ops)
            else:
                continue
            found.extend((v.value, v.where) for v in outcomes if v.kind == "const")
        return found

    def _global_evidence(self, rva: int) -> str:
        """`data` for a variable in a read-only section that no code writes."""
        section = self.image.section_at(rva)
        if (
            section is not None
            and not section.characteristics & _SCN_MEM_WRITE
            and rva not in self.index.const_stores
        ):
            return DATA
        return GLOBAL

    def _rets(self, function: int) -> Iterator[capstone.CsInsn]:
        """The `ret` instructions of a function of the driver, in address order, up to
        the next function start (within 20,000 instructions and the analysis budget)."""
        index = self.index
        position = index.index_of(function)
        if position is None:
            return
        for cursor in range(position, min(len(index.starts), position + 20000)):
            if not self._spend(1):
                return
            rva = index.starts[cursor]
            if cursor != position and index.is_function_start(rva):
                return
            if index.flags[cursor] & NO_FALLTHROUGH:
                insn = index.decode(rva)
                if insn is not None and insn.mnemonic == "ret":
                    yield insn

    def returned_values(self, function: int, ops: tuple, depth: int = 0) -> list[tuple[int, int]]:
        """(constant, where) pairs a function of the driver returns in eax/rax."""
        key = (function, ops)
        cached = self._returns.get(key)
        if cached is not None:
            return cached
        self._returns[key] = []  # a recursive helper returns nothing more
        found: list[tuple[int, int]] = []
        for insn in self._rets(function) if depth <= _MAX_RETURN_DEPTH else ():
            for value in self.walk(insn.address, ("reg", "rax"), ops):
                if value.kind == "const":
                    found.append((value.value, value.where))
                elif value.kind == "return":
                    found.extend(self.returned_values(value.value, value.ops, depth + 1))
        found = list(dict.fromkeys(found))
        self._returns[key] = found
        return found

    def resolve(self, site: ApiSite, api: PoolApi) -> SiteResult:
        """All tag constants that reach `site`, following wrappers and globals."""
        result = SiteResult(site)
        if api.field(self.is64) is not None:
            self._field_values(site, api, result)
            return result
        if api.registration is not None:
            self._registration_values(site, api, result)
            return result
        found = self._values_at(site.rva, self.argument(api, site.jump), (), 0, frozenset())
        for (value, kind, call, source, api_site), via in found.values.items():
            evidence = kind if kind in (GLOBAL, DATA, RETURN) else WRAPPER if via else DIRECT
            result.values.append(
                TagValue(value, evidence, call, site.rva if api_site is None else api_site,
                         source, via)
            )  # fmt: skip
        result.failures.extend(found.failures)
        return result

    def _values_at(
        self, call: int, location: Location, ops: tuple, depth: int, path: frozenset[int]
    ) -> _Found:
        """The constants that can reach `location` at `call`, from here or from callers.

        Keys are (value, kind, call where found, source, API site or None for "the site
        being resolved"); each maps to the wrappers crossed above `call`, innermost
        first (the first path found is kept). `path` holds the functions being resolved
        further down, so a recursive wrapper is not followed into itself.
        """
        key = (call, location, ops, depth)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        values: dict[tuple, tuple[int, ...]] = {}
        failures: list[str] = []
        for value in self.walk(call, location, ops):
            if value.kind == "const":
                values.setdefault((value.value, DIRECT, call, value.where, None), ())
            elif value.kind == "global":
                found = self.global_values(value.value)
                if not found:
                    failures.append(f"global {value.value:#x} holds no known constant")
                evidence = self._global_evidence(value.value)
                for constant, _where in found:
                    item = (apply_ops(constant, value.ops), evidence, call, value.value, None)
                    values.setdefault(item, ())
            elif value.kind == "return":
                returned = self.returned_values(value.value, value.ops)
                if not returned:
                    failures.append(f"the function at {value.value:#x} returns no known constant")
                for constant, where in returned:
                    values.setdefault((constant, RETURN, call, where, None), ())
            elif value.kind == "param":
                self._from_callers(value, call, depth, path, values, failures)
            else:
                failures.append(value.reason)
        result = _Found(values, tuple(dict.fromkeys(failures)))
        self._memo[key] = result
        return result

    def _from_callers(self, value: Value, call, depth, path, values, failures) -> None:
        function = value.value
        # A lone `jmp [slot]` reached from the site itself: an import thunk, whose
        # callers are the real API calls (they do not count as a wrapper level).
        thunk = function == call and self.index.thunk_slot(function) is not None
        if function in path or depth >= _MAX_WRAPPER_DEPTH:
            failures.append(f"wrappers nested too deep at {function:#x}")
            return
        callers = self.index.callers(function)
        if not callers:
            failures.append(
                f"tag is a parameter of the function at {function:#x}, which has no direct caller"
            )
            return
        location = value.location
        for caller, jump in callers:
            caller_location = location
            if location[0] == "stk" and not jump:
                # The call pushes the return address: the caller's slot is one lower.
                caller_location = ("stk", location[1] - self.ptr)
            above = self._values_at(
                caller, caller_location, value.ops, depth + (0 if thunk else 1), path | {function}
            )
            for (constant, kind, where, source, api_site), via in above.values.items():
                if thunk:
                    item = (constant, kind, where, source, caller if api_site is None else api_site)
                    values.setdefault(item, via)
                else:
                    values.setdefault((constant, kind, where, source, api_site), (function, *via))
            failures.extend(above.failures)


@dataclass(frozen=True)
class _Found:
    """What `TagResolver._values_at` learned at one call site (memoized)."""

    values: dict[tuple, tuple[int, ...]]
    failures: tuple[str, ...]
