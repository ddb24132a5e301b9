"""The library's front door: prepare and run a scan of one image.

Shells (CLI, Volatility plugin, report) call these and render the results; nothing here
prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pooltagscan.addressing import KernelSpace, kernel_space
from pooltagscan.filters import RecordFilter
from pooltagscan.inputs.base import MemoryImage
from pooltagscan.layouts import LAYOUTS, Family
from pooltagscan.scanner.detect import Detection, detect
from pooltagscan.scanner.engine import ProgressCallback, TrackerSink, scan_image
from pooltagscan.scanner.pages import ScanConfig
from pooltagscan.tags.database import TagDatabase
from pooltagscan.tags.patterns import tag_to_bytes

LAYOUT_CHOICES = ("auto", *(f.value for f in Family))
# The words every shell uses for a dump in which the detection proves nothing: the CLI
# prints them as a warning, the Volatility plugin logs them, `diff` refuses the dump.
NO_EVIDENCE = "no pool structure proven in the sampled pages; results are unlikely"
# Records come in scan order: the one text every shell gives a --sort without a view
# that has rows to order.
SORT_WITH_RECORDS = "--sort orders --stats and --tracker rows; records come in scan order"
# Detection.evidence keys that count proving pages per family, in detect's tie order.
EVIDENCE_KEYS = {fam: layout.evidence for fam, layout in LAYOUTS.items()}


def contrary_family(family: Family, evidence: dict[str, int]) -> Family | None:
    """The family the detection evidence favours over `family`, or None.

    A `--layout` forced against the dump's own structure does not fail: each family's
    checks still find header-shaped bytes, so the scan returns bogus records silently.
    Shells warn when the evidence proves more pages for another family; a tie or no
    evidence at all is no contradiction (the user may know better than a sample).
    """
    counts = {fam: int(evidence.get(key, 0)) for fam, key in EVIDENCE_KEYS.items()}
    best = max(counts, key=lambda fam: counts[fam])
    return best if counts[best] > counts[family] else None


def forced_layout_warning(layout: str, evidence: dict[str, int]) -> str | None:
    """The warning for a `--layout` forced against the evidence, or None.

    One text for every shell (CLI, report, diff, plugin), so that an analyst who met it in
    one recognises it in another; the shell adds the dump's name and its own prefix.
    """
    favoured = contrary_family(Family(layout), evidence)
    if favoured is None:
        return None
    counts = ", ".join(f"{k} {v}" for k, v in evidence.items())
    return (
        f"--layout {layout} goes against the evidence, which favours {favoured.value} "
        f"({counts}); records are likely bogus"
    )


def proves_nothing(evidence: dict[str, int]) -> bool:
    """Whether the detection found no pool structure at all (every family's count zero).

    Such a file scans to header-shaped noise whatever the layout: it is garbage, text, or
    memory of a system we do not read, and its records should not be trusted or compared.
    """
    return not any(int(evidence.get(key, 0)) for key in EVIDENCE_KEYS.values())


@dataclass
class PreparedScan:
    image: MemoryImage
    detection: Detection
    config: ScanConfig
    forced: bool = False  # the family is the user's `--layout`, not the detected one

    def contrary_family(self) -> Family | None:
        """For a forced layout, the family the evidence favours instead (else None)."""
        if not self.forced:
            return None
        return contrary_family(self.config.family, self.detection.evidence)

    def warnings(self) -> list[str]:
        """What a shell should warn about before trusting this scan, in shared words: a
        file that looks like a document rather than memory, a layout forced against the
        evidence, no pool structure proven at all."""
        found = []
        if self.image.looks_like:
            found.append(f"this looks like {self.image.looks_like}, not a memory dump")
        if self.forced:
            forced = forced_layout_warning(self.config.family.value, self.detection.evidence)
            if forced:
                found.append(forced)
        if proves_nothing(self.detection.evidence):
            found.append(NO_EVIDENCE)
        return found

    @property
    def how(self) -> str:
        """How the family was chosen: `forced` (--layout), `defaulted` (no evidence at
        all, so the first family won a tie of zeros) or `detected`."""
        if self.forced:
            return "forced"
        return "defaulted" if proves_nothing(self.detection.evidence) else "detected"

    def kernel_space(self) -> KernelSpace:
        """The kernel's page tables (searched once, on first use: a pass over the dump),
        for the views that read big-pool allocations at their virtual addresses."""
        space = self.__dict__.get("_kernel_space")
        if space is None:
            arch = self.image.architecture or LAYOUTS[self.config.family].architecture
            space = kernel_space(self.image, arch)
            self.__dict__["_kernel_space"] = space
        return space

    def metadata(self) -> dict:
        """Facts about the scan for JSON outputs and report headers (with the kernel
        address space when `kernel_space` was asked for)."""
        meta = {
            "dump": self.image.path,
            "format": self.image.format,
            # A flat image does not say; the header family does (x86 or x64).
            "architecture": self.image.architecture or LAYOUTS[self.config.family].architecture,
            "format_details": dict(self.image.details),
            "layout": self.config.family.value,
            "pooltype_encoding": self.config.encoding.value,
            "scanned_bytes": self.image.scanned_bytes,
            "evidence": self.detection.evidence,
        }
        if "_kernel_space" in self.__dict__:
            meta["kernel_space"] = self.__dict__["_kernel_space"].as_dict()
        return meta


def known_tag_values(db: TagDatabase | None) -> np.ndarray:
    """Sorted uint32 values of the database's exact (wildcard-free) tags."""
    if db is None:
        return np.empty(0, np.uint32)
    values = set()
    for entry in db.entries:
        if "?" in entry.tag or "*" in entry.tag:
            continue
        try:
            raw = tag_to_bytes(entry.tag)
        except ValueError:
            continue
        if len(raw) == 4:
            values.add(int.from_bytes(raw, "little"))
    return np.array(sorted(values), dtype=np.uint32)


def prepare(
    image: MemoryImage,
    layout: str = "auto",
    db: TagDatabase | None = None,
    tables: bool = True,
) -> PreparedScan:
    """Choose the family (or take the user's) and the PoolType encoding; `tables` also
    searches every page for the big-page and tracker tables."""
    if layout not in LAYOUT_CHOICES:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUT_CHOICES)}")
    forced = None if layout == "auto" else Family(layout)
    detection = detect(image, forced)
    config = ScanConfig(detection.family, detection.encoding, known_tag_values(db), tables)
    return PreparedScan(image, detection, config, forced=forced is not None)


def run(
    prepared: PreparedScan,
    record_filter: RecordFilter | None = None,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
    tracker: TrackerSink | None = None,
) -> Iterator[np.ndarray]:
    """Filtered record batches, window by window (see scanner.engine.scan_image);
    `tracker` receives the rows of the kernel's tag tracker table met on the way. The
    filter runs in the thread that scanned the window."""
    reduce = record_filter.apply if record_filter else None
    yield from scan_image(
        prepared.image, prepared.config, jobs, progress, tracker=tracker, reduce=reduce
    )
