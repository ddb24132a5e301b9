"""What an investigator cites a driver file by: hash, build time, machine, version resource.

Two files can share a name (every DriverStore folder of one driver package holds its own
`foo.sys`), so a finding is only citable with the file's identity next to it: its
SHA-256, the PE header's TimeDateStamp, its machine, and the version resource strings a
vendor puts there (FileVersion, CompanyName, OriginalFilename, ProductName).

The version resource is parsed with pefile, defensively: the resource tree is whatever
the file says it is, so the parse is bounded (pefile caps entries and depth; files
whose resource directory claims more than `MAX_RESOURCE_BYTES` are not parsed at all),
every exception is caught, and a failure costs one note, never the file's analysis.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pefile

from pooltagscan.errors import one_line

__all__ = ["MAX_RESOURCE_BYTES", "VERSION_KEYS", "FileInfo", "file_info"]

#: The version resource strings reported (StringFileInfo keys), in output order.
VERSION_KEYS = ("FileVersion", "CompanyName", "OriginalFilename", "ProductName")
#: A resource directory claiming more than this is not parsed (real drivers' resources,
#: display drivers included, are well under a few MiB).
MAX_RESOURCE_BYTES = 32 * 1024 * 1024
_MAX_VALUE_CHARS = 256  # a version string longer than this is cut (it is meant for a UI)
_DIR_RESOURCE = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]
_RT_VERSION = pefile.RESOURCE_TYPE["RT_VERSION"]
_MACHINE_NAMES = {0x14C: "I386", 0x8664: "AMD64"}


@dataclass(frozen=True)
class FileInfo:
    """The identity of one driver file.

    `timestamp` is the COFF header's TimeDateStamp as ISO 8601 UTC, None when it is 0
    (linkers told not to stamp, like our samples' `--no-insert-timestamp`);
    `timestamp_value` the raw number, because reproducible builds (MSVC `/Brepro`) store
    a hash there, not a time, and the ISO form of a hash is a date that never was.
    `machine` is the COFF machine as `0x8664 (AMD64)`. `version` holds those of
    `VERSION_KEYS` the file's version resource has (first string table wins).
    """

    sha256: str
    timestamp: str | None
    timestamp_value: int
    machine: str
    version: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The JSON form (what `--format json` prints per driver)."""
        return {
            "sha256": self.sha256,
            "timestamp": self.timestamp,
            "timestamp_value": self.timestamp_value,
            "machine": self.machine,
            "version": dict(self.version),
        }


def iso_utc(stamp: int) -> str | None:
    """A TimeDateStamp as `YYYY-MM-DDTHH:MM:SSZ`, None for 0 (no stamp)."""
    if not stamp:
        return None
    return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_info(data: bytes, pe: pefile.PE, notes: list[str]) -> FileInfo:
    """The identity of the image in `data` (parsed as `pe`); problems go to `notes`."""
    header = pe.FILE_HEADER
    machine = header.Machine
    name = _MACHINE_NAMES.get(machine, "unknown")
    return FileInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        timestamp=iso_utc(header.TimeDateStamp),
        timestamp_value=header.TimeDateStamp,
        machine=f"{machine:#06x} ({name})",
        version=version_strings(pe, notes),
    )


def version_strings(pe: pefile.PE, notes: list[str]) -> dict[str, str]:
    """`VERSION_KEYS` from the version resource, or {} (with a note when it is broken)."""
    directories = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if len(directories) <= _DIR_RESOURCE:
        return {}
    rva, size = directories[_DIR_RESOURCE].VirtualAddress, directories[_DIR_RESOURCE].Size
    if not rva or not size:
        return {}
    if size > MAX_RESOURCE_BYTES:
        notes.append(
            f"version resource not read: the resource directory claims {size:,} bytes "
            f"(limit {MAX_RESOURCE_BYTES // 2**20} MiB)"
        )
        return {}
    try:
        pe.parse_data_directories(directories=[_DIR_RESOURCE])
        found = _strings(pe)
        # pefile passes over a version resource it cannot parse without a word; say so.
        # (A readable one has at least a StringFileInfo or VarFileInfo block.)
        broken = _has_version_entry(pe) and not any(getattr(pe, "FileInfo", None) or ())
    except Exception as exc:  # noqa: BLE001 - pefile on hostile input can raise anything
        notes.append(f"version resource unreadable ({type(exc).__name__}: {one_line(str(exc))})")
        return {}
    if broken:
        notes.append("version resource unreadable (malformed VS_VERSIONINFO), not reported")
    return found


def _has_version_entry(pe: pefile.PE) -> bool:
    """Whether the resource tree's top level lists an RT_VERSION entry."""
    directory = getattr(pe, "DIRECTORY_ENTRY_RESOURCE", None)
    return any(entry.id == _RT_VERSION for entry in getattr(directory, "entries", ()))


def _strings(pe: pefile.PE) -> dict[str, str]:
    found: dict[str, str] = {}
    for info_list in getattr(pe, "FileInfo", None) or ():
        for info in info_list:
            for table in getattr(info, "StringTable", None) or ():
                for raw_key, raw_value in table.entries.items():
                    key = _text(raw_key)
                    if key in VERSION_KEYS and key not in found:
                        value = one_line(_text(raw_value).strip("\0 ").strip())
                        if value:
                            found[key] = value[:_MAX_VALUE_CHARS]
    return {key: found[key] for key in VERSION_KEYS if key in found}


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
