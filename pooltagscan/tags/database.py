"""The pool tag database: which component owns a tag, and what its allocations hold.

Sources, in the order a lookup prefers them:

1. files the user names (command-line options first, then the `POOLTAGSCAN_POOLTAG`
   environment variable, which may list several paths separated by `os.pathsep`);
2. our own built-in table, `core_tags.txt`, covering the core Windows tags in plain words.

All of them use the text format of WinDbg's `triage\\pooltag.txt`, one entry per line::

    Proc - nt!ps        - Process objects
    Irp  - <unknown>    - Io, IRP packets
    Afd? - afd.sys      - AFD objects

`rem` and `//` lines are comments. The tag is everything before the first whitespace-
dash-whitespace separator, so tags with inner spaces (`Dh 0`) work, short tags are space
padded, and `?`/`*` make an entry cover many tags (see `patterns`). PoolMon's
`localtag.txt` (`Tag   -     driver`) is the same format with two fields; a two-field
line is read as tag + owner when the second field is a single word (a driver name) and
as tag + description otherwise (pooltag.txt has a few such lines).

Real files are messy, so a line that is not an entry is never fatal: it is kept in
`TagDatabase.skipped` with the reason, for whoever wants to audit a file. Only a file
that cannot be read, is binary, or yields no entry at all raises `InputError`.

Lookups are answered from a dict of exact tags plus, for wildcard entries, one dict per
(mask) shape - at most 16 of them - so one lookup costs a handful of dict probes and a
scan report can call it for every allocation.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

from pooltagscan.errors import InputError
from pooltagscan.files import read_limited, regular_file
from pooltagscan.tags.patterns import (
    TagPattern,
    parse_pattern,
    tag_from_bytes,
    tag_to_bytes,
)

__all__ = [
    "BUILTIN_SOURCE",
    "ENV_VAR",
    "SkippedLine",
    "TagDatabase",
    "TagInfo",
    "parse_tag_lines",
]

#: Environment variable listing extra tag files, separated by os.pathsep.
ENV_VAR = "POOLTAGSCAN_POOLTAG"
#: `TagInfo.source` of entries from our built-in table.
BUILTIN_SOURCE = "builtin"
_BUILTIN_RESOURCE = "core_tags.txt"

# A real pooltag.txt is ~300 KB, a localtag.txt of a whole DriverStore well under 1 MB;
# anything past this is not a tag list (a dump passed by mistake, say), and we refuse
# before reading it. At this size a file of valid entries loads in about 3 s and 160 MB.
_MAX_FILE_BYTES = 8 * 1024 * 1024
# Lines that are not entries are kept for auditing up to this many per file (counted
# beyond), so a file of junk cannot hold its whole text twice in memory.
_MAX_SKIPPED_KEPT = 1000
# Share of control bytes above which a file is treated as binary rather than text.
_MAX_CONTROL_SHARE = 0.01
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\v\x1a")
# DOS end-of-file marker; Microsoft's pooltag.txt ends with one.
_DOS_EOF = "\x1a"
_LOOKUP_CACHE_LIMIT = 1 << 16

# Field separator: a dash with whitespace before it and whitespace (or the line end)
# after it. Requiring the space before keeps tags such as "Dh 0" and owners such as
# "win32k!Foo" intact.
_TAG_SEPARATOR = re.compile(r"\s+-(?:\s+|$)")
_FIELD_SEPARATOR = re.compile(r"(?:^|\s+)-(?:\s+|$)")
_REM = re.compile(r"rem(?:\s|$)", re.IGNORECASE)
# ...unless it is an entry for a tag that happens to be spelled "rem".
_REM_ENTRY = re.compile(r"rem\s+-(?:\s|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TagInfo:
    """One database entry.

    `tag` is the normalized pattern text (4 characters for an exact tag, `?`/`*` for a
    wildcard entry); `owner` is the binary or component as the file wrote it (for
    example `nt!ps`, `ntfs.sys`, `<unknown>`, or empty when the line had none);
    `source` says where the entry came from (`pooltag.txt:123` or `builtin`).
    """

    tag: str
    owner: str
    description: str
    source: str

    @property
    def is_wildcard(self) -> bool:
        """True when the entry covers several tags through `?` or `*`."""
        return "?" in self.tag or "*" in self.tag


class SkippedLine(NamedTuple):
    """A non-blank, non-comment line that is not an entry, kept for auditing a file."""

    source: str
    text: str
    reason: str


def _split_fields(rest: str) -> tuple[str, str]:
    """Split what follows the tag into (owner, description)."""
    match = _FIELD_SEPARATOR.search(rest)
    if match:
        return rest[: match.start()].strip(), rest[match.end() :].strip()
    rest = rest.strip()
    if rest and not any(ch.isspace() for ch in rest):
        # PoolMon localtag.txt: "Tag   -     driver".
        return rest, ""
    # pooltag.txt has a few "Tag - description" lines without a binary.
    return "", rest


def parse_tag_lines(
    lines: Iterable[str], source_name: str, *, line_numbers: bool = True
) -> tuple[list[TagInfo], list[SkippedLine]]:
    """Parse pooltag.txt/localtag.txt text into entries plus the lines that were not.

    With `line_numbers` each entry's source is `source_name:N`; without, it is just
    `source_name` (used for the built-in table, whose line numbers mean nothing to users).
    """
    entries: list[TagInfo] = []
    skipped: list[SkippedLine] = []
    for number, raw_line in enumerate(lines, start=1):
        line = raw_line.rstrip("\r\n")
        at_eof = _DOS_EOF in line
        if at_eof:
            line = line[: line.index(_DOS_EOF)]
        where = f"{source_name}:{number}"
        stripped = line.strip()
        if stripped and not stripped.startswith("//"):
            is_rem = _REM.match(stripped) and not _REM_ENTRY.match(stripped)
            if not is_rem:
                entry_or_reason = _parse_entry(stripped, where if line_numbers else source_name)
                if isinstance(entry_or_reason, TagInfo):
                    entries.append(entry_or_reason)
                elif len(skipped) < _MAX_SKIPPED_KEPT:
                    skipped.append(SkippedLine(where, line[:200], entry_or_reason))
        if at_eof:
            break
    return entries, skipped


def _parse_entry(line: str, source: str) -> TagInfo | str:
    """One stripped line as an entry, or the reason it is not one."""
    match = _TAG_SEPARATOR.search(line)
    if not match:
        return "no ' - ' separator after a tag"
    try:
        pattern = parse_pattern(line[: match.start()])
    except ValueError as exc:
        return str(exc)
    owner, description = _split_fields(line[match.end() :])
    return TagInfo(pattern.text, owner, description, source)


def _read_tag_file(path: str | os.PathLike[str]) -> str:
    """Read a tag file as text, turning every way it can be unusable into InputError."""
    path, size = regular_file(path, "a pool tag text file")
    if size > _MAX_FILE_BYTES:
        raise InputError(
            path,
            f"{size} bytes is far too large for a pool tag list (limit {_MAX_FILE_BYTES >> 20} MiB); "
            "is it the right file?",
        )
    data = read_limited(path, _MAX_FILE_BYTES, "a pool tag text file")
    if len(data) > _MAX_FILE_BYTES:  # it grew since the size was checked
        raise InputError(path, "is growing while it is read; is it the right file?")

    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        # Notepad / PowerShell "Unicode" output.
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise InputError(path, "starts like UTF-16 text but does not decode as it") from None
    sample = data[: 64 * 1024]
    if b"\x00" in sample:
        raise InputError(path, "is a binary file, not a pool tag text list")
    controls = sum(1 for b in sample if b < 0x20 and b not in _TEXT_CONTROLS)
    if sample and controls / len(sample) > _MAX_CONTROL_SHARE:
        raise InputError(path, "is a binary file, not a pool tag text list")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Older tag lists are in the Windows ANSI code page.
        return data.decode("cp1252", errors="replace")


def _split_lines(text: str) -> list[str]:
    """Split on LF only, so line numbers agree with editors and `grep -n`.

    `str.splitlines` would also break on form feeds and on \\x1c-\\x1e, which would
    shift every reported line number after such a character.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _lookup_value(tag: str | bytes | int) -> int:
    """The uint32 value (protected bit cleared) a lookup key stands for."""
    if isinstance(tag, int):
        if not 0 <= tag <= 0xFFFFFFFF:
            raise ValueError(f"tag value {tag:#x} does not fit in 32 bits")
        return tag
    if isinstance(tag, (bytes, bytearray)):
        text, _protected = tag_from_bytes(bytes(tag))
        return int.from_bytes(tag_to_bytes(text), "little")
    if len(tag) < 4 and "\\" not in tag:
        # Let people type "Irp" or "Io" the way pooltag.txt lists them.
        tag = tag.ljust(4)
    return int.from_bytes(tag_to_bytes(tag), "little")


