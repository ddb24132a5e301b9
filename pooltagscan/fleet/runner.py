"""The client side of `fleet scan`: submit every dump's tasks, merge, record each dump.

For every dump: a plan task (open, detect, split), then one task per window range and a
sha256 task, all running wherever the cluster has room. Range results are merged here
with `TagStats.merge` as they arrive (counters, never records), and when a dump's last
task is in, its per-tag rows are built exactly as `scan --stats` builds them (the tag
database's owner and description, the tracker reconciliation) and written to the store
with its provenance.

Every dump ends in one of three states, reported through `on_outcome` and never
silently dropped: `ok`, `failed` (its error recorded in the store: a missing or
unreadable file, a file that changed or vanished under its scan, a worker that died on
it more often than Dask retries) or `skipped` (an earlier run scanned this very file:
same path, size and mtime). An interrupted run cancels its tasks; dumps finished until
then stay in the store.

Nothing here prints: the shell renders the outcomes and progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pooltagscan import __version__, interrupts
from pooltagscan.errors import InputError
from pooltagscan.files import FileId
from pooltagscan.fleet.store import STATUS_FAILED, STATUS_OK, FleetStore, dump_id
from pooltagscan.fleet.tasks import (
    TASK_BYTES,
    DumpPlan,
    RangeResult,
    digest_dump,
    plan_dump,
    scan_range,
    stat_facts,
)
from pooltagscan.scan import known_tag_values
from pooltagscan.scanner.engine import WINDOW_BYTES
from pooltagscan.stats import TagStats
from pooltagscan.summary import ScanSummary
from pooltagscan.tags.database import TagDatabase
from pooltagscan.tracking import TrackerTotals
from pooltagscan.tracking import attach as attach_tracker

STATUS_SKIPPED = "skipped"
# Why a provenance row's sha256 is null when the run was asked not to compute it.
NO_HASH_NOTE = "not computed (--no-hash)"


@dataclass
class FleetOptions:
    layout: str = "auto"
    tables: bool = True
    records: bool = False
    rescan: bool = False  # scan again dumps an earlier run already did
    task_bytes: int = TASK_BYTES
    window_bytes: int = WINDOW_BYTES
    retries: int = 1  # resubmissions of a task that failed (a worker's death is Dask's)
    # The sha256 reads every dump a second time; an analyst who hashes at acquisition
    # (or whose storage is the bottleneck) turns it off, and the row says so.
    hash: bool = True


@dataclass
class DumpOutcome:
    """What became of one dump, for the shell to report."""

    path: str
    status: str
    error: str | None = None
    tags: int = 0
    records: int = 0
    scanned_bytes: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


OutcomeCallback = Callable[[DumpOutcome], None]
ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes planned so far)
DumpProgressCallback = Callable[[str, int, int], None]  # (path, bytes done, bytes planned)


@dataclass
class _Dump:
    """A dump being scanned: its futures and what has come back."""

    path: str
    ident: str
    started: float
    plan: DumpPlan | None = None
    plan_future: Any = None
    futures: set = field(default_factory=set)
    stats: TagStats = field(default_factory=TagStats)
    tracker: TrackerTotals = field(default_factory=TrackerTotals)
    results: list[RangeResult] = field(default_factory=list)
    scanned: int = 0  # bytes of the ranges in
    sha256: str | None = None
    sha256_note: str | None = None  # why sha256 is null although the dump was scanned
    digest_done: bool = False  # the sha256 task is in, or none was asked for
    hashed: bool = False  # a sha256 task ran
    error: str | None = None
    finished: bool = False

    @property
    def complete(self) -> bool:
        return (
            self.plan is not None
            and self.digest_done
            and len(self.results) == len(self.plan.ranges)
        )


def _configured_allowed_failures() -> int | None:
    try:
        import dask.config

        value = dask.config.get("distributed.scheduler.allowed-failures")
    except Exception:  # noqa: BLE001 - no config: the generic words
        return None
    return value if isinstance(value, int) else None


def _error_text(path: str, exc: BaseException | None) -> str:
    """One line for a failed task, naming the dump."""
    if isinstance(exc, InputError):
        return str(exc)
    name = type(exc).__name__
    if exc is None or name == "KilledWorker":
        # Dask's own text is a paragraph with a link; one line says what matters. A task
        # whose worker died may also come back in error with no exception attached yet
        # (seen under load): the cluster's retry allowance then comes from the config.
        allowed = getattr(exc, "allowed_failures", None)
        if exc is None:
            allowed = _configured_allowed_failures()
        if not isinstance(allowed, int):
            return f"{path}: the worker scanning it died more often than the cluster retries"
        tries = allowed + 1
        return (
            f"{path}: the worker scanning it died, {tries} time{'s' if tries > 1 else ''} "
            f"(the cluster allows {allowed} retries)"
        )
    if name == "CancelledError":
        return f"{path}: its task was cancelled by the cluster"
    return f"{path}: scan failed: {name}: {exc}"


def select(
    store: FleetStore, paths: list[str], rescan: bool = False
) -> tuple[list[str], list[DumpOutcome]]:
    """(absolute paths to scan, outcomes of those skipped): a dump an earlier run
    scanned successfully with the same path, size and mtime is not scanned again
    (failed ones are retried). Lets the shell skip starting a cluster for nothing."""
    unique = list(dict.fromkeys(os.path.abspath(p) for p in paths))
    done = {} if rescan else store.done()
    todo, skipped = [], []
    for path in unique:
        facts = stat_facts(path)
        previous = done.get(path)
        if (
            facts is not None
            and previous is not None
            and previous["size"] == facts.size
            and previous["mtime_ns"] == facts.mtime_ns
        ):
            skipped.append(
                DumpOutcome(path, STATUS_SKIPPED, scanned_bytes=previous["scanned_bytes"] or 0)
            )
        else:
            todo.append(path)
    return todo, skipped


def scan_fleet(
    client: Any,
    store: FleetStore,
    paths: list[str],
    db: TagDatabase,
    options: FleetOptions | None = None,
    on_outcome: OutcomeCallback | None = None,
    on_progress: ProgressCallback | None = None,
    command_line: str = "",
    on_dump_progress: DumpProgressCallback | None = None,
) -> list[DumpOutcome]:
    """Scan `paths` on the cluster behind `client` into `store`; one outcome per dump.
    `on_dump_progress` hears of each planned dump's bytes as its ranges come in (its
    outcome, through `on_outcome`, says when it is no longer in flight)."""
    from distributed import as_completed

    options = options or FleetOptions()
    outcomes: list[DumpOutcome] = []

    def report(outcome: DumpOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    todo, skipped = select(store, paths, options.rescan)
    for outcome in skipped:
        report(outcome)
    if not todo:
        return outcomes
    forbidden: set[FileId] = set()
    for path in todo:
        facts = stat_facts(path)
        if facts is not None:
            forbidden.add(FileId(facts.device, facts.inode))

    scan_id = uuid.uuid4().hex[:16]
    known = client.scatter(known_tag_values(db), broadcast=True, hash=False)
    shipped_db = client.scatter(db, broadcast=True, hash=False) if options.records else None
    dumps: dict[str, _Dump] = {}
    kinds: dict[Any, tuple[str, _Dump, Any]] = {}
    planned = 0
    scanned = 0
    pending = as_completed(loop=client.loop)

    def submit(kind: str, dump: _Dump, func, *args, extra: Any = None, retries: int = 0):
        key = f"fleet-{kind}-{dump.ident}-{scan_id}" + (f"-{extra}" if extra is not None else "")
        future = client.submit(func, *args, key=key, pure=False, retries=retries)
        kinds[future] = (kind, dump, extra)
        dump.futures.add(future)
        pending.add(future)
        return future

    for path in todo:
        dump = _Dump(path, dump_id(path), time.perf_counter())
        if not options.hash:
            dump.sha256_note = NO_HASH_NOTE
        dumps[path] = dump
        dump.plan_future = submit(
            "plan",
            dump,
            plan_dump,
            path,
            options.layout,
            known,
            options.tables,
            options.task_bytes,
            options.window_bytes,
            retries=options.retries,
        )

    def fail(dump: _Dump, text: str) -> None:
        if dump.finished:
            return
        dump.error = text
        dump.finished = True
        live = [f for f in dump.futures if not f.done()]
        if live:
            client.cancel(live)
        _drop_futures(dump, kinds)
        row = _provenance(dump, scan_id, command_line)
        store.write_dump(row, None, frozenset(forbidden), _staged(store, scan_id, dump, options))
        report(DumpOutcome(dump.path, STATUS_FAILED, text, seconds=_work_seconds(dump)))

    try:
        for future in pending:
            interrupts.check()  # distributed's finalizers can swallow a Ctrl-C
            entry = kinds.get(future)
            if entry is None:
                continue
            kind, dump, _extra = entry
            if dump.finished:
                continue
            if future.status != "finished":
                try:
                    exc = future.exception()
                except BaseException as cancelled:  # noqa: BLE001 - cancelled futures raise
                    exc = cancelled
                fail(dump, _error_text(dump.path, exc))
                continue
            value = future.result()
            if kind == "plan":
                dump.plan = value
                plan: DumpPlan = value
                forbidden.add(FileId(plan.facts.device, plan.facts.inode))
                planned += plan.scanned_bytes
                if on_dump_progress is not None:
                    on_dump_progress(dump.path, 0, plan.scanned_bytes)
                folder = _staged(store, scan_id, dump, options)
                for start, stop in plan.ranges:
                    submit(
                        "range",
                        dump,
                        scan_range,
                        dump.plan_future,
                        start,
                        stop,
                        folder,
                        shipped_db,
                        extra=start,
                        retries=options.retries,
                    )
                if options.hash:
                    submit("sha256", dump, digest_dump, plan.facts, retries=options.retries)
                else:
                    dump.digest_done = True
            elif kind == "range":
                result: RangeResult = value
                dump.results.append(result)
                dump.stats.merge(result.tags, result.counts)
                dump.tracker.add(result.tracker)
                scanned += result.scanned_bytes
                dump.scanned += result.scanned_bytes
                if on_dump_progress is not None and dump.plan is not None:
                    on_dump_progress(dump.path, dump.scanned, dump.plan.scanned_bytes)
            else:
                dump.sha256 = value
                dump.digest_done = dump.hashed = True
            kinds.pop(future, None)
            dump.futures.discard(future)
            if on_progress is not None:
                on_progress(scanned, planned)
            if dump.complete:
                _finish(dump, store, db, scan_id, command_line, frozenset(forbidden), options)
                dump.finished = True
                _drop_futures(dump, kinds)
                report(
                    DumpOutcome(
                        dump.path,
                        STATUS_OK,
                        tags=len(dump.stats),
                        records=sum(r.batch.records for r in dump.results),
                        scanned_bytes=dump.plan.scanned_bytes,
                        seconds=_work_seconds(dump),
                        warnings=list(dump.plan.meta.get("warnings", [])),
                    )
                )
    finally:
        unfinished = [f for f in kinds if not f.done()]
        if unfinished:
            # The cluster may be going away already: nothing more to stop then.
            with contextlib.suppress(Exception):
                client.cancel(unfinished, force=True)
        kinds.clear()
        for dump in dumps.values():
            dump.futures.clear()
            dump.plan_future = None
        if options.records:
            store.clean_staging()
    return outcomes


def _drop_futures(dump: _Dump, kinds: dict) -> None:
    """Release the dump's futures (the plan held on a worker goes with them)."""
    for future in list(dump.futures):
        kinds.pop(future, None)
    dump.futures.clear()
    dump.plan_future = None


