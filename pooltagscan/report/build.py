"""Run everything a report needs: the driver scan, the dump scan, the baseline."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import closing

from pooltagscan.carving import carve
from pooltagscan.carving.analysis import analyze_carved
from pooltagscan.diff import load_snapshot
from pooltagscan.drivers.attribution import (
    DriverFailure,
    DriverReport,
    expand_paths,
    folder_notes,
    scan_batch,
)
from pooltagscan.drivers.yarascan import RuleSet
from pooltagscan.inputs import open_image
from pooltagscan.objects import decode_records, hidden_objects, object_records
from pooltagscan.outputs import OutputFolder
from pooltagscan.provenance import FileDigest
from pooltagscan.provenance import document as provenance
from pooltagscan.records import concat
from pooltagscan.report.model import (
    Report,
    SampleCollector,
    build_rows,
    driver_summaries,
)
from pooltagscan.scan import prepare, run
from pooltagscan.scanner.engine import ProgressCallback
from pooltagscan.stats import TagStats
from pooltagscan.tags.database import TagDatabase


def make_report(
    dump: str,
    driver_paths: Sequence[str] = (),
    db: TagDatabase | None = None,
    baseline: str | None = None,
    layout: str = "auto",
    jobs: int = 1,
    rule_files: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    check_files: Callable[[list[str]], None] | None = None,
    objects: bool = False,
    from_dump: bool = False,
    save_to: OutputFolder | None = None,
) -> Report:
    """The report of one dump. Unusable driver files become `problems` (the batch goes
    on); an unusable dump or baseline raises InputError. `check_files` sees the driver
    files found before any is read (the CLI refuses outputs among them). `from_dump`
    adds the drivers carved from the dump's kernel space (`carving`), written to
    `save_to` when given."""
    db = db or TagDatabase.builtin()
    with closing(open_image(dump)) as image:
        problems: list[str] = []
        notes: list[str] = []
        reports = []
        if driver_paths:
            expansion = expand_paths(driver_paths)
            if check_files is not None:
                check_files(expansion.files)
            problems += [str(f) for f in expansion.failures]
            walked = expansion.walked
            seen = []
            for result in scan_batch(expansion.files, RuleSet(rule_files), jobs, walked=walked):
                seen.append(result)
                if isinstance(result, DriverFailure):
                    problems.append(str(result))
                elif isinstance(result, DriverReport):
                    reports.append(result)
                # A DriverSkipped (a user-mode image found in a folder) is counted below.
            notes += folder_notes(expansion, seen)
        snapshot = load_snapshot(baseline, layout, db, jobs) if baseline else None

        start = time.perf_counter()
        digest = FileDigest(image.file)  # the dump's sha256, read alongside the scan
        prepared = prepare(image, layout, db)
        stats = TagStats()
        samples = SampleCollector(db)
        object_parts = []
        for records in run(prepared, jobs=jobs, progress=progress):
            stats.add(records)
            samples.add(records)
            if objects:
                object_parts.append(object_records(records))
        hidden = None
        if objects:
            decoded, object_notes = decode_records(prepared, concat(object_parts))
            hidden = hidden_objects(decoded)
            notes += [f"objects: {n}" for n in object_notes]
        seconds = time.perf_counter() - start
        samples.fill_previews(image.read, virtual=image.format == "minidump")
        carved_meta = None
        if from_dump:
            carved_meta = _carved(image, prepared, rule_files, save_to, reports, problems, notes)

        meta = prepared.metadata()
        if objects:
            meta["objects"] = decoded.metadata()
        hashed = digest.result()
        meta.update(
            size=image.file_size,
            sha256=hashed["sha256"],
            scan_seconds=round(seconds, 3),
            baseline=snapshot.source if snapshot else None,
            provenance=provenance([hashed]),
        )
        if carved_meta is not None:
            meta["carved_drivers"] = carved_meta
        return Report(
            meta=meta,
            rows=build_rows(stats, db, reports, snapshot, samples),
            totals=stats.totals(),
            drivers=driver_summaries(reports),
            problems=problems,
            notes=notes,
            hidden=hidden,
        )


def _carved(image, prepared, rule_files, save_to, reports, problems, notes) -> dict:
    """Carve the dump's drivers, analyse them into `reports`, save them when asked;
    what the report's metadata says of them."""
    result = carve(image, prepared.kernel_space())
    notes.extend(f"carving: {n}" for n in result.notes)
    taken = set()
    for carved in result.images:
        if save_to is not None:
            save_to.write(carved.name, [carved.data])
        taken.add(carved.name)
    for outcome in analyze_carved(result.images, rule_files):
        if isinstance(outcome, DriverFailure):
            notes.append(f"carved image {outcome}")  # memory, not a user file: a note
        else:
            reports.append(outcome)
    notes.append(
        f"{len(result.images)} image(s) carved from the kernel space "
        f"({result.pages_walked:,} mapped pages, {result.seconds:.2f}s)"
        + (f", written to {save_to.path}" if save_to is not None else "")
    )
    return {
        "images": [
            {
                "name": c.name,
                "base": c.base,
                "size": c.size,
                "found_by": c.found_by,
                "named_by": c.named_by,
                "imports": c.imports,
                "missing_pages": c.missing_pages,
            }
            for c in result.images
        ],
        "pages_walked": result.pages_walked,
        "seconds": round(result.seconds, 3),
    }
