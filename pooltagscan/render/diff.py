"""The view of `pooltagscan diff`: per-tag growth between two snapshots."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pooltagscan.diff import DiffRow, Snapshot
from pooltagscan.render.view import Column, Table, View

DIFF_KIND = "pooltagscan-diff"
_COLUMNS = (
    Column("Tag"),
    *(
        Column(h, right=True)
        for h in ("Old Allocs", "New Allocs", "Δ Allocs", "Old Bytes", "New Bytes", "Δ Bytes")
    ),
    Column("Owner", width=14),
    Column("Description", width=30),
)


class DiffView(View):
    """Growth per tag, largest first: one record per tag, a table with signed deltas."""

    rows_key = "tags"

    def __init__(self, old: Snapshot, new: Snapshot, rows: list[DiffRow]) -> None:
        super().__init__(rows)
        self.old, self.new = old, new
        # With no rows, the csv header still names the key column.
        self.fields = list(rows[0].as_dict()) if rows else ["tag"]

    def records(self, row: DiffRow) -> Iterable[dict[str, Any]]:
        return (row.as_dict(),)

    def document(self) -> dict[str, Any]:
        return {
            "kind": DIFF_KIND,
            "view": self.old.view,
            "old": self.old.source,
            "new": self.new.source,
            "tags": [r.as_dict() for r in self.rows],
        }

    def table(self) -> Table:
        body = [
            (
                r.tag,
                r.old_allocs,
                r.new_allocs,
                f"{r.delta_allocs:+d}",
                r.old_bytes,
                r.new_bytes,
                f"{r.delta_bytes:+d}",
                r.owner,
                r.description,
            )
            for r in self.rows
        ]
        return Table(_COLUMNS, body)
