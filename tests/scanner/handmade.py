"""Builders of hand-made pool pages for the scanner tests: bytes packed with struct, so
every expected offset, size and code in a test is known by construction."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np

PAGE = 4096


def tag_value(tag: bytes) -> int:
    """The uint32 a 4-byte tag reads as from the header's second word."""
    return int.from_bytes(tag, "little")


def x64_header(prev: int, index: int, block: int, pooltype: int, tag: bytes) -> bytes:
    """A 16-byte x64 `_POOL_HEADER` (one byte per field, then the tag, ProcessBilled 0)."""
    return struct.pack("<BBBB4sQ", prev, index, block, pooltype, tag, 0)


def x86_header(prev: int, index: int, block: int, pooltype: int, tag: bytes) -> bytes:
    """An 8-byte x86 `_POOL_HEADER`: two u16 of 9+7 bits, then the tag."""
    return struct.pack("<HH4s", prev | index << 9, block | pooltype << 9, tag)


def blank(pages: int = 1) -> bytearray:
    return bytearray(PAGE * pages)


def put(buf: bytearray, at: int, data: bytes) -> None:
    buf[at : at + len(data)] = data


def words_of(buf: bytes | bytearray) -> np.ndarray:
    """The scanner's view of a window: uint32 words, shape (pages, 1024)."""
    return np.frombuffer(bytes(buf), dtype="<u4").reshape(-1, PAGE // 4).copy()


def legacy_chain(
    buf: bytearray,
    page: int,
    blocks: Sequence[int],
    pooltypes: Sequence[int],
    tags: Sequence[bytes],
    *,
    unit: int,
    header=x64_header,
) -> list[int]:
    """Write a PreviousSize-linked chain of `blocks` (units) from the page start; returns
    the byte offsets of the headers within the page."""
    offsets: list[int] = []
    at, prev = 0, 0
    for block, pooltype, tag in zip(blocks, pooltypes, tags, strict=True):
        put(buf, page * PAGE + at, header(prev, 0, block, pooltype, tag))
        offsets.append(at)
        at += block * unit
        prev = block
    return offsets


def cycle(values: Iterable, n: int) -> list:
    """The first n values of `values` repeated."""
    values = list(values)
    return [values[i % len(values)] for i in range(n)]
