"""np.unique(values, return_inverse=True) for the arrays of a scan, at a fraction of its cost.

A window's records repeat a few dozen tags (or a few hundred tag/size/state combinations)
tens of thousands of times. np.unique finds the inverse with an argsort of the whole
array; the C module (`unique_inverse` in _tables.c) finds the distinct values with a
hash table in one pass and sorts only them. Without the C module np.unique runs; the
results are the same (tests/test_stats.py compares them).
"""

from __future__ import annotations

import numpy as np

from pooltagscan.scanner.native import native


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value among them) of a uint32/uint64 array."""
    kind = np.dtype(np.uint64 if values.dtype.itemsize == 8 else np.uint32)
    if native is not None:
        wide = np.ascontiguousarray(values, np.uint64)
        distinct, inverse = native.unique_inverse(wide)
        return np.frombuffer(distinct, np.uint64).astype(kind), np.frombuffer(inverse, np.int64)
    distinct, inverse = np.unique(np.asarray(values, kind), return_inverse=True)
    return distinct, inverse.reshape(-1)


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """np.unique(values) for the scan's per-window paths. np.unique (numpy 2) imports
    numpy.ma on first use: 11 ms, holding the GIL, in the first window of every run,
    while the other scan thread waits for it."""
    ordered = np.sort(values, axis=None)
    if ordered.size < 2:
        return ordered
    keep = np.empty(ordered.size, bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
