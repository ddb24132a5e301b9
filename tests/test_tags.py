"""Tests of the tag database: patterns, pooltag.txt/localtag.txt parsing, built-in table.

The tests against Microsoft's real pooltag.txt use the copy in the team's shared data
folder (`<repo>/../shared/data`, or `$POOLTAGSCAN_SHARED_DATA`) and skip when it is
absent, as in a user's fresh clone.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pooltagscan.errors import InputError
from pooltagscan.tags.database import (
    BUILTIN_SOURCE,
    ENV_VAR,
    TagDatabase,
    TagInfo,
    parse_tag_lines,
)
from pooltagscan.tags.patterns import (
    TagMatcher,
    parse_pattern,
    tag_from_bytes,
    tag_from_u32,
    tag_to_bytes,
    tag_to_u32,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

# The copy described in ../shared/data/README.md (System Informer's 2023 pooltag.txt).
# The exact expectations below were derived from this file; another copy would differ.
POOLTAG_SHA256 = "61e53fee93c1f6332303c2f339fadba0a753ce4adb7b9834cb9573197dd3dd1b"

# How the entry count was derived, independently of our parser:
#
#   awk '!($0 ~ /^[ \t]*$/) && tolower($1) != "rem" && $0 !~ /^\/\// && $0 ~ / - /' \
#       pooltag.txt | wc -l                                   -> 4571
#
# and it is consistent with a full accounting of the file's 4,968 lines (4,967 ending in
# LF plus a final line holding only the DOS end-of-file byte ^Z):
#   372 blank + 22 comments (13 "rem", 6 "REM", 3 "//")
#   + 3 lines that are not entries (line 874 "       <unknown>", a stray continuation;
#     line 2634 "QUIC Allocation tags are Qc00 through QcFF", prose; the final ^Z)
#   + 4,571 entries = 4,968.
# Note `grep -vi '^rem'` would wrongly drop the real tag "ReMo" (line 2873), which is
# why the awk filter compares the whole first word.
POOLTAG_ENTRIES = 4571
# 101 of them use ? or * (awk -F' - ' '{print $1}' on the entry lines | grep -c '[?*]').
POOLTAG_WILDCARD_ENTRIES = 101


def _shared_data_dir() -> Path:
    configured = os.environ.get("POOLTAGSCAN_SHARED_DATA")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def pooltag_path() -> Path:
    path = _shared_data_dir() / "pooltag.txt"
    if not path.is_file():
        pytest.skip(f"reference pooltag.txt not available at {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != POOLTAG_SHA256:
        pytest.skip(f"{path} is a different copy (sha256 {digest}); exact counts do not apply")
    return path


@pytest.fixture(scope="module")
def pooltag(pooltag_path: Path) -> TagDatabase:
    return TagDatabase.from_file(pooltag_path)


def _summary(entries: list[TagInfo]) -> list[tuple[str, str, str, str]]:
    return [(e.tag, e.owner, e.description, e.source) for e in entries]


# ---------------------------------------------------------------------------------------
# Tag text and bytes


def test_tag_from_bytes_plain_and_protected() -> None:
    assert tag_from_bytes(b"Proc") == ("Proc", False)
    # Pre-Windows 8 object tags carry the protected bit on the last byte.
    assert tag_from_bytes(b"Pro\xe3") == ("Proc", True)
    assert tag_from_bytes(b"Thr\xe5") == ("Thre", True)
    assert tag_from_bytes(b"Dri\xf6") == ("Driv", True)
    assert tag_from_bytes(b"Key\xa0") == ("Key ", True)


def test_tag_from_bytes_only_trusts_the_protected_bit_on_printable_tags() -> None:
    # First three bytes not printable: the high byte is just a byte.
    assert tag_from_bytes(b"Ab\x01\xe3") == ("Ab\\x01\\xe3", False)
    # The fourth byte without the bit (0x00 / 0x7f) is not printable either.
    assert tag_from_bytes(b"abc\x80") == ("abc\\x80", False)
    assert tag_from_bytes(b"abc\xff") == ("abc\\xff", False)
    assert tag_from_bytes(b"\x00\x00\x00\x00") == ("\\x00\\x00\\x00\\x00", False)
    assert tag_from_bytes(b"Ab\x01c") == ("Ab\\x01c", False)


def test_tag_from_bytes_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        tag_from_bytes(b"abc")
    with pytest.raises(ValueError):
        tag_from_bytes(b"abcde")


def test_tag_to_bytes() -> None:
    assert tag_to_bytes("Proc") == b"Proc"
    assert tag_to_bytes("Ab\\x01c") == b"Ab\x01c"
    assert tag_to_bytes("\\x00\\x00\\x00\\x00") == b"\x00" * 4
    # Four characters are always literal, so a tag made of "\", "x", "4", "1" survives.
    assert tag_to_bytes("\\x41") == b"\\x41"
    # A raw control character in 4-character text is taken as that byte.
    assert tag_to_bytes("Ab\x01c") == b"Ab\x01c"
    for bad in ["Pro", "Proce", "Ab\\x01", "Ab\\x01cd", "Pr\u20acc"]:
        with pytest.raises(ValueError):
            tag_to_bytes(bad)


def test_tag_u32_is_little_endian() -> None:
    assert tag_to_u32("Proc") == 0x636F7250  # the C literal 'corP'
    assert tag_from_u32(0x636F7250) == "Proc"
    assert tag_from_u32(0x01634241) == "ABc\\x01"


def test_tag_text_round_trips_for_random_bytes() -> None:
    rng = np.random.default_rng(20240601)
    raws = [bytes(r) for r in rng.integers(0, 256, size=(20000, 4), dtype=np.uint8)]
    # Make sure literal backslash/x sequences are well represented.
    raws += [b"\\x41", b"\\x4\x01", b"\x01\\x4", b"\\\\x0", b"\\x\x01\x02", b"\\x01"]
    for raw in raws:
        text, protected = tag_from_bytes(raw)
        expected = raw[:3] + bytes([raw[3] & 0x7F]) if protected else raw
        assert tag_to_bytes(text) == expected, (raw, text)


# ---------------------------------------------------------------------------------------
# Patterns


def test_question_mark_matches_exactly_one_character() -> None:
    matcher = TagMatcher(["Pro?"])
    assert matcher.matches("Proc")
    assert matcher.matches("Pro ")
    assert matcher.matches("Pro\\x01")
    assert not matcher.matches("Prxc")
    middle = TagMatcher(["Gh?:"])
    assert middle.matches("Gh5:")
    assert not middle.matches("Gh5;")


def test_star_matches_any_run_including_empty() -> None:
    assert TagMatcher(["P*"]).matches("Proc")
    assert TagMatcher(["P*"]).matches("P   ")
    assert not TagMatcher(["P*"]).matches("xroc")
    assert TagMatcher(["*c"]).matches("Proc")
    assert not TagMatcher(["*c"]).matches("Pro ")
    assert TagMatcher(["P*c"]).matches("Pxyc")
    # Four fixed characters plus a star: the star can only be empty.
    assert TagMatcher(["Pr*oc"]).matches("Proc")
    assert not TagMatcher(["Pr*oc"]).matches("Prxc")
    assert TagMatcher(["A*b*"]).matches("Abzz")
    assert TagMatcher(["A*b*"]).matches("Azbz")
    assert TagMatcher(["A*b*"]).matches("Azzb")
    assert not TagMatcher(["A*b*"]).matches("Azzz")
    everything = TagMatcher(["*"])
    assert everything.matches("\\x00\\x00\\x00\\x00")
    assert everything.matches("Proc")


def test_short_patterns_are_space_padded() -> None:
    assert TagMatcher(["Irp"]).matches("Irp ")
    assert not TagMatcher(["Irp"]).matches("Irpl")
    assert TagMatcher(["Io"]).matches("Io  ")
    assert not TagMatcher(["Io"]).matches("IoNm")
    assert parse_pattern("Irp").text == "Irp "
    # A short '?' pattern is padded too (as PoolMon does); unpadded it could never match.
    assert TagMatcher(["Xy?"]).matches("XyZ ")
    assert not TagMatcher(["Xy?"]).matches("XyZW")
    # A star pattern is not padded: "Bu*" keeps covering every tag that starts with Bu.
    assert parse_pattern("Bu*").text == "Bu*"
    assert TagMatcher(["Bu*"]).matches("BuXY")


def test_escapes_name_bytes() -> None:
    matcher = TagMatcher(["Ab\\x01c"])
    assert matcher.matches("Ab\\x01c")
    assert matcher.matches(b"Ab\x01c")
    assert not matcher.matches("Ab\\x02c")
    assert TagMatcher(["\\x41bcd"]).matches("Abcd")
    assert TagMatcher(["\\x3f???"]).matches("?abc")  # an escaped '?' is literal
    assert not TagMatcher(["\\x3f???"]).matches("xabc")
    assert TagMatcher(["\\x5cx41"]).matches("\\x41")  # literal backslash
    assert TagMatcher(["Pro\\xE3"]).matches(b"Pro\xe3")  # upper-case hex digits work


def test_patterns_are_case_sensitive() -> None:
    assert TagMatcher(["Proc"]).matches("Proc")
    assert not TagMatcher(["Proc"]).matches("proc")
    assert not TagMatcher(["Proc"]).matches("PROC")
    assert not TagMatcher(["pro?"]).matches("Proc")


@pytest.mark.parametrize(
    "pattern",
    ["", "Proce", "Proc?", "Pr?c?", "Pro\\q", "Pro\\x4", "Pro\\", "Ab\\x0", "Pr\u20acc"],
)
def test_invalid_patterns_raise_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        TagMatcher([pattern])


def test_empty_matcher_matches_nothing() -> None:
    matcher = TagMatcher([])
    assert not matcher.matches("Proc")
    assert not matcher.matches_u32(np.array([tag_to_u32("Proc")], dtype=np.uint32)).any()


def test_matches_u32_agrees_with_matches_on_random_tags() -> None:
    rng = np.random.default_rng(7)
    patterns = [
        "Proc", "Irp", "Io", "Afd?", "Bu*", "*x", "A*b*", "?h?:", "Gh??", "\\x01*",
        "Ab\\x01c", "Ntf?", "T?r?", "CM??", "z*z", "??\\x00\\x00",
    ]  # fmt: skip
    matcher = TagMatcher(patterns)
    # Bytes drawn from the characters the patterns use, so that many samples match,
    # plus fully random values.
    alphabet = np.frombuffer(b"ProcIrpAfdBuxbh:GNtTCMz \x00\x01", dtype=np.uint8)
    biased = rng.choice(alphabet, size=(60000, 4)).view("<u4").ravel()
    uniform = rng.integers(0, 2**32, size=60000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([biased, uniform])
    vectorized = matcher.matches_u32(values)
    scalar = np.array([matcher.matches(tag_from_u32(int(v))) for v in values])
    assert vectorized.dtype == bool
    assert np.array_equal(vectorized, scalar)
    assert 1000 < int(vectorized.sum()) < len(values)  # the sample exercises both answers
    # Shape is preserved and other integer dtypes are accepted.
    grid = values[:1000].reshape(10, 100)
    assert matcher.matches_u32(grid).shape == (10, 100)
    assert np.array_equal(
        matcher.matches_u32(grid.astype(np.int64)), vectorized[:1000].reshape(10, 100)
    )


# ---------------------------------------------------------------------------------------
# Microsoft's pooltag.txt


def test_pooltag_entry_count(pooltag: TagDatabase) -> None:
    assert len(pooltag) == POOLTAG_ENTRIES
    assert len(pooltag.entries) == POOLTAG_ENTRIES
    assert sum(e.is_wildcard for e in pooltag.entries) == POOLTAG_WILDCARD_ENTRIES
    assert all(e.source.startswith("pooltag.txt:") for e in pooltag.entries)


def test_pooltag_skipped_lines_are_the_two_non_entries(pooltag: TagDatabase) -> None:
    assert [(s.source, s.text) for s in pooltag.skipped] == [
        ("pooltag.txt:874", "       <unknown>"),
        ("pooltag.txt:2634", "QUIC Allocation tags are Qc00 through QcFF"),
    ]


def test_pooltag_exact_lookups(pooltag: TagDatabase) -> None:
    assert _summary(pooltag.lookup("Proc")) == [
        ("Proc", "nt!ps", "Process objects", "pooltag.txt:2440")
    ]
    assert _summary(pooltag.lookup("Thre")) == [
        ("Thre", "nt!ps", "Thread objects", "pooltag.txt:3537")
    ]
    # Indentation before a description is not part of it.
    assert _summary(pooltag.lookup("AfdA")) == [
        ("AfdA", "afd.sys", "Afd EA buffer", "pooltag.txt:58"),
        ("Afd?", "afd.sys", "AFD objects", "pooltag.txt:57"),
    ]
    # An owner with spaces, and an owner that is a function name.
    assert pooltag.describe("smCR").owner == "nt!store or rdyboost.sys"
    assert pooltag.describe("Uagm").owner == "win32kbase!CActivationObjectManager::operator new"
    # The protected bit is cleared when looking up raw header bytes.
    assert pooltag.describe(b"Pro\xe3").source == "pooltag.txt:2440"
    assert pooltag.describe(0x636F7250).source == "pooltag.txt:2440"


def test_pooltag_short_padded_tags(pooltag: TagDatabase) -> None:
    assert _summary(pooltag.lookup("Irp ")) == [
        ("Irp ", "<unknown>", "Io, IRP packets", "pooltag.txt:1162")
    ]
    assert pooltag.lookup("Irp") == pooltag.lookup("Irp ")
    assert _summary(pooltag.lookup("Io  ")) == [
        ("Io  ", "nt!io", "general IO allocations", "pooltag.txt:1120")
    ]
    # Written "Fsb -  netio.sys" with a single space before the dash.
    assert _summary(pooltag.lookup("Fsb ")) == [
        ("Fsb ", "netio.sys", "Fixed-Size Block pool", "pooltag.txt:800")
    ]
    # Written with an extra space after the tag ("Tun4  - ").
    assert pooltag.describe("Tun4").description == "Tunnel cache allocation for long file name"
    # A tag with a space inside.
    assert _summary(pooltag.lookup("Dh 0")) == [
        ("Dh 0", "<unknown>", "DirectDraw/3D default object", "pooltag.txt:500")
    ]


def test_pooltag_tag_with_several_owners(pooltag: TagDatabase) -> None:
    # "PX1  - <unknown>" and "PX1 - ndproxy.sys": both padded to "PX1 ", both kept.
    assert _summary(pooltag.lookup("PX1")) == [
        ("PX1 ", "<unknown>", "ndis ProviderEventLookaside", "pooltag.txt:2562"),
        ("PX1 ", "ndproxy.sys", "PX_EVENT_TAG", "pooltag.txt:2593"),
    ]
    assert [e.owner for e in pooltag.lookup("Ttfd")] == ["<unknown>", "win32k.sys"]
    assert [e.description for e in pooltag.lookup("Rpcr")] == [
        "not currently used",
        "MSRpc resources",
    ]
    duplicated = [t for t, n in Counter(e.tag for e in pooltag.entries).items() if n > 1]
    assert len(duplicated) == 57  # cut -c1-4 of the entry lines | sort | uniq -d | wc -l


def test_pooltag_two_field_lines(pooltag: TagDatabase) -> None:
    # Eight AppTag lines have no binary field: "ATmp - AppTag mount point".
    two_field = [e for e in pooltag.entries if e.owner == ""]
    assert [e.tag for e in two_field] == [
        "ATmp", "ATon", "ATub", "ATgb", "ATac", "ATdi", "ATdt", "ATFb"
    ]  # fmt: skip
    assert two_field[0] == TagInfo("ATmp", "", "AppTag mount point", "pooltag.txt:138")


def test_pooltag_rem_is_a_comment_but_remo_is_a_tag(pooltag: TagDatabase) -> None:
    assert _summary(pooltag.lookup("ReMo")) == [("ReMo", "refs.sys", "Mount.c", "pooltag.txt:2873")]


def test_pooltag_wildcard_entries_match_concrete_tags(pooltag: TagDatabase) -> None:
    assert _summary(pooltag.lookup("Afdz")) == [
        ("Afd?", "afd.sys", "AFD objects", "pooltag.txt:57")
    ]
    assert _summary(pooltag.lookup("CM31")) == [
        ("CM??", "nt!cm", "Internal Configuration manager allocations", "pooltag.txt:367")
    ]
    # "Bu*  - ": the column padding after a star is not part of the pattern.
    assert [e.tag for e in pooltag.lookup("BuXY")] == ["Bu*"]
    assert [e.tag for e in pooltag.lookup("ST12")] == ["ST*"]
    assert [e.tag for e in pooltag.lookup("Npfs")] == ["Npf*"]
    # A '?' in the middle of the tag.
    assert pooltag.describe("Gh5:").source == "pooltag.txt:4366"
    # Same pattern from two components: both, in file order.
    assert [e.description for e in pooltag.lookup("Lr12")] == [
        "LM redirector allocations",
        "Buffers used for FsControlFile APIs",
    ]
    assert pooltag.describe("Zq9!") is None
    assert not pooltag.is_known("Zq9!")


def test_pooltag_lookup_order_exact_then_most_specific_wildcard(pooltag: TagDatabase) -> None:
    assert [(e.tag, e.owner) for e in pooltag.lookup("ScCx")] == [
        ("ScC?", "classpnp.sys"),
        ("ScC?", "cdrom.sys"),
        ("Sc??", "<unknown>"),
    ]
    # An exact entry comes before the wildcard that also covers it.
    assert [e.tag for e in pooltag.lookup("AfdE")] == ["AfdE", "Afd?"]
    assert [e.tag for e in pooltag.lookup("Ntfs")] == ["Ntfs", "Nt??"]
    assert pooltag.describe("Ntfs").description == "SCB_DATA"


def test_pooltag_lookup_agrees_with_a_matcher_of_all_its_tags(pooltag: TagDatabase) -> None:
    matcher = TagMatcher([e.tag for e in pooltag.entries])
    rng = np.random.default_rng(3)
    values = rng.integers(0x20, 0x7F, size=(20000, 4), dtype=np.uint8).view("<u4").ravel()
    known = np.array([pooltag.is_known(int(v)) for v in values])
    assert np.array_equal(matcher.matches_u32(values), known)
    assert known.any()


def test_pooltag_merged_with_builtin(pooltag_path: Path) -> None:
    database = TagDatabase.load([pooltag_path], env={})
    assert len(database) == POOLTAG_ENTRIES + len(TagDatabase.builtin())
    found = database.lookup("Proc")
    assert [e.source for e in found] == ["pooltag.txt:2440", BUILTIN_SOURCE]
    # A tag only our table knows is still described.
    assert database.describe("Job ").source == BUILTIN_SOURCE


# ---------------------------------------------------------------------------------------
# Built-in table

# Core tags the project relies on. Some tags from early planning lists do not exist in
# Windows and are deliberately absent: the mutant object tag is "Muta" (not "Mute"), the
# timer object tag is "Time" (not "Timr"), the interrupt chain is "KeIC" (not "KeIc").
REQUIRED_BUILTIN = [
    "Proc", "Thre", "File", "Muta", "Even", "Sema", "Toke", "Driv", "Devi", "Symb",
    "Key ", "Type", "Dire", "Sect", "Port", "Job ", "Time", "ObNm", "ObDi", "Obtb",
    "MmSt", "MmCa", "MmCi", "MmSe", "Mmdi", "Vad ", "VadS", "VadF", "CcBc", "CcSc",
    "Irp ", "Io  ", "IoNm", "Se  ", "SeAt", "NtFs", "Ntf0", "NtfF", "FMfn", "FMfc",
    "FMsl", "ALPC", "AlIn", "Wait", "TcpE", "TcpL", "UdpA", "CM31", "CM16", "CM25",
    "NDnd", "Filt", "Fstb", "KeIC", "Pool", "None", "LSwi", "Icp ", "WfpF", "Cont",
]  # fmt: skip


def test_builtin_loads_and_is_well_formed() -> None:
    builtin = TagDatabase.builtin()
    assert 150 <= len(builtin) <= 250
    assert builtin.skipped == ()
    for entry in builtin.entries:
        assert len(entry.tag) == 4, entry
        assert entry.source == BUILTIN_SOURCE
        assert entry.owner and entry.description, entry
        parse_pattern(entry.tag)


def test_builtin_has_no_duplicates() -> None:
    tags = [e.tag for e in TagDatabase.builtin().entries]
    assert [t for t, n in Counter(tags).items() if n > 1] == []


def test_builtin_has_the_required_tags() -> None:
    builtin = TagDatabase.builtin()
    exact = {e.tag for e in builtin.entries if not e.is_wildcard}
    assert [t for t in REQUIRED_BUILTIN if t not in exact] == []
    assert builtin.describe("Proc").owner == "nt!ps"
    assert builtin.describe("TcpE").owner == "tcpip.sys"
    assert builtin.describe("NtFs").owner == "ntfs.sys"
    # Numbered registry tags we do not list individually fall back to the wildcard.
    assert builtin.describe("CM45").tag == "CM??"


def test_builtin_file_parses_with_the_same_parser() -> None:
    text = (REPO_ROOT / "pooltagscan" / "tags" / "core_tags.txt").read_text("utf-8")
    entries, skipped = parse_tag_lines(text.split("\n"), "core_tags.txt")
    assert skipped == []
    assert [(e.tag, e.owner, e.description) for e in entries] == [
        (e.tag, e.owner, e.description) for e in TagDatabase.builtin().entries
    ]


def test_builtin_descriptions_are_our_own(pooltag: TagDatabase) -> None:
    theirs = {e.description.strip().lower() for e in pooltag.entries}
    copied = [e.tag for e in TagDatabase.builtin().entries if e.description.lower() in theirs]
    assert copied == []


# ---------------------------------------------------------------------------------------
# Files, formats and the environment


def test_missing_file_raises_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(InputError) as info:
        TagDatabase.from_file(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)


def test_directory_raises_input_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="directory") as info:
        TagDatabase.from_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_binary_file_raises_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "dump.bin"
    path.write_bytes(b"MZ\x90\x00\x03\x00\x00\x00Proc - x - y\n" * 10)
    with pytest.raises(InputError, match="binary") as info:
        TagDatabase.from_file(path)
    assert str(path) in str(info.value)
    noisy = tmp_path / "noise.bin"
    noisy.write_bytes(bytes(range(1, 32)) * 40)
    with pytest.raises(InputError, match="binary"):
        TagDatabase.from_file(noisy)


def test_file_without_entries_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "comments.txt"
    path.write_text("rem nothing here\n\n// nor here\nsome prose line\n")
    with pytest.raises(InputError, match="no pool tag entries") as info:
        TagDatabase.from_file(path)
    assert str(path) in str(info.value)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(InputError):
        TagDatabase.from_file(empty)


def test_poolmon_localtag_file(tmp_path: Path) -> None:
    # PoolMon /c writes "<tag>   -     <driver without .sys>" with CRLF line ends.
    path = tmp_path / "localtag.txt"
    path.write_bytes(
        b"AcpA   -     ACPI\r\n"
        b"Irp    -     ntoskrnl\r\n"
        b"Ntf0   -     Ntfs\r\n"
        b"WDiv   -     WinDivert64\r\n"
        b"\r\n"
    )
    database = TagDatabase.from_file(path)
    assert _summary(list(database.entries)) == [
        ("AcpA", "ACPI", "", "localtag.txt:1"),
        ("Irp ", "ntoskrnl", "", "localtag.txt:2"),
        ("Ntf0", "Ntfs", "", "localtag.txt:3"),
        ("WDiv", "WinDivert64", "", "localtag.txt:4"),
    ]


def test_utf16_and_ansi_files(tmp_path: Path) -> None:
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("Abcd - my.sys - caf\u00e9 buffers\r\n".encode("utf-16"))
    assert _summary(list(TagDatabase.from_file(utf16).entries)) == [
        ("Abcd", "my.sys", "caf\u00e9 buffers", "utf16.txt:1")
    ]
    ansi = tmp_path / "ansi.txt"
    ansi.write_bytes("Abcd - my.sys - caf\u00e9\n".encode("cp1252"))
    assert TagDatabase.from_file(ansi).describe("Abcd").description == "caf\u00e9"


def test_from_lines_oddities() -> None:
    lines = [
        "rem a comment",
        "REM another",
        "// and another",
        "   ",
        "rem  - rem.sys - a tag that is spelled rem",
        "Ab\\x01c - odd.sys - tag with a control byte",
        "Xy?  - wild.sys - short wildcard entries are padded like any short tag",
        "TooLong - x.sys - not a tag",
        "Bad\\ - x.sys - bad escape",
        "Tail - tail.sys -",
        "Last - last.sys - the end\x1a",
        "Gone - after.sys - text after the DOS end-of-file byte is ignored",
    ]
    database = TagDatabase.from_lines(lines, "mine")
    assert _summary(list(database.entries)) == [
        ("rem ", "rem.sys", "a tag that is spelled rem", "mine:5"),
        ("Ab\\x01c", "odd.sys", "tag with a control byte", "mine:6"),
        ("Xy? ", "wild.sys", "short wildcard entries are padded like any short tag", "mine:7"),
        ("Tail", "tail.sys", "", "mine:10"),
        ("Last", "last.sys", "the end", "mine:11"),
    ]
    assert [s.source for s in database.skipped] == ["mine:8", "mine:9"]
    assert database.describe(b"Ab\x01c").owner == "odd.sys"
    assert database.describe("XyZ ").owner == "wild.sys"


def test_env_var_files_take_precedence_over_builtin(tmp_path: Path) -> None:
    first = tmp_path / "first.txt"
    first.write_text("Proc - first.sys - from the first file\nZzz1 - first.sys - only here\n")
    second = tmp_path / "second.txt"
    second.write_text("Proc - second.sys - from the second file\n")
    env = {ENV_VAR: os.pathsep.join([str(first), "", str(second)])}
    database = TagDatabase.load(None, env=env)
    assert [e.owner for e in database.lookup("Proc")] == ["first.sys", "second.sys", "nt!ps"]
    assert database.describe("Proc").source == "first.txt:1"
    assert database.describe("Zzz1").owner == "first.sys"
    # Files named explicitly come before those from the environment.
    explicit = TagDatabase.load([second], env=env)
    assert [e.owner for e in explicit.lookup("Proc")] == ["second.sys", "first.sys", "nt!ps"]
    # env=None ignores the variable; no files at all gives the built-in table alone.
    assert len(TagDatabase.load(None, env=None)) == len(TagDatabase.builtin())
    assert len(TagDatabase.load(None, env={})) == len(TagDatabase.builtin())


def test_env_var_reads_os_environ_by_default(tmp_path: Path, monkeypatch) -> None:
    user = tmp_path / "user.txt"
    user.write_text("Proc - user.sys - mine\n")
    monkeypatch.setenv(ENV_VAR, str(user))
    assert TagDatabase.load().describe("Proc").owner == "user.sys"
    monkeypatch.delenv(ENV_VAR)
    assert TagDatabase.load().describe("Proc").source == BUILTIN_SOURCE


def test_env_var_missing_file_is_an_error_naming_it_and_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(InputError) as info:
        TagDatabase.load(None, env={ENV_VAR: str(missing)})
    assert str(missing) in str(info.value)
    assert ENV_VAR in str(info.value)


def test_lookup_accepts_text_bytes_and_values() -> None:
    builtin = TagDatabase.builtin()
    assert builtin.lookup("Irp") == builtin.lookup("Irp ") == builtin.lookup(b"Irp ")
    assert builtin.lookup(tag_to_u32("Irp ")) == builtin.lookup("Irp ")
    assert builtin.lookup(bytearray(b"Thr\xe5")) == builtin.lookup("Thre")
    with pytest.raises(ValueError):
        builtin.lookup("Toolong")
    with pytest.raises(ValueError):
        builtin.lookup(2**32)