def _staged(store: FleetStore, scan_id: str, dump: _Dump, options: FleetOptions) -> str | None:
    if not options.records:
        return None
    return os.path.join(store.staging(scan_id), dump.ident)


def _work_seconds(dump: _Dump) -> float:
    """Worker time spent on the dump: detection plus every range."""
    plan = dump.plan.seconds if dump.plan is not None else 0.0
    return plan + sum(r.seconds for r in dump.results)


def _finish(
    dump: _Dump,
    store: FleetStore,
    db: TagDatabase,
    scan_id: str,
    command_line: str,
    inputs: frozenset[FileId],
    options: FleetOptions,
) -> None:
    """Build the dump's `scan --stats` rows and provenance, and put them in the store."""
    rows = dump.stats.rows(db.describe, "bytes")
    attach_tracker(rows, dump.tracker)
    stats_rows = [
        {"dump_id": dump.ident, "scan_id": scan_id, "path": dump.path, **row.as_dict()}
        for row in rows
    ]
    provenance = _provenance(dump, scan_id, command_line)
    store.write_dump(provenance, stats_rows, inputs, _staged(store, scan_id, dump, options))


def _provenance(dump: _Dump, scan_id: str, command_line: str) -> dict[str, Any]:
    """The dump's provenance row (see store.DUMP_FIELDS)."""
    plan = dump.plan
    row: dict[str, Any] = {
        "dump_id": dump.ident,
        "scan_id": scan_id,
        "path": dump.path,
        "status": STATUS_FAILED if dump.error else STATUS_OK,
        "error": dump.error,
        "scan_seconds": round(_work_seconds(dump), 3),
        "scanned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "command_line": command_line,
        "tasks": len(dump.results) + (1 if plan is not None else 0) + int(dump.hashed),
        "sha256_note": dump.sha256_note,
        "records_files": sum(1 for r in dump.results if r.records_file),
    }
    facts = stat_facts(dump.path)
    if plan is not None and dump.error:
        # What the plan learnt stays (format, layout); partial counts would mislead.
        row.update(
            size=plan.facts.size,
            mtime_ns=plan.facts.mtime_ns,
            format=plan.meta["format"],
            architecture=plan.meta["architecture"],
            layout=plan.meta["layout"],
            layout_how=plan.meta.get("how"),
            scanned_bytes=plan.scanned_bytes,
        )
    elif plan is not None:
        meta = plan.meta
        summary = ScanSummary(plan.scanned_bytes)
        for result in dump.results:
            summary.merge(result.batch)
        counts = summary.as_dict()
        details = meta.get("format_details") or {}
        build = details.get("build")
        row.update(
            size=plan.facts.size,
            mtime_ns=plan.facts.mtime_ns,
            sha256=dump.sha256,
            format=meta["format"],
            architecture=meta["architecture"],
            layout=meta["layout"],
            layout_how=meta.get("how"),
            pooltype_encoding=meta["pooltype_encoding"],
            build=None if build is None else str(build),
            format_details=json.dumps(details, default=str, sort_keys=True),
            evidence=json.dumps(meta.get("evidence", {}), sort_keys=True),
            warnings=json.dumps(meta.get("warnings", [])),
            scanned_bytes=plan.scanned_bytes,
            captured_bytes=meta.get("captured_bytes"),
            records=counts["records"],
            bytes=counts["bytes"],
            pool_pages=counts["pool_pages"],
            scanned_pages=counts["scanned_pages"],
            pool_page_share=counts["pool_page_share"],
            tags=len(dump.stats),
            tracker_pages=dump.tracker.pages if dump.tracker.found else 0,
        )
    elif facts is not None:
        row.update(size=facts.size, mtime_ns=facts.mtime_ns)
    return row
