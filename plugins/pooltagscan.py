"""Volatility 3 plugin: Windows kernel pool allocations without kernel symbols (pooltagscan).

    vol -p <pooltagscan checkout>/plugins -f DUMP pooltagscan.PoolTagScan [options]

A thin shell over the `pooltagscan` package, which must be installed in the Python
environment that runs `vol` (`pip install pooltagscan`, or `pip install -e <checkout>`).
The plugin finds the physical layer under whatever Volatility stacked (raw file, crash
dump, LiME, ELF core, VMware; under any Intel layer), turns its physical address -> file
offset map into pooltagscan's read-only mmap image, and runs the same scan as
`pooltagscan scan`, so the records are identical. Layers that are not a plain copy of one
file (a compressed dump, say) are read through `layer.read` instead. Kernel minidumps,
which Volatility cannot open, are read by pooltagscan's own minidump reader.

Columns are the fields of `pooltagscan scan --format jsonl`; `--stats` gives the per-tag
table of `pooltagscan scan --stats` (like WinDbg's !poolused).

The module also defines an automagic, `PoolTagScanStacking`, that stacks only the
file-format layers for this plugin. The plugin scans physical memory, so the OS stackers
(WindowsIntelStacker's page-table search, the Linux/Mac banner scans) would only cost
time: about 7 s for WindowsIntelStacker on a 1 GiB raw dump where it finds no page
tables, several times the scan itself, before the scan even starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from volatility3.framework import exceptions, interfaces, renderers
from volatility3.framework.automagic import stacker
from volatility3.framework.configuration import requirements
from volatility3.framework.layers import crash, elf, lime, physical, vmware
from volatility3.framework.renderers import format_hints

vollog = logging.getLogger(__name__)

# Option choices, spelled here so that loading this module (which `vol -p` does for every
# run, whatever the plugin) does not import pooltagscan and numpy; tests check that they
# equal pooltagscan's own.
LAYOUT_CHOICES = ("auto", "x86", "x64", "x64-segment-heap")
CONFIDENCE_NAMES = ("low", "medium", "high")
POOL_NAMES = ("nonpaged", "paged", "unknown")
STATE_NAMES = ("allocated", "free", "unknown")
SOURCE_NAMES = ("page", "bigpool")
SORT_KEYS = ("bytes", "count", "tag", "nonpaged", "paged")


def _pooltagscan() -> Any:
    """Import the pooltagscan package, or stop with what to install."""
    try:
        import pooltagscan.errors
        import pooltagscan.files
        import pooltagscan.filters
        import pooltagscan.inputs
        import pooltagscan.inputs.base
        import pooltagscan.inputs.crashdump
        import pooltagscan.inputs.elfcore
        import pooltagscan.inputs.volmap
        import pooltagscan.parallel
        import pooltagscan.records
        import pooltagscan.scan
        import pooltagscan.scanner.engine
        import pooltagscan.stats
        import pooltagscan.summary
        import pooltagscan.tags.database
        import pooltagscan.tracking
        import pooltagscan.workers
    except ImportError as exc:
        raise exceptions.MissingModuleException(
            "pooltagscan",
            f"the pooltagscan package is not importable ({exc}); install it in the Python "
            "environment that runs vol: pip install pooltagscan (or pip install -e "
            "<pooltagscan checkout>)",
        ) from None
    return pooltagscan


# Volatility layer classes -> pooltagscan's format names.
_FORMATS = (
    (crash.WindowsCrashDump32Layer, "crashdump"),
    (lime.LimeLayer, "lime"),
    (elf.Elf64Layer, "elfcore"),
    (vmware.VmwareLayer, "vmware"),
)
# pooltagscan.stats.COLUMNS (in that order) -> column headings.
STATS_HEADINGS = {
    "nonpaged_allocs": "NonPagedAllocs",
    "nonpaged_bytes": "NonPagedBytes",
    "paged_allocs": "PagedAllocs",
    "paged_bytes": "PagedBytes",
    "free_allocs": "FreeAllocs",
    "free_bytes": "FreeBytes",
    "undecided": "Undecided",
    "total_allocs": "TotalAllocs",
    "total_bytes": "TotalBytes",
    "allocated_allocs": "AllocatedAllocs",
    "allocated_bytes": "AllocatedBytes",
    "undecided_bytes": "UndecidedBytes",
    "live_allocs": "LiveAllocs",
    "live_bytes": "LiveBytes",
    "high_confidence": "HighConfidence",
    "medium_confidence": "MediumConfidence",
    "low_confidence": "LowConfidence",
    "small_allocs": "SmallAllocs",
    "small_bytes": "SmallBytes",
    "big_allocs": "BigAllocs",
    "big_bytes": "BigBytes",
}


TRACKER_HEADINGS = {
    "nonpaged_allocs": "NonPagedAllocs",
    "nonpaged_frees": "NonPagedFrees",
    "nonpaged_bytes": "NonPagedBytes",
    "paged_allocs": "PagedAllocs",
    "paged_frees": "PagedFrees",
    "paged_bytes": "PagedBytes",
}


class PoolTagScan(interfaces.plugins.PluginInterface):
    """Scans physical memory for Windows kernel pool headers, without kernel symbols.

    Every 8/16-byte slot of every page is checked for a POOL_HEADER (x86, x64 and the
    Windows 10 19H1+/11 segment heap); records carry a confidence. Needs the pooltagscan
    package installed in Volatility's Python environment.
    """

    _required_framework_version = (2, 26, 0)
    _version = (1, 1, 0)  # 1.1: --tag, an alias of --tags

    @classmethod
    def get_requirements(cls) -> list[interfaces.configuration.RequirementInterface]:
        return [
            # No architectures: a raw FileLayer, crash/LiME/ELF/VMware layers and Intel
            # layers all satisfy it; the scan always runs on the physical layer.
            requirements.TranslationLayerRequirement(
                name="primary", description="Memory layer to scan"
            ),
            requirements.ListRequirement(
                name="tags",
                element_type=str,
                optional=True,
                default=[],
                description="Only tags matching these patterns (? and * wildcards, "
                "case-sensitive; short tags are space padded), like !poolfind",
            ),
            requirements.ListRequirement(
                name="tag",
                element_type=str,
                optional=True,
                default=[],
                description="Same as --tags (the name `pooltagscan scan` uses); both "
                "lists are merged",
            ),
            requirements.BooleanRequirement(
                name="stats",
                default=False,
                optional=True,
                description="Per-tag counts and bytes, nonpaged/paged/free, like !poolused",
            ),
            requirements.ListRequirement(
                name="pooltag",
                element_type=str,
                optional=True,
                default=[],
                description="WinDbg pooltag.txt / PoolMon localtag.txt files for tag "
                "owners and descriptions (also POOLTAGSCAN_POOLTAG)",
            ),
            requirements.ChoiceRequirement(
                name="layout",
                choices=list(LAYOUT_CHOICES),
                default="auto",
                optional=True,
                description="Pool header family (default: detected from the dump)",
            ),
            requirements.ChoiceRequirement(
                name="min_confidence",
                choices=list(CONFIDENCE_NAMES),
                default="low",
                optional=True,
                description="Drop records below this confidence",
            ),
            requirements.ListRequirement(
                name="pool",
                element_type=str,
                optional=True,
                default=[],
                description=f"Only these pools ({', '.join(POOL_NAMES)})",
            ),
            requirements.ListRequirement(
                name="state",
                element_type=str,
                optional=True,
                default=[],
                description=f"Only these states ({', '.join(STATE_NAMES)})",
            ),
            requirements.ListRequirement(
                name="source",
                element_type=str,
                optional=True,
                default=[],
                description=f"Only blocks of these sources ({', '.join(SOURCE_NAMES)}): pool "
                "pages, or the kernel's big-page table",
            ),
            requirements.BooleanRequirement(
                name="tracker",
                default=False,
                optional=True,
                description="The kernel's own per-tag counters (PoolTrackTable found in the "
                "dump), like PoolMon",
            ),
            requirements.ChoiceRequirement(
                name="sort",
                choices=list(SORT_KEYS),
                default=None,
                optional=True,
                description="Order of --stats and --tracker rows (default: bytes); "
                "refused for records, which come in scan order",
            ),
            requirements.IntRequirement(
                name="jobs",
                default=0,
                optional=True,
                description="Scan threads for large dumps (default: all cores)",
            ),
        ]

    # ------------------------------------------------------------------ building

    def _option(self, name: str, default: Any) -> Any:
        value = self.config.get(name, None)
        return default if value is None else value

    def _image(self, pts: Any) -> Any:
        """pooltagscan's MemoryImage of the physical layer under the configured layer."""
        volmap = pts.inputs.volmap
        context = self.context
        name = volmap.physical_layer_name(context, self.config["primary"])
        layer = context.layers[name]
        if isinstance(layer, physical.FileLayer):
            path = volmap.file_layer_path(layer)
            if path is not None:
                # Our own reader decides what the file is: raw, or a format Volatility
                # left unstacked (kernel minidumps), or something that is no dump at all.
                return pts.inputs.open_image(path)
        else:
            try:
                pieces = volmap.file_pieces(context, name)
            except volmap.NotFileBacked as exc:
                vollog.info(f"{name} is not file-backed ({exc}); reading through the layer")
                pieces = []
            files = {p.file_layer for p in pieces}
            path = volmap.file_layer_path(context.layers[files.pop()]) if len(files) == 1 else None
            if path is not None:
                return self._mapped_image(pts, layer, path, pieces)
        vollog.info(f"{name}: no local file to map; reading windows through the layer")
        return volmap.layer_image(context, name, f"{name} ({type(layer).__name__})")

    @staticmethod
    def _mapped_image(pts: Any, layer: Any, path: str, pieces: list) -> Any:
        """The fast path: Volatility's map of the physical layer, the file's bytes by mmap."""
        source = pts.files.InputFile.open(path, "a memory dump")  # one descriptor, read-only
        size = source.size
        runs, notes = pts.inputs.volmap.runs_from_pieces(pieces, size)
        fmt = next((f for cls, f in _FORMATS if isinstance(layer, cls)), "volatility-layer")
        image = pts.inputs.base.MemoryImage(
            path=path, format=fmt, runs=runs, file_size=size, notes=notes, source=source
        )
        head = source.pread(0, 0x2000)
        if fmt == "crashdump":
            header = pts.inputs.crashdump.parse_header(path, head)
            image.architecture = header.architecture
            image.details.update(header.details())
        elif fmt == "elfcore":
            machine = int.from_bytes(head[18:20], "little")
            image.architecture = pts.inputs.elfcore.MACHINES.get(machine)
        image.details["segments"] = len(pieces)
        return image

    # ------------------------------------------------------------------ running

    def run(self) -> renderers.TreeGrid:
        pts = _pooltagscan()
        stats = bool(self._option("stats", False))
        tracker = bool(self._option("tracker", False))
        if tracker:
            columns, make = self._tracker_columns(), self._tracker_rows
        elif stats:
            columns, make = self._stats_columns(), self._stats_rows
        else:
            columns, make = self._record_columns(), self._record_rows
        try:
            if tracker and stats:
                raise ValueError("--tracker is a view of its own: not with --stats")
            if self.config.get("sort", None) is not None and not (tracker or stats):
                raise ValueError(pts.scan.SORT_WITH_RECORDS)
            work = self._prepare(pts)
        except (pts.errors.InputError, ValueError) as exc:
            # Volatility's way with bad input: one error line, no rows, no traceback.
            vollog.error(f"pooltagscan: {exc}")
            return renderers.TreeGrid(columns, iter(()))
        return renderers.TreeGrid(columns, self._guarded(pts, make(pts, *work)))

    @staticmethod
    def _guarded(pts: Any, rows: Iterator[tuple[int, tuple]]) -> Iterator[tuple[int, tuple]]:
        """The rows, ended by one error line if the dump fails during the scan (it shrank,
        was replaced, a worker died): never a traceback from inside the renderer."""
        try:
            yield from rows
        except (pts.errors.InputError, pts.workers.WorkerError) as exc:
            vollog.error(f"pooltagscan: {exc}")

    def _prepare(self, pts: Any) -> tuple[Any, Any, Any, int]:
        # --tags and --tag (the CLI's name) are one list, so a command line copied from
        # either tool works in the other.
        patterns = [*self._option("tags", []), *self._option("tag", [])]
        record_filter = pts.filters.RecordFilter.from_names(
            patterns,
            self._option("min_confidence", "low"),
            self._option("pool", []),
            self._option("state", []),
            self._option("source", []),
        )
        db = pts.tags.database.TagDatabase.load(self._option("pooltag", []))
        image = self._image(pts)
        for note in image.notes:
            vollog.info(f"pooltagscan: {image.path}: {note}")
        prepared = pts.scan.prepare(image, self._option("layout", "auto"), db)
        vollog.info(
            f"pooltagscan {pts.__version__}: {image.path}: {image.describe()}; "
            f"layout: {prepared.detection.describe()}"
        )
        # The CLI's warnings in the CLI's words: a document rather than memory, a layout
        # forced against the evidence, no pool structure proven at all.
        for warning in prepared.warnings():
            vollog.warning(f"pooltagscan: {image.path}: {warning}")
        jobs = int(self._option("jobs", 0)) or pts.parallel.default_jobs()
        return prepared, record_filter, db, jobs

    def _progress(self, done: int, total: int) -> None:
        self._progress_callback(100.0 * done / total if total else 100.0, "Scanning pool pages")

    @staticmethod
    def _record_columns() -> list[tuple[str, type]]:
        return [
            ("Offset", format_hints.Hex),
            ("Tag", str),
            ("Protected", bool),
            ("Size", int),
            ("Pool", str),
            ("State", str),
            ("Layout", str),
            ("Confidence", str),
            ("Source", str),
            ("Entry", format_hints.Hex),
            ("Owner", str),
            ("Description", str),
        ]

    def _record_rows(
        self, pts: Any, prepared: Any, record_filter: Any, db: Any, jobs: int
    ) -> Iterator[tuple[int, tuple]]:
        """The fields of pooltagscan.records.to_dicts, as Volatility row tuples; owner
        and description from the same tag database as the standalone scan."""
        names = pts.records.TagNames(db)
        hex_hint = format_hints.Hex
        for records in pts.scan.run(prepared, record_filter, jobs, self._progress):
            for offset, *rest, entry, owner, description in pts.records.to_tuples(records, names):
                entry = renderers.NotApplicableValue() if entry is None else hex_hint(entry)
                yield 0, (hex_hint(offset), *rest, entry, owner, description)

    @staticmethod
    def _stats_columns() -> list[tuple[str, type]]:
        return (
            [("Tag", str)]
            + [(heading, int) for heading in STATS_HEADINGS.values()]
            + [("KernelLive", int), ("Seen", float), ("KernelFlag", str)]
            + [("Owner", str), ("Description", str)]
        )

    def _stats_rows(
        self, pts: Any, prepared: Any, record_filter: Any, db: Any, jobs: int
    ) -> Iterator[tuple[int, tuple]]:
        totals = pts.tracking.TrackerTotals()
        # As the CLI's --stats: workers ship per-tag counters, not records.
        summary = pts.summary.ScanSummary(prepared.image.scanned_bytes)
        stats = pts.summary.collect_stats(
            prepared, summary, record_filter, jobs, self._progress, totals.add
        )
        rows = stats.rows(db.describe, self._option("sort", "bytes"))
        pts.tracking.attach(rows, totals)
        absent = renderers.NotApplicableValue
        for row in rows:
            counters = tuple(row.counters[c] for c in STATS_HEADINGS)
            kernel = tuple(
                absent() if (row.tracker or {}).get(c) is None else row.tracker[c]
                for c in pts.stats.TRACKER_COLUMNS
            )
            yield 0, (row.tag, *counters, *kernel, row.owner, row.description)

    @staticmethod
    def _tracker_columns() -> list[tuple[str, type]]:
        return [("Tag", str)] + [(h, int) for h in TRACKER_HEADINGS.values()] + [("Owner", str)]

    def _tracker_rows(
        self, pts: Any, prepared: Any, _filter: Any, db: Any, jobs: int
    ) -> Iterator[tuple[int, tuple]]:
        totals = pts.tracking.TrackerTotals()
        pts.summary.collect_tracker(prepared, totals.add, jobs, self._progress)
        if not totals.found:
            vollog.warning(f"pooltagscan: {prepared.image.path}: no pool tracker table found")
        for row in totals.rows(db.describe, self._option("sort", "bytes")):
            yield 0, (row.tag, *(row.counters[c] for c in TRACKER_HEADINGS), row.owner)