class TagDatabase:
    """An ordered, immutable collection of `TagInfo` entries with fast lookups.

    Entry order is precedence order: earlier entries win ties, so a merged database
    lists user files before the built-in table.
    """

    def __init__(self, entries: Iterable[TagInfo] = (), skipped: Iterable[SkippedLine] = ()):
        self._entries: tuple[TagInfo, ...] = tuple(entries)
        self.skipped: tuple[SkippedLine, ...] = tuple(skipped)
        self._exact: dict[int, list[int]] = {}
        self._wild: dict[int, dict[int, list[int]]] = {}
        self._wild_rank: dict[int, tuple[int, bool, int, int]] = {}
        for index, entry in enumerate(self._entries):
            pattern: TagPattern = parse_pattern(entry.tag)
            if not pattern.has_wildcard:
                ((_mask, value),) = pattern.templates
                self._exact.setdefault(value, []).append(index)
                continue
            # Most specific first: more fixed bytes, '?' before '*', longer literal
            # prefix; then file order (user files come before the built-in table).
            self._wild_rank[index] = (
                -pattern.literal_count,
                pattern.has_star,
                -pattern.literal_prefix,
                index,
            )
            for mask, value in pattern.templates:
                self._wild.setdefault(mask, {}).setdefault(value, []).append(index)
        self._cache: dict[str | bytes | int, tuple[TagInfo, ...]] = {}

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_lines(cls, lines: Iterable[str], source_name: str) -> TagDatabase:
        """Parse text lines; sources are `source_name:N`. Never raises for odd lines."""
        entries, skipped = parse_tag_lines(lines, source_name)
        return cls(entries, skipped)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TagDatabase:
        """Load a pooltag.txt or localtag.txt file; InputError names the file on failure."""
        text = _read_tag_file(path)
        database = cls.from_lines(_split_lines(text), os.path.basename(os.fspath(path)))
        if not database:
            raise InputError(
                path,
                "no pool tag entries found (expected lines like 'Tag  - driver.sys - description')",
            )
        return database

    @classmethod
    def builtin(cls) -> TagDatabase:
        """Our own table of core Windows tags, shipped as package data."""
        return _builtin_database()

    @classmethod
    def merge(cls, databases: Iterable[TagDatabase]) -> TagDatabase:
        """One database holding the entries of several, earlier ones taking precedence."""
        parts = list(databases)
        return cls(
            (entry for part in parts for entry in part.entries),
            (line for part in parts for line in part.skipped),
        )

    @classmethod
    def load(
        cls,
        paths: Sequence[str | os.PathLike[str]] | None = None,
        env: Mapping[str, str] | None = os.environ,
    ) -> TagDatabase:
        """The database a command should use: user files, then the built-in table.

        Files named in `paths` come first, then those listed in `POOLTAGSCAN_POOLTAG`
        (pass `env=None` to ignore the environment). A file named twice is read once.
        A missing or unreadable file is an error, not a silent fallback, because an
        analyst who points us at a tag list expects it to be used.
        """
        wanted: list[tuple[str | os.PathLike[str], bool]] = [(p, False) for p in paths or ()]
        if env is not None:
            listed = env.get(ENV_VAR, "")
            wanted += [(p, True) for p in listed.split(os.pathsep) if p.strip()]
        seen: set[str] = set()
        parts: list[TagDatabase] = []
        for path, from_env in wanted:
            key = os.path.realpath(os.fspath(path))
            if key in seen:
                continue
            seen.add(key)
            try:
                parts.append(cls.from_file(path))
            except InputError as exc:
                if from_env:
                    raise InputError(path, f"{exc.problem} (listed in {ENV_VAR})") from None
                raise
        parts.append(cls.builtin())
        return cls.merge(parts)

    # -- queries ----------------------------------------------------------------------

    @property
    def entries(self) -> tuple[TagInfo, ...]:
        """Every entry, duplicates included, in precedence order."""
        return self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TagInfo]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"<TagDatabase {len(self._entries)} entries>"

    def lookup(self, tag: str | bytes | int) -> list[TagInfo]:
        """Every entry describing `tag`, best first.

        `tag` is tag text (short text is space padded), 4 raw header bytes (the
        protected bit is cleared), or a uint32 value. Exact entries come first in
        precedence order, then matching wildcard entries, most specific first.
        """
        if isinstance(tag, bytearray):
            tag = bytes(tag)
        # Keyed by what the caller passed, so a repeated tag skips even the text
        # decoding; a scan report asks about the same few hundred tags again and again.
        found = self._cache.get(tag)
        if found is None:
            found = self._resolve(_lookup_value(tag))
            if len(self._cache) >= _LOOKUP_CACHE_LIMIT:
                self._cache.clear()
            self._cache[tag] = found
        return list(found)

    def _resolve(self, value: int) -> tuple[TagInfo, ...]:
        indices = list(self._exact.get(value, ()))
        wild: set[int] = set()
        for mask, table in self._wild.items():
            wild.update(table.get(value & mask, ()))
        indices += sorted(wild, key=self._wild_rank.__getitem__)
        return tuple(self._entries[i] for i in indices)

    def describe(self, tag: str | bytes | int) -> TagInfo | None:
        """The single best entry for `tag`, or None when nothing describes it."""
        found = self.lookup(tag)
        return found[0] if found else None

    def is_known(self, tag: str | bytes | int) -> bool:
        """Whether any entry, exact or wildcard, describes `tag`."""
        return bool(self.lookup(tag))


@functools.lru_cache(maxsize=1)
def _builtin_database() -> TagDatabase:
    text = resources.files("pooltagscan.tags").joinpath(_BUILTIN_RESOURCE).read_text("utf-8")
    entries, skipped = parse_tag_lines(_split_lines(text), BUILTIN_SOURCE, line_numbers=False)
    if skipped:
        # A broken built-in table is our bug; fail loudly in tests rather than ship it.
        first = skipped[0]
        raise RuntimeError(
            f"bad line in built-in {_BUILTIN_RESOURCE}: {first.text!r} ({first.reason})"
        )
    return TagDatabase(entries)
