"""The tracker view (`scan --tracker`): PoolMon's columns, offline."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pooltagscan.render.view import Column, Table, View
from pooltagscan.scanner.tracker import COUNTERS
from pooltagscan.tracking import TrackerRow, TrackerTotals

POOL_TYPES = (("nonpaged", "Nonp"), ("paged", "Paged"))
_COLUMNS = (
    Column("Tag"),
    Column("Type"),
    Column("Allocs", right=True),
    Column("Frees", right=True),
    Column("Diff", right=True),
    Column("Bytes", right=True),
    Column("Per Alloc", right=True),
    Column("Owner", width=24),
)


class TrackerView(View):
    """The kernel's own per-tag counters of one dump (PoolTrackTable): one record per
    tag, one table line per tag and pool type in use."""

    fields = ("tag", *COUNTERS, "owner", "description")

    def __init__(
        self,
        totals: TrackerTotals,
        rows: list[TrackerRow],
        meta: dict[str, Any],
        dump: str | None = None,
    ) -> None:
        """`dump` names the dump on every record when a run scans several."""
        super().__init__(rows, {"dump": dump} if dump is not None else None, dump)
        self.totals, self.meta = totals, meta

    def records(self, row: TrackerRow) -> Iterable[dict[str, Any]]:
        return (row.as_dict(),)

    def csv_rows(self, row: TrackerRow) -> Iterable[Sequence[Any]]:
        return ([row.tag, *(row.counters[c] for c in COUNTERS), row.owner, row.description],)

    def document(self) -> dict[str, Any]:
        return self.totals.document(list(self.rows), self.meta)

    def table(self) -> Table:
        """One line per tag and pool type in use, as PoolMon prints them."""
        if not self.totals.found:
            return Table(_COLUMNS, (), empty="no pool tracker table found in this dump")
        body = []
        for r in self.rows:
            for pool, name in POOL_TYPES:
                allocs, frees = r.counters[f"{pool}_allocs"], r.counters[f"{pool}_frees"]
                if not allocs and not frees:
                    continue
                live, nbytes = allocs - frees, r.counters[f"{pool}_bytes"]
                per = nbytes // live if live else 0
                body.append((r.tag, name, allocs, frees, live, nbytes, per, r.owner))
        note = (
            f"kernel pool tracker table: {self.totals.pages} page(s) found; Diff = "
            "allocations outstanding when the dump was taken"
        )
        cut = self.totals.cut_tags()
        if cut:
            note += f"; {len(cut)} tag(s) cut by a page boundary, counts unknown: " + ", ".join(
                sorted(cut)
            )
        return Table(_COLUMNS, body, preamble=(note,))
