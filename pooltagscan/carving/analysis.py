"""Carved images through the driver analysis, exactly as files are analysed.

A carved image is rebuilt as a PE file (`carving.images.rebuild`), so it goes through
`drivers.pe.load_image` and `drivers.attribution.analyze_image` unchanged: the report of
an image carved from memory and of the same bytes saved with `--save-drivers` and
analysed by `pooltagscan drivers` cannot differ. Runs in-process (a dump holds a few
hundred drivers at most, each analysed in milliseconds to seconds).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pooltagscan.carving import CarvedImage
from pooltagscan.drivers.attribution import (
    AnalysisContext,
    DriverFailure,
    DriverReport,
    analyze_image,
)
from pooltagscan.drivers.pe import NotADriver, load_image
from pooltagscan.drivers.yarascan import RuleSet
from pooltagscan.errors import InputError


def analyze_carved(
    images: Sequence[CarvedImage], rule_files: Sequence[str] = ()
) -> Iterator[DriverReport | DriverFailure]:
    """One report (or the one-line reason it failed) per carved image, in order.
    Images that are no kernel driver (never the case for kernel-space images that
    validate, but memory is hostile) are left out."""
    context = AnalysisContext(RuleSet(rule_files))
    for carved in images:
        label = f"{carved.name} (carved at {carved.base:#x})"
        try:
            report = analyze_image(load_image(carved.name, carved.data), context)
        except NotADriver:
            continue
        except InputError as exc:
            yield DriverFailure(label, exc.problem)
            continue
        report.label = carved.name
        report.notes[:0] = [f"carved from the dump: {carved.describe()}"] + carved.notes
        yield report
