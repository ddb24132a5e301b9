"""Allocation records: a numpy structured array while scanning, dicts only at the edge.

Scans of multi-GiB dumps yield millions of records; keeping them as packed arrays keeps
memory bounded and lets filters and statistics stay vectorized. `to_dicts` produces the
objects of the output contract (DESIGN.md section 6) for renderers and the plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pooltagscan.layouts import Family
from pooltagscan.tags.database import TagDatabase
from pooltagscan.tags.patterns import tag_from_bytes

RECORD_DTYPE = np.dtype(
    [
        ("offset", "<u8"),  # address of the POOL_HEADER in the scanned address space
        ("tag", "<u4"),  # tag as in memory, protected bit cleared
        ("size", "<u4"),  # BlockSize * unit, header included
        ("pooltype", "u1"),  # raw PoolType field
        ("pool", "u1"),  # layouts.POOL_*
        ("state", "u1"),  # layouts.STATE_*
        ("confidence", "u1"),  # CONFIDENCE_* below
        ("protected", "?"),
        ("family", "u1"),  # index into FAMILY_CODES
        ("source", "u1"),  # SOURCE_PAGE or SOURCE_BIGPOOL
        ("entry", "<u8"),  # bigpool: physical address of the big-page table entry; else 0
    ]
)

CONFIDENCE_LOW, CONFIDENCE_MEDIUM, CONFIDENCE_HIGH = 0, 1, 2
CONFIDENCE_NAMES = ("low", "medium", "high")
POOL_NAMES = ("nonpaged", "paged", "unknown")
STATE_NAMES = ("allocated", "free", "unknown")
SOURCE_PAGE, SOURCE_BIGPOOL = 0, 1
SOURCE_NAMES = ("page", "bigpool")
FAMILY_CODES: tuple[Family, ...] = tuple(Family)
FAMILY_INDEX = {fam: i for i, fam in enumerate(FAMILY_CODES)}

FIELDS = (
    "offset",
    "tag",
    "protected",
    "size",
    "pool",
    "state",
    "layout",
    "confidence",
    "source",
    "entry",
    "owner",
    "description",
)


def empty_records() -> np.ndarray:
    return np.empty(0, dtype=RECORD_DTYPE)


# The record as one opaque item. numpy copies a packed structured dtype field by field:
# indexing, masking or concatenating records that way costs 10-40x a byte copy (17 ms
# against 0.7 ms for a window's gather), more than the C scan of the window.
_ROW = np.dtype((np.void, RECORD_DTYPE.itemsize))


def take(records: np.ndarray, which: np.ndarray) -> np.ndarray:
    """`records[which]` (a boolean mask or indices) at the speed of a byte copy."""
    return records.view(_ROW)[which].view(RECORD_DTYPE)


def concat(parts: list[np.ndarray]) -> np.ndarray:
    """The record arrays one after the other, at the speed of a byte copy."""
    if not parts:
        return empty_records()
    return np.concatenate([p.view(_ROW) for p in parts]).view(RECORD_DTYPE)


class TagNames:
    """Caches the text form of tag values, and what the tag database says about them;
    dumps repeat a few thousand tags millions of times.

    `db` answers `about` (the owner and description of record output); without one the
    built-in table is asked, loaded only when first needed.
    """

    def __init__(self, db: TagDatabase | None = None) -> None:
        self._cache: dict[int, str] = {}
        self._about: dict[int, tuple[str, str]] = {}
        self._db = db

    def __call__(self, value: int) -> str:
        text = self._cache.get(value)
        if text is None:
            text = tag_from_bytes(int(value).to_bytes(4, "little"))[0]
            self._cache[value] = text
        return text

    def about(self, value: int) -> tuple[str, str]:
        """(owner, description) of the tag's best database entry; empty strings for a tag
        nobody describes, as in the --stats rows."""
        found = self._about.get(value)
        if found is None:
            if self._db is None:
                self._db = TagDatabase.builtin()
            info = self._db.describe(int(value))
            found = (info.owner, info.description) if info is not None else ("", "")
            self._about[value] = found
        return found


def to_tuples(records: np.ndarray, names: TagNames | None = None) -> Iterator[tuple]:
    """Contract values in FIELDS order, names resolved: the one place that turns record
    codes into the words of DESIGN.md section 6 (dicts for tests and the plugin, and the
    reference the bulk writers of render.records are held to). `entry` is None on page
    records; owner and description come from `names`' tag database."""
    names = names or TagNames()
    about = names.about
    layouts = [family.value for family in FAMILY_CODES]
    for offset, tag, prot, size, pool, state, fam, conf, source, entry in zip(
        records["offset"].tolist(),
        records["tag"].tolist(),
        records["protected"].tolist(),
        records["size"].tolist(),
        records["pool"].tolist(),
        records["state"].tolist(),
        records["family"].tolist(),
        records["confidence"].tolist(),
        records["source"].tolist(),
        records["entry"].tolist(),
    ):
        yield (
            offset,
            names(tag),
            prot,
            size,
            POOL_NAMES[pool],
            STATE_NAMES[state],
            layouts[fam],
            CONFIDENCE_NAMES[conf],
            SOURCE_NAMES[source],
            entry if source == SOURCE_BIGPOOL else None,
            *about(tag),
        )


def to_dicts(records: np.ndarray, names: TagNames | None = None) -> Iterator[dict[str, Any]]:
    """Contract objects, field order as in DESIGN.md section 6; `entry` only on big-pool
    records (a page record has no table entry, and millions of nulls cost output time),
    owner and description last."""
    entry = FIELDS.index("entry")
    page_fields = FIELDS[:entry] + FIELDS[entry + 1 :]
    for values in to_tuples(records, names):
        if values[entry] is not None:
            yield dict(zip(FIELDS, values))
        else:
            yield dict(zip(page_fields, values[:entry] + values[entry + 1 :]))
