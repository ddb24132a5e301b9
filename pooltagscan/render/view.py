"""What a command shows, as data: columns, rows and the document around them.

Every output of the tool is a view: per-tag statistics, the tracker table, a diff, the
drivers' findings, the attribution report, YARA hits, the blocks of a pool page. A view
says what there is to show - its fields and records for the machine formats, its JSON
document, its table - and the writers of `render.writers` say how each format looks. So
adding a format is one writer that every view gets, and adding a view is one subclass
that every format can write, not an edit in each command.

A view is written once: its rows may be a generator (a scan or a driver batch under way),
which the writer draws from as the rows come, so jsonl, csv, a streamed JSON document
and a table of fixed widths show rows before the last one is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pooltagscan.render.writers import Writer


@dataclass(frozen=True)
class Column:
    """One column of a table.

    `width`: in a measured table the widest a cell may be (longer ones are cut with
    `…`); in a fixed table the width every cell is padded to. `cut` is what marks a cut
    cell (`""` slices without a mark; None never cuts, for cells known to be short).
    `sep` is the text before the column (not before the first one).
    """

    header: str
    right: bool = False
    width: int | None = None
    cut: str | None = "…"
    sep: str = "  "


@dataclass
class Table:
    """The table form of a view: lines above it, the columns, the cell rows, lines below.

    A measured table sizes its columns to the widest cell, so it holds every row before
    writing; a `fixed` one uses the columns' widths and writes each row as it comes.
    `empty` is written instead of the heading and rows when there are none (None: the
    heading alone; `""`: nothing at all); a table with an `empty` text writes its
    heading only with its first row. `dashes` draws a rule under the heading; `rstrip`
    drops the padding at the end of each line.
    """

    columns: Sequence[Column]
    rows: Iterable[Sequence[object]]
    preamble: Sequence[str] = ()
    postscript: Sequence[str] = ()
    empty: str | None = None
    fixed: bool = False
    dashes: bool = True
    rstrip: bool = True


class View:
    """Base of every view: subclasses fill in the hooks their formats need.

    - `fields`: the csv header (after the lead), the names of a record's values.
    - `records(row)`: the jsonl records of one row (and the items of a streamed JSON
      document); `csv_rows(row)` the csv rows, by default the records' values.
    - `document()`: the whole JSON document, written at once with `json_indent`; or,
      with `stream_json`, `head()` + one item per line under `rows_key` + `trailer()`.
    - `table()`: the `Table` of the view.
    - `lead`: fields prefixed to every record and csv row (the dump, when a run reads
      several); `heading`: a `== NAME` line above the table in that case.
    - `formats`: writers of formats only this view has (the drivers' localtag.txt).
    """

    fields: Sequence[str] = ()
    rows_key = "rows"
    stream_json = False
    json_indent: int | None = 1
    formats: ClassVar[dict[str, type[Writer]]] = {}

    def __init__(
        self,
        rows: Iterable[Any] = (),
        lead: dict[str, Any] | None = None,
        heading: str | None = None,
    ) -> None:
        self.rows = rows
        self.lead = lead or {}
        self.heading = heading

    def records(self, row: Any) -> Iterable[dict[str, Any]]:
        return (dict(zip(self.fields, row)),)

    def csv_rows(self, row: Any) -> Iterable[Sequence[Any]]:
        return [list(record.values()) for record in self.records(row)]

    def document(self) -> dict[str, Any]:
        return {self.rows_key: [r for row in self.rows for r in self.records(row)]}

    def head(self) -> dict[str, Any]:
        """The streamed JSON document's keys before its list of rows."""
        return {}

    def json_items(self, row: Any) -> Iterable[dict[str, Any]]:
        return self.records(row)

    def trailer(self, count: int) -> dict[str, Any]:
        """The streamed JSON document's keys after its `count` items."""
        return {"count": count}

    def table(self) -> Table:
        columns = [Column(name) for name in self.fields]
        return Table(columns, ([str(c) for c in row] for row in self.rows))
