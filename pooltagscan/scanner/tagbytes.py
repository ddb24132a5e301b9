"""Vectorized checks on 32-bit tag values."""

from __future__ import annotations

import numpy as np

PROTECTED_BIT = np.uint32(0x80000000)


def _printable(byte: np.ndarray) -> np.ndarray:
    return (byte >= 0x20) & (byte <= 0x7E)


def split_protected(tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tags with the pre-Win8 protected bit cleared, protected flags).

    The bit is only taken as "protected" when the cleared tag is fully printable, so a
    genuinely odd tag byte is reported as \\xNN rather than silently rewritten.
    """
    tags = tags.astype(np.uint32, copy=False)
    cleared = tags & np.uint32(0x7FFFFFFF)
    protected = ((tags & PROTECTED_BIT) != 0) & printable(cleared)
    return np.where(protected, cleared, tags), protected


def printable(tags: np.ndarray, allow_protected: bool = False) -> np.ndarray:
    """All four bytes in 0x20-0x7E (the last may carry the protected bit if allowed)."""
    tags = tags.astype(np.uint32, copy=False)
    last = (tags >> 24) & (0x7F if allow_protected else 0xFF)
    return (
        _printable(tags & 0xFF)
        & _printable((tags >> 8) & 0xFF)
        & _printable((tags >> 16) & 0xFF)
        & _printable(last)
    )
