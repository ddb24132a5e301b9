"""Attribution records, the analysis of one driver file, and the batch over many.

`analyze_file` runs the stages on one file: load and validate the PE, YARA prefilter,
import table (by name, and by ordinal when the exporting module is in the batch),
disassembly index, data flow per pool API call site, YARA fallback for the sites data
flow could not resolve. `scan_batch` runs it over files and folders, in worker
processes when the batch is large, and yields one `DriverReport` or `DriverFailure`
per file in input order. Nothing here prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import capstone
from capstone import x86 as cs_x86

from pooltagscan.drivers.apis import (
    CALLBACK_RESOLVER_MODULES,
    POOL_APIS,
    RESOLVER_APIS,
    WDF_BIND,
    PoolApi,
    lookup,
    module_key,
)
from pooltagscan.drivers.candidates import analysis_indexes
from pooltagscan.drivers.dataflow import (
    DATA,
    DIRECT,
    GLOBAL,
    RETURN,
    WRAPPER,
    SiteResult,
    TagResolver,
)
from pooltagscan.drivers.disasm import MAX_INSTRUCTIONS, NO_FALLTHROUGH, CodeIndex
from pooltagscan.drivers.fileinfo import FileInfo, file_info
from pooltagscan.drivers.indirect import data_references, find_indirect
from pooltagscan.drivers.pe import DriverImage, NotADriver, load_image, read_file
from pooltagscan.drivers.yarascan import RuleSet, is_tag_like
from pooltagscan.errors import InputError
from pooltagscan.tags.patterns import tag_from_bytes
from pooltagscan.workers import can_start_workers, ordered_map

__all__ = [
    "CONFIDENCE",
    "YARA",
    "AnalysisContext",
    "DriverFailure",
    "DriverReport",
    "DriverSkipped",
    "Finding",
    "Unresolved",
    "analyze_file",
    "expand_paths",
    "ordinal_exports",
    "scan_batch",
]

YARA = "yara"
#: Confidence of each kind of evidence: an immediate at the call (or at a wrapper's
#: call) is high; a global's values, a read-only constant loaded from data, and a value
#: a helper function returns are medium (the value reaches the call by a route a
#: static view proves less directly); the YARA fallback is low.
CONFIDENCE = {
    DIRECT: "high",
    WRAPPER: "high",
    GLOBAL: "medium",
    DATA: "medium",
    RETURN: "medium",
    YARA: "low",
}

# How far before a call site the YARA fallback looks for tag-like immediates.
_FALLBACK_WINDOW = 96
# Batches smaller than this run in-process: starting workers costs more than it saves.
_MIN_PARALLEL_FILES = 8
_PROVIDERS = frozenset(module for api in POOL_APIS.values() for module in api.modules)


@dataclass(frozen=True)
class Finding:
    """One tag constant that reaches a pool API in a driver.

    `site` is the call whose argument carries the constant (the API call itself, or the
    outermost call of the driver's own wrapper), `api_site` the call to the API, `via`
    the wrapper functions in between (innermost first), `source` the instruction that
    loads the constant (or the global variable holding it). All addresses are RVAs.
    `rule` names the YARA rule for fallback findings.
    """

    value: int
    api: str
    site: int
    api_site: int
    evidence: str
    source: int
    via: tuple[int, ...] = ()
    rule: str | None = None

    @property
    def confidence(self) -> str:
        return CONFIDENCE[self.evidence]

    @property
    def raw(self) -> bytes:
        """The four tag bytes as the allocation's pool header holds them."""
        return self.value.to_bytes(4, "little")

    @property
    def tag(self) -> str:
        """Tag text as `scan` reports it: protected bit cleared, `\\xNN` escapes."""
        return tag_from_bytes(self.raw)[0]

    @property
    def protected(self) -> bool:
        """The driver sets the pre-Windows 8 protected bit (`Tag | PROTECTED_POOL`)."""
        return tag_from_bytes(self.raw)[1]


@dataclass(frozen=True)
class Unresolved:
    """A pool API call whose tag neither data flow nor the fallback recovered.

    `partial` when some paths into the call did give tags (reported as findings) and
    only the others could not be followed; the fallback is not tried then.
    """

    api: str
    site: int
    reasons: tuple[str, ...]
    partial: bool = False


@dataclass
class DriverReport:
    """Everything learned about one driver file."""

    path: str
    arch: str
    findings: list[Finding] = field(default_factory=list)
    pool_apis: tuple[str, ...] = ()  # the pool APIs it imports
    call_sites: int = 0  # pool API calls analysed
    untagged_frees: int = 0  # free calls passing tag 0, i.e. ExFreePool (see apis.py)
    unresolved: list[Unresolved] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Pool APIs called without being imported: resolved by name at run time
    #: (MmGetSystemRoutineAddress, VideoPortGetProcAddress) or through the KMDF table.
    indirect_apis: tuple[str, ...] = ()
    # How rows name the file (set by scan_batch): its path relative to the folder it was
    # found in, or the path as given; empty means "the path".
    label: str = ""
    info: FileInfo | None = None  # sha256, PE timestamp, machine, version resource

    @property
    def name(self) -> str:
        """What rows call the file: unique within a batch, unlike the base name (a
        DriverStore has one `foo.sys` per package version folder)."""
        return self.label or self.path

    @property
    def basename(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True)
class DriverFailure:
    """A file that could not be analysed; `problem` is the one-line reason."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class DriverSkipped:
    """A file found by a folder walk that is a PE image but not a kernel driver (a
    user-mode DLL or EXE, an EFI image; `pe.NotADriver`): counted, not an error."""

    path: str
    reason: str


@dataclass
class AnalysisContext:
    """What every file's analysis shares: the rules and the batch's ordinal exports."""

    rules: RuleSet
    ordinals: dict[tuple[str, str, int], str] = field(default_factory=dict)

    def ordinal_name(self, module: str, arch: str, ordinal: int) -> str | None:
        return self.ordinals.get((module_key(module), arch, ordinal))


# -- one file ---------------------------------------------------------------------------


@dataclass
class _Imports:
    """The IAT slots that matter: pool APIs, name resolvers, the KMDF bind routine."""

    pool: dict[int, PoolApi] = field(default_factory=dict)
    resolvers: dict[int, bool] = field(default_factory=dict)  # slot -> takes UNICODE_STRING
    binds: set[int] = field(default_factory=set)
    all_slots: frozenset[int] = frozenset()
    callbacks: bool = False  # may get a resolver as a callback (a VideoPort miniport)

    @property
    def indirect(self) -> bool:
        """Whether pool APIs may be reached without an import."""
        return bool(self.resolvers or self.binds or self.callbacks)


def _pool_slots(image: DriverImage, context: AnalysisContext, report: DriverReport) -> _Imports:
    imports = image.imports()
    image.check_kernel_imports(imports)
    found = _Imports(all_slots=frozenset(entry.slot for entry in imports))
    slots = found.pool
    unresolved_ordinals: dict[str, list[int]] = {}
    for entry in imports:
        name = entry.name
        if name is None and entry.ordinal is not None:
            name = context.ordinal_name(entry.module, image.arch, entry.ordinal)
            if name is None and module_key(entry.module) in _PROVIDERS:
                unresolved_ordinals.setdefault(entry.module, []).append(entry.ordinal)
        if module_key(entry.module) in CALLBACK_RESOLVER_MODULES:
            found.callbacks = True
        api = lookup(entry.module, name) if name else None
        if api is not None:
            slots[entry.slot] = api
        elif name:
            module = module_key(entry.module)
            wide = RESOLVER_APIS.get((module, name))
            if wide is not None:
                found.resolvers[entry.slot] = wide
            elif (module, name) == (WDF_BIND.module, WDF_BIND.name):
                found.binds.add(entry.slot)
    for module, ordinals in unresolved_ordinals.items():
        listed = ", ".join(str(o) for o in sorted(ordinals))
        report.notes.append(
            f"imports ordinal(s) {listed} from {module}, which cannot be named without "
            f"{module} ({image.arch}) in the same batch"
        )
    report.pool_apis = tuple(sorted({api.name for api in slots.values()}))
    return found


def _fallback(index: CodeIndex, rules: RuleSet, result: SiteResult, api: PoolApi) -> list[Finding]:
    """Tag-like immediates matched by `tag_immediate` rules just before the call."""
    site = result.site.rva
    position = index.index_of(site)
    if position is None or rules.immediates is None:
        return []
    # The window: back from the call, at most _FALLBACK_WINDOW bytes, not past the
    # entry of the enclosing function nor past a return or padding (another function).
    start = site
    cursor = position - 1
    while cursor >= 0 and site - index.starts[cursor] <= _FALLBACK_WINDOW:
        rva = index.starts[cursor]
        if index.flags[cursor] & NO_FALLTHROUGH:
            insn = index.decode(rva)
            if insn is None or insn.mnemonic != "jmp":
                break
        start = rva
        if index.is_function_start(rva):
            break
        cursor -= 1
    findings = []
    seen = set()
    for hit in rules.immediate_hits(index.code_bytes(start, site)):
        # Decode the instruction holding the match's last byte: the immediate.
        last = index.containing(start + hit.offset + hit.length - 1)
        if last is None or index.starts[last] in seen:
            continue
        insn = index.decode(index.starts[last])
        if insn is None or insn.mnemonic not in ("mov", "push"):
            continue
        if _used_as_operand(index, insn, site):
            continue
        for operand in insn.operands:
            if operand.type != cs_x86.X86_OP_IMM or not -(2**31) <= operand.imm < 2**32:
                continue
            value = operand.imm & 0xFFFFFFFF
            if is_tag_like(value):
                seen.add(insn.address)
                findings.append(
                    Finding(value, api.name, site, site, YARA, insn.address, rule=hit.rule)
                )
    return findings


# Instructions that pass a value on unchanged: a register used first by one of these may
# still be carrying a tag to the call; used first by anything else (a compare, a hash
# step, arithmetic) it is a signature, a seed or a number.
_COPIES = frozenset({"mov", "push", "xchg", "movsxd"})


def _used_as_operand(index: CodeIndex, insn, site: int) -> bool:
    """Whether the register `insn` loads with an immediate is first read, before
    `site`, by an instruction that computes with it rather than copies it."""
    operands = insn.operands
    if insn.mnemonic != "mov" or not operands or operands[0].type != cs_x86.X86_OP_REG:
        return False
    register = index.register_name(operands[0].reg)
    family = _register_family(register)
    position = index.index_of(insn.address)
    if position is None:
        return False
    cursor = position + 1
    while cursor < len(index.starts) and index.starts[cursor] < site:
        later = index.decode(index.starts[cursor])
        if later is None:
            return False
        try:
            read, written = later.regs_access()
        except capstone.CsError:  # no details for some forms
            return False
        if any(_register_family(index.register_name(r)) == family for r in read):
            return later.mnemonic not in _COPIES
        if any(_register_family(index.register_name(r)) == family for r in written):
            return False
        cursor += 1
    return False


def _register_family(name: str) -> str:
    """`eax`/`ax`/`al` -> `rax`, `r8d` -> `r8` (enough to compare two registers)."""
    if name[:1] == "r" and name[1:2].isdigit():
        return name.rstrip("dwb")
    core = name[1:] if name[:1] in ("e", "r") and len(name) == 3 else name
    return {"al": "ax", "bl": "bx", "cl": "cx", "dl": "dx", "ah": "ax", "bh": "bx",
            "ch": "cx", "dh": "dx", "sil": "si", "dil": "di"}.get(core, core)  # fmt: skip


def analyze_image(image: DriverImage, context: AnalysisContext) -> DriverReport:
    """Attribute the tags of one validated image."""
    report = DriverReport(image.path, image.arch)
    report.info = file_info(image.data, image.pe, report.notes)
    if not context.rules.imports_pool_api(image.data):
        return report
    imported = _pool_slots(image, context, report)
    if not imported.pool and not imported.indirect:
        return report
    wanted = {*imported.pool, *imported.resolvers, *imported.binds}
    # Candidate functions first (candidates.py): each pass analyses with an index of
    # part of the code and is kept when it needed nothing more (then its results are
    # the full sweep's); otherwise a larger part is decoded and the analysis rerun.
    for index in analysis_indexes(image, wanted, image.import_data_ranges()):
        attempt = replace(report, notes=list(report.notes), findings=[], unresolved=[])
        _attribute(image, context, index, imported, attempt)
        if not getattr(index, "missing", None):
            return attempt
    raise AssertionError("analysis_indexes ends with the full sweep")  # pragma: no cover


def _attribute(
    image: DriverImage,
    context: AnalysisContext,
    index: CodeIndex,
    imported: _Imports,
    report: DriverReport,
) -> None:
    """The analysis proper, on one index of the code: fills `report`."""
    slots = dict(imported.pool)  # indirect APIs add synthetic slots: per pass
    resolver = TagResolver(index, slots)
    resolver.reference_finder = lambda targets: data_references(image, index, targets)
    sites = [site for site in index.api_sites if site.slot in slots]
    sites += resolver.register_sites()
    if imported.indirect:
        indirect = find_indirect(
            image, index, resolver, imported.resolvers, imported.binds, imported.all_slots
        )
        slots.update(indirect.slots)  # the resolver reads the same mapping
        resolver.add_call_targets(indirect.targets)
        sites += indirect.sites
        report.indirect_apis = indirect.api_names
    found: dict[tuple, Finding] = {}
    for site in sites:
        api = slots[site.slot]
        if site.jump and index.is_function_start(site.rva):
            # An import thunk: its callers are the calls (linkers emit one per import,
            # called or not).
            callers = len(index.callers(site.rva))
            if not callers:
                continue
            report.call_sites += callers
        else:
            report.call_sites += 1
        result = resolver.resolve(site, api)
        untagged: set[int] = set()
        for value in result.values:
            if value.value == 0 and api.zero_is_untagged:
                untagged.add(value.api_site)
                continue
            finding = Finding(
                value.value,
                api.name,
                value.site,
                value.api_site,
                value.evidence,
                value.source,
                value.via,
            )
            found.setdefault(_key(finding), finding)
        report.untagged_frees += len(untagged)
        reasons = tuple(dict.fromkeys(result.failures))
        if not result.values:
            fallback = _fallback(index, context.rules, result, api)
            for finding in fallback:
                found.setdefault(_key(finding), finding)
            if not fallback:
                report.unresolved.append(Unresolved(api.name, site.rva, reasons))
        elif reasons:
            report.unresolved.append(Unresolved(api.name, site.rva, reasons, partial=True))
    report.findings = sorted(
        found.values(), key=lambda f: (f.tag, f.raw, f.api, f.site, f.evidence)
    )
    if index.truncated_at is not None:
        report.notes.append(
            f"code from RVA {index.truncated_at:#x} on was not disassembled: the per-file "
            f"budget of {MAX_INSTRUCTIONS:,} instructions was reached"
        )
    if resolver.exhausted:
        report.notes.append(
            f"analysis stopped after {resolver.spent:,} steps (the per-file work budget): "
            "the tags found until then are reported, other call sites may have more"
        )


def _key(finding: Finding) -> tuple:
    return (finding.value, finding.api, finding.site, finding.api_site, finding.evidence)


def analyze_file(path: str, context: AnalysisContext) -> DriverReport:
    """Read, validate and attribute one file; InputError says why a file is unusable."""
    return analyze_image(load_image(path, read_file(path)), context)


# -- batches ----------------------------------------------------------------------------


@dataclass
class Expansion:
    """The files a list of paths names, what could not be used, and what was passed over.

    `walked` maps each file found inside a folder to its path relative to that folder
    (how rows name it); files named directly are not in it. `folders` counts the
    regular files seen under each folder argument (for "empty folder" / "no driver").
    """

    files: list[str] = field(default_factory=list)
    failures: list[DriverFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    walked: dict[str, str] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # walked file -> folder argument


_PE_PROBE_BYTES = 4096


def _is_pe_candidate(path: str) -> bool:
    """Whether a file found in a folder should be analysed: a PE image (MZ header, and
    the PE signature where the header says), or anything named `.sys`, which is meant to
    be a driver and so is reported when it is not one."""
    if path.lower().endswith(".sys"):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(_PE_PROBE_BYTES)
    except OSError:
        return True  # let the analysis report why it cannot be read
    if head[:2] != b"MZ":
        return False
    if len(head) < 64:
        return True  # a cut MZ file: the analysis says how it is broken
    pe_offset = int.from_bytes(head[0x3C:0x40], "little")
    if pe_offset + 4 > len(head):
        return True  # a header this far in (or past the end): the analysis decides
    return head[pe_offset : pe_offset + 4] == b"PE\0\0"


def expand_paths(paths: Iterable[str]) -> Expansion:
    """Files named directly, plus every file under named folders (recursively).

    A file named on the command line is always analysed, so a wrong one is reported.
    Inside folders only PE images and `.sys` files are taken: a DriverStore or a copy of
    System32\\drivers also holds .inf, .cat and .mui files that are not worth an error
    line each; how many were passed over is noted instead. (PE images that are not
    kernel drivers are passed over later, by the analysis: see `scan_batch`.)
    """
    result = Expansion()
    for path in paths:
        if not os.path.isdir(path):
            if not os.path.lexists(path):
                result.failures.append(DriverFailure(path, "no such file"))
            else:
                result.files.append(path)
            continue
        passed_over = seen = 0
        for root, dirs, names in os.walk(path, onerror=lambda exc: _walk_error(exc, result)):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                if not os.path.isfile(full):
                    passed_over += 1
                    continue
                seen += 1
                if _is_pe_candidate(full):
                    result.files.append(full)
                    result.walked[full] = os.path.relpath(full, path)
                    result.origin[full] = path
                else:
                    passed_over += 1
        result.folders[path] = seen
        if passed_over:
            result.notes.append(f"{path}: {passed_over} file(s) without a PE header passed over")
    return result


def folder_notes(
    expansion: Expansion, results: Iterable[DriverReport | DriverFailure | DriverSkipped]
) -> list[str]:
    """One line per folder argument about what its walk found besides drivers.

    `results` are the batch's results (any order). Says how many PE images were passed
    over as not kernel drivers, and says so when a folder is empty or held no driver,
    so a wrong folder does not end silently with "0 drivers analysed".
    """
    skipped: dict[str, int] = dict.fromkeys(expansion.folders, 0)
    drivers: dict[str, int] = dict.fromkeys(expansion.folders, 0)
    for result in results:
        folder = expansion.origin.get(result.path)
        if folder is None:
            continue
        if isinstance(result, DriverSkipped):
            skipped[folder] += 1
        else:
            drivers[folder] += 1
    notes = []
    for folder, seen in expansion.folders.items():
        if skipped[folder]:
            notes.append(
                f"{folder}: {skipped[folder]} file(s) that are not kernel drivers skipped "
                "(user-mode, EFI or native user-mode images)"
            )
        if not seen:
            notes.append(f"{folder}: empty folder, no driver to analyse")
        elif not drivers[folder]:
            notes.append(f"{folder}: no kernel driver among its {seen} file(s)")
    return notes


def _walk_error(exc: OSError, result: Expansion) -> None:
    where = exc.filename or "?"
    result.failures.append(DriverFailure(where, f"cannot list folder: {exc.strerror or exc}"))


def ordinal_exports(files: Sequence[str]) -> dict[tuple[str, str, int], str]:
    """Ordinal -> pool API name, from the exporting modules present in a batch.

    A driver may import a pool API by ordinal only; the number means something only
    against the exporting module's export table, so when that module (an ntoskrnl.exe,
    ndis.sys...) is scanned in the same batch its table resolves the ordinals.
    """
    table: dict[tuple[str, str, int], str] = {}
    for path in files:
        module = module_key(path)
        if module not in _PROVIDERS:
            continue
        try:
            image = load_image(path)
            exports = image.exports_by_ordinal()
        except InputError:
            continue  # reported when the file itself is analysed
        for ordinal, name in exports.items():
            api = POOL_APIS.get(name)
            if api is not None and module in api.modules:
                table[(module, image.arch, ordinal)] = name
    return table


_WORKER_CONTEXT: AnalysisContext | None = None


def _init_worker(rule_files: Sequence[str], ordinals: dict) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = AnalysisContext(RuleSet(rule_files), ordinals)


def _analyze_or_fail(
    path: str, context: AnalysisContext
) -> DriverReport | DriverFailure | DriverSkipped:
    try:
        return analyze_file(path, context)
    except NotADriver as exc:
        return DriverSkipped(path, exc.problem)
    except InputError as exc:
        return DriverFailure(path, exc.problem)
    except Exception as exc:
        # Corrupt input can trip pefile or capstone in ways no check foresaw; one such
        # file must not end a batch of thousands. POOLTAGSCAN_DEBUG shows the traceback.
        if os.environ.get("POOLTAGSCAN_DEBUG"):
            raise
        return DriverFailure(path, f"analysis failed ({type(exc).__name__}: {exc})")


def _worker(path: str) -> DriverReport | DriverFailure | DriverSkipped:
    assert _WORKER_CONTEXT is not None
    return _analyze_or_fail(path, _WORKER_CONTEXT)


def scan_batch(
    files: Sequence[str],
    rules: RuleSet,
    jobs: int = 1,
    walked: Mapping[str, str] | None = None,
) -> Iterator[DriverReport | DriverFailure | DriverSkipped]:
    """Analyse `files` (already expanded), yielding results in input order.

    `walked` maps the files a folder walk found to their paths relative to the folder
    (`Expansion.walked`): their reports are labelled with it, and those that are PE
    images but not kernel drivers come back as `DriverSkipped`. Every other file is
    labelled with its path as given, and not being a driver is a `DriverFailure`: the
    user named it. Worker processes compile the same rule files again (compiled YARA
    rules cannot be sent to them); the caller builds `rules` first so a bad rule file
    stops the command before any work starts.
    """
    walked = walked or {}
    ordinals = ordinal_exports(files)
    if jobs <= 1 or len(files) < _MIN_PARALLEL_FILES or not can_start_workers():
        context = AnalysisContext(rules, ordinals)
        results: Iterable = (_analyze_or_fail(path, context) for path in files)
    else:
        results = ordered_map(
            _worker, files, jobs, initializer=_init_worker, initargs=(rules.user_files, ordinals)
        )
    try:
        for path, result in zip(files, results):
            label = walked.get(path)
            if isinstance(result, DriverSkipped) and label is None:
                result = DriverFailure(path, result.reason)
            elif isinstance(result, DriverReport):
                result.label = label or path
            yield result
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the workers at once when the caller stops early
