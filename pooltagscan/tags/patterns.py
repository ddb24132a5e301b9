"""Pool tag text, and WinDbg `!poolfind`-style tag patterns.

A pool tag is four bytes. We show it as text so that it survives JSON, CSV and a
terminal: printable ASCII bytes (0x20-0x7E) stand for themselves and every other byte
is written `\\xNN` (lowercase hex). `Proc` is the common case; `Ab\\x01c` is a tag whose
third byte is 0x01. Text of exactly four characters is always taken literally, so a tag
made of the printable bytes `\\`, `x`, `4`, `1` round-trips too; escapes only appear in
longer text, where they are unambiguous.

Patterns follow the conventions analysts already know from `!poolfind`, PoolMon `/i`
and pooltag.txt: matching is case-sensitive, `?` stands for exactly one byte, `*` for
any run of bytes (possibly empty), a pattern without `*` that is shorter than four
characters is padded with spaces (`Irp` means `Irp `, `Xy?` means `Xy? `, as in
PoolMon), and `\\xNN` names one byte by value (write a literal backslash as `\\x5c`).

Because every tag is exactly four bytes, any pattern - even one with several `*` - is
equivalent to a finite set of fixed four-slot templates, each slot either a byte or
"anything". A template is a (mask, value) pair over the little-endian uint32 form of the
tag: it matches when `tag & mask == value`. There are only 16 possible masks, so a whole
set of patterns is checked with at most 16 dictionary/set probes per tag, or 16
vectorized numpy passes over an array of tags, however many patterns there are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations_with_replacement

import numpy as np
import numpy.typing as npt

__all__ = [
    "PROTECTED_BIT",
    "TagMatcher",
    "TagPattern",
    "is_printable_byte",
    "parse_pattern",
    "tag_from_bytes",
    "tag_from_u32",
    "tag_to_bytes",
    "tag_to_u32",
]

#: High bit of the last tag byte: set on object allocations before Windows 8.
PROTECTED_BIT = 0x80

_FULL_MASK = 0xFFFFFFFF
_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")


def is_printable_byte(value: int) -> bool:
    """True for bytes shown as themselves in tag text (printable ASCII, space included)."""
    return 0x20 <= value <= 0x7E


def _render(raw: bytes) -> str:
    return "".join(chr(b) if is_printable_byte(b) else f"\\x{b:02x}" for b in raw)


def tag_from_bytes(raw: bytes) -> tuple[str, bool]:
    """Turn the four tag bytes of a pool header into (text, protected).

    The protected bit is only believed - and cleared - when the rest of the tag is plain
    printable text, because that is the only case where it can be told apart from a
    random byte; otherwise the byte is kept as it is and shown escaped.
    """
    if len(raw) != 4:
        raise ValueError(f"a pool tag is 4 bytes, got {len(raw)}")
    last = raw[3]
    if (
        last & PROTECTED_BIT
        and all(is_printable_byte(b) for b in raw[:3])
        and is_printable_byte(last & ~PROTECTED_BIT)
    ):
        return _render(raw[:3] + bytes([last & ~PROTECTED_BIT])), True
    return _render(bytes(raw)), False


def tag_to_bytes(tag: str) -> bytes:
    """Inverse of `tag_from_bytes` (the protected bit is never set again).

    Four-character text is taken literally; longer text has its `\\xNN` escapes
    decoded and must then come to exactly four bytes.
    """
    if len(tag) == 4:
        try:
            return tag.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"tag {tag!r} has a character that is not a single byte") from None
    out = bytearray()
    pos = 0
    while pos < len(tag):
        match = _ESCAPE.match(tag, pos)
        if match:
            out.append(int(match.group(1), 16))
            pos = match.end()
            continue
        code = ord(tag[pos])
        if code > 0xFF:
            raise ValueError(f"tag {tag!r} has a character that is not a single byte")
        out.append(code)
        pos += 1
    if len(out) != 4:
        raise ValueError(f"tag {tag!r} is {len(out)} bytes, a pool tag is 4")
    return bytes(out)


def tag_to_u32(tag: str) -> int:
    """The tag as the little-endian uint32 a pool header stores (`Proc` -> 0x636F7250)."""
    return int.from_bytes(tag_to_bytes(tag), "little")


def tag_from_u32(value: int) -> str:
    """Text of a uint32 tag value whose protected bit is already cleared."""
    return _render(int(value).to_bytes(4, "little"))


def _template_key(template: list[int | None]) -> tuple[int, int]:
    """(mask, value) of a 4-slot shape whose slots are a byte or None for "any byte"."""
    mask = value = 0
    for index, slot in enumerate(template):
        if slot is not None:
            mask |= 0xFF << (8 * index)
            value |= slot << (8 * index)
    return mask, value


@dataclass(frozen=True)
class TagPattern:
    """One compiled pattern.

    `text` is the normalized pattern (short wildcard-free patterns padded); `templates`
    the (mask, value) pairs it expands to; `literal_count` and `literal_prefix` rank how
    specific it is when several patterns describe the same tag.
    """

    text: str
    templates: tuple[tuple[int, int], ...]
    literal_count: int
    literal_prefix: int
    has_star: bool
    has_wildcard: bool

    def matches_value(self, value: int) -> bool:
        """Whether a uint32 tag value (protected bit cleared) fits this pattern."""
        return any(value & mask == want for mask, want in self.templates)

    def matches(self, tag: str | bytes) -> bool:
        """Whether a tag (text as produced by `tag_from_bytes`, or 4 raw bytes) fits."""
        raw = tag if isinstance(tag, bytes) else tag_to_bytes(tag)
        if len(raw) != 4:
            raise ValueError(f"a pool tag is 4 bytes, got {len(raw)}")
        return self.matches_value(int.from_bytes(raw, "little"))


# Token values for the two wildcards; real bytes are 0..255.
_ANY = -1
_STAR = -2


def _tokenize(text: str) -> list[int]:
    """Split pattern text into byte values and the wildcard tokens `_ANY` / `_STAR`."""
    tokens: list[int] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            match = _ESCAPE.match(text, pos)
            if not match:
                raise ValueError(
                    f"invalid pattern {text!r}: a backslash must start a \\xNN escape "
                    "(write a literal backslash as \\x5c)"
                )
            tokens.append(int(match.group(1), 16))
            pos = match.end()
            continue
        if char == "?":
            tokens.append(_ANY)
        elif char == "*":
            tokens.append(_STAR)
        else:
            code = ord(char)
            if code > 0xFF:
                raise ValueError(
                    f"invalid pattern {text!r}: {char!r} is not a single byte; use \\xNN"
                )
            tokens.append(code)
        pos += 1
    return tokens


def _expand(tokens: list[int]) -> set[tuple[int, int]]:
    """All fixed 4-slot (mask, value) templates a token list can match.

    Each `*` takes between 0 and `free` slots, where `free` is what the fixed tokens
    leave of the 4 bytes; a multiset choice of stars (one star per free slot) covers
    every way to share the free slots out.
    """
    stars = [i for i, t in enumerate(tokens) if t == _STAR]
    free = 4 - (len(tokens) - len(stars))
    if not stars:
        return {_template_key([None if t == _ANY else t for t in tokens])}
    templates: set[tuple[int, int]] = set()
    for choice in combinations_with_replacement(range(len(stars)), free):
        shape: list[int | None] = []
        star_index = 0
        for token in tokens:
            if token == _STAR:
                shape.extend([None] * choice.count(star_index))
                star_index += 1
            else:
                shape.append(None if token == _ANY else token)
        templates.add(_template_key(shape))
    return templates


def parse_pattern(text: str) -> TagPattern:
    """Compile pattern text; raise ValueError with the reason when it is not usable."""
    if not isinstance(text, str):
        raise TypeError(f"a tag pattern is text, got {type(text).__name__}")
    if text == "":
        raise ValueError("invalid pattern '': a pattern needs at least one character")
    tokens = _tokenize(text)
    star_count = tokens.count(_STAR)
    fixed = len(tokens) - star_count
    if fixed > 4:
        raise ValueError(f"invalid pattern {text!r}: {fixed} fixed characters, a pool tag has 4")
    normalized = text
    if not star_count and fixed < 4:
        # Same convention as PoolMon and pooltag.txt: short tags are space padded. A
        # short '?' pattern is padded too (PoolMon does the same), since unpadded it
        # could never match a 4-byte tag.
        tokens = tokens + [0x20] * (4 - fixed)
        normalized = text + " " * (4 - fixed)
    prefix = 0
    for token in tokens:
        if token < 0:
            break
        prefix += 1
    return TagPattern(
        text=normalized,
        templates=tuple(sorted(_expand(tokens))),
        literal_count=sum(1 for t in tokens if t >= 0),
        literal_prefix=prefix,
        has_star=star_count > 0,
        has_wildcard=any(t < 0 for t in tokens),
    )


class TagMatcher:
    """Several patterns compiled together; a tag matches when any pattern does.

    Templates are grouped by mask, so a check costs at most 16 set probes for one tag,
    or 16 vectorized passes over a numpy array of tags, independent of how many
    patterns were given. An empty pattern list matches nothing.
    """

    def __init__(self, patterns: Iterable[str]):
        self.patterns: tuple[TagPattern, ...] = tuple(parse_pattern(p) for p in patterns)
        by_mask: dict[int, set[int]] = {}
        for pattern in self.patterns:
            for mask, value in pattern.templates:
                by_mask.setdefault(mask, set()).add(value)
        # Most specific masks first: they are the cheapest to reject in the scalar path.
        self._by_mask: tuple[tuple[int, frozenset[int]], ...] = tuple(
            (mask, frozenset(values))
            for mask, values in sorted(by_mask.items(), key=lambda kv: -kv[0].bit_count())
        )
        self._arrays: tuple[tuple[np.uint32, npt.NDArray[np.uint32]], ...] = tuple(
            (np.uint32(mask), np.array(sorted(values), dtype=np.uint32))
            for mask, values in self._by_mask
        )

    def __repr__(self) -> str:
        return f"TagMatcher({[p.text for p in self.patterns]!r})"

    def matches_value(self, value: int) -> bool:
        """Whether a uint32 tag value (protected bit cleared) fits any pattern."""
        return any((value & mask) in values for mask, values in self._by_mask)

    def matches(self, tag: str | bytes) -> bool:
        """Whether a tag (text or 4 raw bytes, protected bit cleared) fits any pattern."""
        raw = tag if isinstance(tag, bytes) else tag_to_bytes(tag)
        if len(raw) != 4:
            raise ValueError(f"a pool tag is 4 bytes, got {len(raw)}")
        return self.matches_value(int.from_bytes(raw, "little"))

    def matches_u32(self, values: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Vectorized `matches` over little-endian uint32 tag values.

        The scanner holds tags as uint32 arrays; this keeps the per-tag work inside numpy
        (at most 16 masked membership tests) instead of a Python loop per allocation.
        """
        array = np.asarray(values)
        if array.dtype != np.uint32:
            if not np.issubdtype(array.dtype, np.integer):
                raise TypeError(f"tag values must be integers, got {array.dtype}")
            array = array.astype(np.uint32)
        result = np.zeros(array.shape, dtype=bool)
        for mask, wanted in self._arrays:
            if mask == 0:
                result[...] = True
                break
            masked = array if mask == _FULL_MASK else array & mask
            if wanted.size == 1:
                result |= masked == wanted[0]
            else:
                result |= np.isin(masked, wanted)
        return result