class PoolTagScanStacking(interfaces.automagic.AutomagicInterface):
    """Stacks only file-format layers (crash dump, LiME, ELF, VMware...) for PoolTagScan.

    Runs before Volatility's LayerStacker and satisfies PoolTagScan's layer requirement
    with the format stackers alone, so LayerStacker then has nothing to do. The OS
    stackers are left out because they only build the virtual (Intel) layer this plugin
    never uses, and WindowsIntelStacker's page-table search alone can cost several times
    the scan. Any other plugin is left entirely to the usual automagic; a `--stackers`
    list given to vol is honoured, minus the OS stackers.
    """

    priority = 5  # after ConstructionMagic (0), before LayerStacker (10)

    def __call__(
        self,
        context: interfaces.context.ContextInterface,
        config_path: str,
        requirement: interfaces.configuration.RequirementInterface,
        progress_callback: Any = None,
    ) -> list[str] | None:
        if requirement.name != PoolTagScan.__name__ or not requirement.unsatisfied(
            context, config_path
        ):
            return None
        location = context.config.get("automagic.LayerStacker.single_location", None)
        if not location:
            return None  # LayerStacker will say what is missing
        configured = context.config.get("automagic.LayerStacker.stackers", None) or [
            s.__name__ for s in stacker.LayerStacker(context, "automagic.LayerStacker")
            .create_stackers_list()
        ]  # fmt: skip
        formats = format_stackers()
        chosen = [name for name in configured if name in formats]
        inner_path = interfaces.configuration.path_join(self.config_path, "LayerStacker")
        context.config[interfaces.configuration.path_join(inner_path, "single_location")] = location
        context.config[interfaces.configuration.path_join(inner_path, "stackers")] = chosen
        vollog.debug(f"PoolTagScanStacking: stacking with {chosen}")
        return stacker.LayerStacker(context, inner_path)(
            context, config_path, requirement, progress_callback
        )


def format_stackers() -> set[str]:
    """Stackers that recognise file formats (everything but the OS/Intel stackers).

    Volatility defines the OS stackers, which scan memory for page tables or kernel
    banners to build virtual layers, in its automagic package; the format stackers live
    with their layers.
    """
    import sys

    from volatility3 import framework

    framework.import_files(sys.modules["volatility3.framework.layers"])
    return {
        s.__name__
        for s in framework.class_subclasses(interfaces.automagic.StackerLayerInterface)
        if not s.__module__.startswith("volatility3.framework.automagic")
    }
