"""np.unique(values, return_inverse=True) for the arrays of a scan, at a third of its cost.

A window's records repeat a few dozen tags (or a few hundred tag/size/state combinations)
tens of thousands of times. np.unique finds the inverse with an argsort of the whole
array; here a sort finds the distinct values and the inverse comes from a lookup table
indexed by a multiplicative hash that is collision-free on those values, falling back
to np.unique when no such hash is found quickly or the table would be large.
"""

from __future__ import annotations

import numpy as np

# Odd multipliers with well-mixed bits (golden ratio and hash finalisers' constants).
_FACTORS = {
    4: (0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F),
    8: (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xFF51AFD7ED558CCD),
}
# Largest lookup table tried (entries); more distinct values go to np.unique.
_MAX_BITS = 20


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value among them) of a uint32/uint64 array."""
    kind = np.dtype(np.uint64 if values.dtype.itemsize == 8 else np.uint32)
    values = np.ascontiguousarray(values, kind)
    ordered = np.sort(values)
    first = np.empty(ordered.size, bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    uniq = ordered[first]
    bits = max(4, int(uniq.size).bit_length() + 3)
    if bits <= _MAX_BITS:
        shift = kind.type(kind.itemsize * 8 - bits)
        for factor in _FACTORS[kind.itemsize]:
            slot = (uniq * kind.type(factor)) >> shift
            taken = np.sort(slot)
            if not np.any(taken[1:] == taken[:-1]):
                table = np.zeros(1 << bits, np.int64)
                table[slot] = np.arange(uniq.size)
                return uniq, table[(values * kind.type(factor)) >> shift]
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, inverse.reshape(-1)
