"""The one line a scan prints per dump on stderr: what it found, how fast, from what.

An analyst running a batch wants one line per dump that answers "did this work?": how
many records (or hits, or tracked tags) and bytes, the time, how much memory the dump
really held, and which header layout was used on what evidence. Everything else (the
format's details, the pool-page share, the tracker agreement) is a detail line that
`scan -v` adds. The line stays short (about 85 columns after the dump's name at most) by
giving sizes in binary units and only the evidence counts that are not zero.
"""

from __future__ import annotations

from pooltagscan.layouts import LAYOUTS
from pooltagscan.scan import EVIDENCE_KEYS, PreparedScan
from pooltagscan.summary import ScanSummary

# Detection.evidence keys -> the short words of the summary line.
EVIDENCE_WORDS = {"x86 chains": "x86", "x64 chains": "x64", "segment-heap pages": "seg"}
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(count: int) -> str:
    """Bytes in binary units with two or three significant digits (`820 KiB`, `2.0 MiB`):
    exact counts are in the JSON outputs; the line is for the eye."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def evidence_words(evidence: dict[str, int]) -> str:
    """The detection's non-zero page counts per family (`x64 205`), or `no evidence`."""
    families = set(EVIDENCE_KEYS.values())  # the votes of the encoding are left out
    shown = [
        f"{EVIDENCE_WORDS.get(key, key)} {int(count)}"
        for key, count in evidence.items()  # in the detection's report order
        if key in families and int(count)
    ]
    return ", ".join(shown) or "no evidence"


# The summary line with its `pooltagscan: DUMP: ` prefix fits this many columns.
LINE_COLUMNS = 99


def fit_path(path: str, line: str, prefix: str = "pooltagscan: ") -> str:
    """`path` as the summary line names it: whole when `prefix + path + ": " + line`
    fits LINE_COLUMNS, else with whole folders elided from the middle
    (`/evidence/…/host7.raw`): the start says where, the end which dump; the file name
    itself is never cut (detail lines and warnings keep the whole path)."""
    room = LINE_COLUMNS - len(prefix) - len(line) - 2
    if len(path) <= room:
        return path
    head, sep, name = path.rpartition("/")
    if not sep:
        return path  # a bare file name is kept whole, whatever the length
    kept = ""
    for part in head.split("/"):
        longer = f"{kept}{part}/"
        if len(longer) + len(name) + 2 > room:  # "…/" before the name
            break
        kept = longer
    return f"{kept}…/{name}"


def scan_line(prepared: PreparedScan, summary: ScanSummary, found: str | None = None) -> str:
    """The summary of one dump, e.g.
    `5,382 records, 820 KiB in 0.42 s over 2.0 MiB; x64 (x64 205)`.

    `found` replaces the records and bytes for views that count something else (YARA
    hits, tracked tags). The extent is what the dump really holds: for kernel minidumps
    the captured bytes, not the zero-padded pages rebuilt around them. The layout is
    followed by the dump's architecture when that differs from the layout's own (an
    ARM64 system's pool headers are read with the 64-bit layout), by `forced` for a
    `--layout`, and by `defaulted` when nothing was proven and the layout is a guess.
    """
    image = prepared.image
    found = found or f"{summary.records:,} records, {human_size(summary.bytes)}"
    extent = human_size(image.captured_bytes)
    if image.captured_bytes != image.scanned_bytes:
        extent += " captured"
    family = prepared.config.family
    layout = family.value
    if image.architecture and image.architecture != LAYOUTS[family].architecture:
        layout += f" on {image.architecture}"
    if prepared.how != "detected":
        layout += f" {prepared.how}"
    return (
        f"{found} in {summary.seconds:.2f} s over {extent}; "
        f"{layout} ({evidence_words(prepared.detection.evidence)})"
    )
