"""Pick the header family and PoolType encoding of a dump from its own pages.

Each family is asked how much structure it can prove on a sample of the dump: complete
legacy chains (x86 or x64 units) or linked segment-heap headers. The family with the most
proving pages wins; legacy families then vote between the XP and Vista encodings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pooltagscan.inputs.base import MemoryImage, Window
from pooltagscan.layouts import LAYOUTS, PAGE_SIZE, Encoding, Family
from pooltagscan.scanner import legacy, segment

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
    x86_pages = x64_pages = seg_pages = 0
    votes = {Family.X86: [0, 0], Family.X64: [0, 0]}
    sampled = 0
    for window in sample_windows(image, sample_bytes):
        sampled += window.length
        with image.words(window) as words:
            for legacy_family in (Family.X86, Family.X64):
                chunks = legacy.walk_chains(words, LAYOUTS[legacy_family])
                count = legacy.complete_pages(chunks)
                xp, vista = legacy.chain_votes(chunks, LAYOUTS[legacy_family])
                votes[legacy_family][0] += xp
                votes[legacy_family][1] += vista
                if legacy_family is Family.X86:
                    x86_pages += count
                else:
                    x64_pages += count
            found = segment.find_headers(words)
            seg_pages += int(np.unique(found.slot[found.linked] // segment.SLOTS_PER_PAGE).size)
    evidence = {"x86 chains": x86_pages, "x64 chains": x64_pages, "segment-heap pages": seg_pages}
    best = max(
        ((x64_pages, Family.X64), (seg_pages, Family.SEGMENT_HEAP), (x86_pages, Family.X86)),
        key=lambda item: item[0],
    )
    family = family or best[1]
    if family is Family.SEGMENT_HEAP:
        encoding = Encoding.SEGMENT_HEAP
    else:
        encoding = choose_encoding(*votes[family])
        evidence["xp votes"], evidence["vista votes"] = votes[family]
    return Detection(family, encoding, evidence, sampled)


def choose_encoding(xp_votes: int, vista_votes: int) -> Encoding:
    """XP only on positive evidence; Vista+ is by far the commoner and the default."""
    return Encoding.XP if xp_votes > vista_votes else Encoding.VISTA
