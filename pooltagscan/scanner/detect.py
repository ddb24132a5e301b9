"""Pick the header family and PoolType encoding of a dump from its own pages.

Each family is asked how much structure it can prove on a sample of the dump: complete
legacy chains (x86 or x64 units) or linked segment-heap headers. The family with the most
proving pages wins; legacy families then vote between the XP and Vista encodings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pooltagscan.inputs.base import MemoryImage, Window
from pooltagscan.layouts import LAYOUTS, LEGACY_POOLTYPE_LIMIT, PAGE_SIZE, Encoding, Family, Layout
from pooltagscan.scanner import legacy, segment
from pooltagscan.scanner.native import native

SAMPLE_BYTES = 64 << 20
SAMPLE_SLICES = 32


@dataclass
class Detection:
    family: Family
    encoding: Encoding
    evidence: dict[str, int]  # pages proving each family, and the encoding votes
    sampled_bytes: int

    def describe(self) -> str:
        ev = ", ".join(f"{k} {v}" for k, v in self.evidence.items())
        return f"{self.family.value} ({self.encoding.value} PoolType encoding; evidence: {ev})"


def sample_windows(image: MemoryImage, sample_bytes: int = SAMPLE_BYTES) -> list[Window]:
    """The whole image when small, else evenly spread slices of it."""
    total = image.scanned_bytes
    if total <= sample_bytes:
        return list(image.windows(32 << 20))
    size = max(PAGE_SIZE, (sample_bytes // SAMPLE_SLICES) // PAGE_SIZE * PAGE_SIZE)
    picks: list[Window] = []
    targets = np.linspace(0, total - size, SAMPLE_SLICES).astype(np.int64) // PAGE_SIZE
    for target in targets * PAGE_SIZE:
        skipped = 0
        for run in image.runs:
            if target < skipped + run.length:
                inner = int(target - skipped)
                length = min(size, run.length - inner)
                picks.append(Window(run.address + inner, run.file_offset + inner, length))
                break
            skipped += run.length
    return picks


def detect(
    image: MemoryImage, family: Family | None = None, sample_bytes: int = SAMPLE_BYTES
) -> Detection:
    """Measure the evidence for every family; `family` forces the choice (the user's
    `--layout`) while the encoding is still chosen from the votes."""
    proven = dict.fromkeys(LAYOUTS, 0)
    votes = {fam: [0, 0] for fam, lay in LAYOUTS.items() if lay.encoding is None}
    sampled = 0
    for window in sample_windows(image, sample_bytes):
        sampled += window.length
        with image.words(window) as words:
            for fam, layout in LAYOUTS.items():
                count, xp, vista = _evidence(words, layout)
                proven[fam] += count
                if fam in votes:
                    votes[fam][0] += xp
                    votes[fam][1] += vista
    evidence = {LAYOUTS[fam].evidence: count for fam, count in _report_order(proven)}
    # Ties go to the first family of LAYOUTS (its order is the order of preference).
    best = max(LAYOUTS, key=lambda fam: proven[fam])
    family = family or best
    encoding = LAYOUTS[family].encoding
    if encoding is None:
        encoding = choose_encoding(*votes[family])
        evidence["xp votes"], evidence["vista votes"] = votes[family]
    return Detection(family, encoding, evidence, sampled)


def _evidence(words, layout: Layout) -> tuple[int, int, int]:
    """(pages this family proves, XP votes, Vista votes) in one window."""
    if native is not None:
        return _native_evidence(words, layout)
    if layout.scanner == "segment":
        found = segment.find_headers(words, layout)
        pages = np.unique(found.slot[found.linked] // layout.units_per_page).size
        return int(pages), 0, 0
    chunks = legacy.walk_chains(words, layout)
    return legacy.complete_pages(chunks), *legacy.chain_votes(chunks, layout)


def _native_evidence(words, layout: Layout) -> tuple[int, int, int]:
    """The same counts by the C module, which walks each page once and builds no
    records: detection samples 64 MiB with every family, and the numpy walks cost a
    sixth of a whole 1 GiB scan."""
    if layout.scanner == "segment":
        mask, value = layout.segment_w0
        block, kind = layout.block, layout.pooltype
        pages = native.segment_evidence(
            words, layout.words_per_unit, int(mask), int(value), block.shift, block.mask,
            kind.shift, kind.mask, layout.segment_max_block, layout.vs_header_units,
        )  # fmt: skip
        return pages, 0, 0
    prev, block, kind = layout.previous, layout.block, layout.pooltype
    return native.legacy_evidence(
        words, layout.unit, prev.shift, prev.mask, block.shift, block.mask, kind.shift,
        kind.mask, LEGACY_POOLTYPE_LIMIT,
    )  # fmt: skip


def _report_order(proven: dict[Family, int]) -> list[tuple[Family, int]]:
    """Evidence counts in the words users have always seen them: by header size, legacy
    before segment heap."""
    return sorted(
        proven.items(), key=lambda kv: (LAYOUTS[kv[0]].unit, LAYOUTS[kv[0]].scanner != "legacy")
    )


def choose_encoding(xp_votes: int, vista_votes: int) -> Encoding:
    """XP only on positive evidence; Vista+ is by far the commoner and the default."""
    return Encoding.XP if xp_votes > vista_votes else Encoding.VISTA
