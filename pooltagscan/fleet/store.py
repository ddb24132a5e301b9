"""The fleet's Parquet folder: one set of files per dump, each put in place atomically.

    DIR/pooltagscan-fleet.json        marks the folder as ours (kind, version)
    DIR/dumps/<dump_id>.parquet       one row: the dump's provenance, status and error
    DIR/stats/<dump_id>.parquet       one row per tag: the `scan --stats` columns
    DIR/records/<dump_id>/part-*.parquet   with `--records`: every record of the dump

A dump's files are written when the dump is done, each to a temporary file beside it
renamed into place, stats before provenance: an interrupted run leaves every finished
dump readable and no half file anywhere (a reader skips dot files). Both rows carry the
`scan_id` of the attempt that wrote them, and readers keep only the stats rows of the
attempt the provenance names, so a crash between the two renames never mixes two scans.
`dump_id` is derived from the absolute path, so a rescan of a dump replaces its files.

Records are written by the workers themselves (a whole dump's records never travel to
the client), into `DIR/.staging/<scan_id>/`, and moved under `records/` when the dump's
scan succeeded; with `--records` the workers must therefore see DIR too.

Nothing written here may replace an input: every rename is checked against the device
and inode of the run's dumps.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pooltagscan.errors import InputError, OutputError
from pooltagscan.files import FileId, file_id
from pooltagscan.stats import COLUMNS

MARKER = "pooltagscan-fleet.json"
KIND, VERSION = "pooltagscan-fleet", 1
DUMPS, STATS, RECORDS, STAGING = "dumps", "stats", "records", ".staging"
STATUS_OK, STATUS_FAILED = "ok", "failed"


def dump_id(path: str) -> str:
    """A stable file name for a dump: a hash of its absolute path."""
    return hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _pa():
    import pyarrow as pa

    return pa


def stats_schema():
    pa = _pa()
    return pa.schema(
        [
            ("dump_id", pa.string()),
            ("scan_id", pa.string()),
            ("path", pa.string()),
            ("tag", pa.string()),
            *((name, pa.int64()) for name in COLUMNS),
            ("tracker_live", pa.int64()),
            ("tracked_share", pa.float64()),
            ("tracker_flag", pa.string()),
            ("owner", pa.string()),
            ("description", pa.string()),
        ]
    )


# Provenance columns, in order (see README "Fleet scale").
DUMP_FIELDS: tuple[tuple[str, str], ...] = (
    ("dump_id", "string"),
    ("scan_id", "string"),
    ("path", "string"),
    ("status", "string"),
    ("error", "string"),
    ("size", "int64"),
    ("mtime_ns", "int64"),
    ("sha256", "string"),
    ("sha256_note", "string"),  # why sha256 is null for a scanned dump (--no-hash)
    ("format", "string"),
    ("architecture", "string"),
    ("layout", "string"),
    ("layout_how", "string"),
    ("pooltype_encoding", "string"),
    ("build", "string"),
    ("format_details", "string"),  # JSON
    ("evidence", "string"),  # JSON
    ("warnings", "string"),  # JSON list
    ("scanned_bytes", "int64"),
    ("captured_bytes", "int64"),
    ("records", "int64"),
    ("bytes", "int64"),
    ("pool_pages", "int64"),
    ("scanned_pages", "int64"),
    ("pool_page_share", "float64"),
    ("tags", "int64"),
    ("tracker_pages", "int64"),
    ("scan_seconds", "float64"),
    ("scanned_at", "string"),  # UTC, ISO 8601
    ("tasks", "int64"),
    ("records_files", "int64"),
    ("tool_version", "string"),
    ("command_line", "string"),
)


def dumps_schema():
    pa = _pa()
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in DUMP_FIELDS])


def _to_parquet(table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _write_atomic(target: str, data: bytes, inputs: frozenset[FileId]) -> None:
    """`data` to `target`: a temporary file beside it, flushed, renamed into place; never
    over one of `inputs`. OutputError names the file."""
    folder, name = os.path.split(target)
    temp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".pooltagscan-partial", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        identity = file_id(target)
        if identity is not None and identity in inputs:
            raise OutputError(
                target,
                "is one of this run's input files; refusing to replace it (evidence "
                "is never overwritten)",
            )
        os.replace(temp, target)
        temp = None
    except OSError as exc:
        raise OutputError(target, f"cannot write: {exc.strerror or exc}") from None
    finally:
        if temp is not None:
            try:
                os.unlink(temp)
            except OSError:
                pass


class FleetStore:
    """A fleet folder opened for writing (`fleet scan`) or reading (the views)."""

    def __init__(self, path: str):
        self.path = path
        self.root = os.path.realpath(path)

    # -- opening -------------------------------------------------------------------------

    def create(self, inputs: Iterable[str]) -> None:
        """Make (or reuse) the folder; refuse one that is an input, holds one, is not a
        folder, or is a non-empty folder that is not a fleet store."""
        try:
            info = os.stat(self.root)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise OutputError(self.path, f"cannot write: {exc.strerror or exc}") from None
        if info is not None and not os.path.isdir(self.root):
            raise OutputError(self.path, "exists and is not a folder; nothing was written")
        for path in inputs:
            identity = file_id(path)
            if identity is None:
                continue
            real = os.path.realpath(path)
            if identity == file_id(self.root) or os.path.commonpath([real, self.root]) == self.root:
                raise OutputError(
                    self.path,
                    f"holds the dump {path}; refusing to write among the evidence "
                    "(nothing was written)",
                )
        marker = os.path.join(self.root, MARKER)
        if (
            info is not None
            and not os.path.exists(marker)
            and any(True for _ in os.scandir(self.root))
        ):
            raise OutputError(
                self.path,
                "is not empty and is not a fleet folder (no pooltagscan-fleet.json); "
                "give a new or empty folder, or one an earlier `fleet scan` wrote",
            )
        if not os.path.exists(marker):
            doc = json.dumps({"kind": KIND, "version": VERSION}).encode() + b"\n"
            _write_atomic(marker, doc, frozenset())
        for sub in (DUMPS, STATS):
            try:
                os.makedirs(os.path.join(self.root, sub), exist_ok=True)
            except OSError as exc:
                raise OutputError(self.path, f"cannot write: {exc.strerror or exc}") from None

    def check_readable(self) -> None:
        """InputError unless this is a fleet folder `fleet scan` wrote."""
        marker = os.path.join(self.root, MARKER)
        if not os.path.isdir(self.root):
            raise InputError(self.path, "no such fleet folder (run `pooltagscan fleet scan`)")
        try:
            with open(marker, encoding="utf-8") as handle:
                doc = json.load(handle)
        except (OSError, ValueError):
            raise InputError(
                self.path,
                "is not a fleet folder (no pooltagscan-fleet.json; run "
                "`pooltagscan fleet scan DUMP... --out DIR`)",
            ) from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise InputError(self.path, f"{MARKER} is not a pooltagscan fleet marker")

    # -- writing -------------------------------------------------------------------------

    def staging(self, scan_id: str) -> str:
        return os.path.join(self.root, STAGING, scan_id)

    def write_dump(
        self,
        row: dict[str, Any],
        stats_rows: list[dict[str, Any]] | None,
        inputs: frozenset[FileId],
        staged: str | None = None,
    ) -> None:
        """Put one dump's results in place: records, stats, then provenance (last, as the
        commit: readers trust stats only through it). A failed dump gets its provenance
        row and loses any stats and records of an earlier attempt."""
        pa = _pa()
        ident = row["dump_id"]
        stats_path = os.path.join(self.root, STATS, f"{ident}.parquet")
        records_path = os.path.join(self.root, RECORDS, ident)
        if stats_rows is not None:
            if staged is not None:
                self._replace_folder(staged, records_path)
            table = pa.Table.from_pylist(stats_rows, schema=stats_schema())
            _write_atomic(stats_path, _to_parquet(table), inputs)
        else:
            for stale in (stats_path,):
                try:
                    os.unlink(stale)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise OutputError(stale, f"cannot remove: {exc.strerror or exc}") from None
            shutil.rmtree(records_path, ignore_errors=True)
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        table = pa.Table.from_pylist([row], schema=dumps_schema())
        _write_atomic(
            os.path.join(self.root, DUMPS, f"{ident}.parquet"), _to_parquet(table), inputs
        )

    def _replace_folder(self, staged: str, target: str) -> None:
        """Move a finished records folder into place (the old one, if any, goes)."""
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            old = None
            if os.path.exists(target):
                old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(target))
                os.replace(target, os.path.join(old, "x"))
            os.replace(staged, target)
        except OSError as exc:
            raise OutputError(target, f"cannot write: {exc.strerror or exc}") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def clean_staging(self) -> None:
        """Drop what interrupted runs left in the staging area."""
        shutil.rmtree(os.path.join(self.root, STAGING), ignore_errors=True)

    # -- reading -------------------------------------------------------------------------

    def dumps(self) -> list[dict[str, Any]]:
        """Every provenance row, ordered by path."""
        rows = _read_folder(os.path.join(self.root, DUMPS), dumps_schema())
        return sorted(rows, key=lambda r: r["path"])

    def done(self) -> dict[str, dict[str, Any]]:
        """Provenance rows of dumps scanned successfully, by absolute path."""
        return {r["path"]: r for r in self.dumps() if r["status"] == STATUS_OK}

    def stats(self, dumps: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Stats rows of the successful dumps, each of the attempt its provenance names."""
        dumps = self.dumps() if dumps is None else dumps
        current = {(r["dump_id"], r["scan_id"]) for r in dumps if r["status"] == STATUS_OK}
        rows = _read_folder(os.path.join(self.root, STATS), stats_schema())
        return [r for r in rows if (r["dump_id"], r["scan_id"]) in current]


def _read_folder(folder: str, schema) -> list[dict[str, Any]]:
    """Rows of every finished Parquet file of `folder` (dot files are half written)."""
    import pyarrow.parquet as pq

    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".parquet") and n[0] != ".")
    except FileNotFoundError:
        return []
    rows: list[dict[str, Any]] = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            table = pq.read_table(path, schema=schema)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read this fleet file: {exc}") from None
        rows.extend(table.to_pylist())
    return rows


# -- records, written by the workers ---------------------------------------------------


def _records_schema():
    pa = _pa()
    text = pa.dictionary(pa.int32(), pa.string())
    return pa.schema(
        [
            ("offset", pa.uint64()),
            ("tag", text),
            ("protected", pa.bool_()),
            ("size", pa.uint32()),
            ("pool", text),
            ("state", text),
            ("layout", text),
            ("confidence", text),
            ("source", text),
            ("entry", pa.uint64()),
            ("owner", text),
            ("description", text),
        ]
    )


@dataclass
class RecordsFile:
    """The records of one range task, window by window, as a Parquet file of the
    output contract's fields (DESIGN.md section 6), put in place by `commit`."""

    folder: str
    start: int
    db: Any = None

    def __post_init__(self) -> None:
        import pyarrow.parquet as pq

        from pooltagscan.records import TagNames

        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.join(self.folder, f"part-{self.start:08d}.parquet")
        fd, self._temp = tempfile.mkstemp(
            prefix=f".part-{self.start:08d}.", suffix=".pooltagscan-partial", dir=self.folder
        )
        os.close(fd)
        self._names = TagNames(self.db)
        self._writer = pq.ParquetWriter(self._temp, _records_schema(), compression="zstd")

    def write(self, records: np.ndarray) -> None:
        if records.size:
            self._writer.write_table(self._table(records))

    def _table(self, records: np.ndarray):
        pa = _pa()
        from pooltagscan.records import (
            CONFIDENCE_NAMES,
            FAMILY_CODES,
            POOL_NAMES,
            SOURCE_BIGPOOL,
            SOURCE_NAMES,
            STATE_NAMES,
        )

        def coded(codes: np.ndarray, names: Iterable[str]):
            return pa.DictionaryArray.from_arrays(
                pa.array(codes.astype(np.int32)), pa.array(list(names), pa.string())
            )

        uniq, inverse = np.unique(records["tag"], return_inverse=True)
        values = uniq.tolist()
        about = [self._names.about(v) for v in values]
        inverse = inverse.reshape(-1)
        big = records["source"] == SOURCE_BIGPOOL
        return pa.table(
            {
                "offset": pa.array(records["offset"]),
                "tag": coded(inverse, [self._names(v) for v in values]),
                "protected": pa.array(records["protected"]),
                "size": pa.array(records["size"]),
                "pool": coded(records["pool"], POOL_NAMES),
                "state": coded(records["state"], STATE_NAMES),
                "layout": coded(records["family"], [f.value for f in FAMILY_CODES]),
                "confidence": coded(records["confidence"], CONFIDENCE_NAMES),
                "source": coded(records["source"], SOURCE_NAMES),
                "entry": pa.array(records["entry"], mask=~big),
                "owner": coded(inverse, [a[0] for a in about]),
                "description": coded(inverse, [a[1] for a in about]),
            },
            schema=_records_schema(),
        )

    def commit(self) -> None:
        self._writer.close()
        os.replace(self._temp, self.path)
        self._temp = None

    def discard(self) -> None:
        with contextlib.suppress(Exception):  # the file is dropped anyway
            self._writer.close()
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except OSError:
                pass
            self._temp = None
