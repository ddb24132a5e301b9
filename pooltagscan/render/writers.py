"""The one set of writers: table, json, jsonl and csv, for every view.

A writer is a session on one output: `write(view)` once per view (a run that reads
several dumps writes one view per dump), `finish()` once at the end. What a session
keeps across views is what a format needs to stay one document: the csv header is
written once. `WRITERS` is the registry the commands take their `--format` choices from
(`formats()`), so a format added here is offered by every command whose views it suits.

The allocation records of `scan` have writers of their own (render.records): millions of
rows rendered in bulk from the record arrays, under the same format names.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import TextIO

from pooltagscan.render.table import format_table
from pooltagscan.render.view import Column, Table, View


class Writer:
    """A session writing views in one format to `out`."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, view: View) -> int:
        """Write one view; returns how many rows it wrote as they came (0 for a JSON
        document written whole)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after the last view."""


class JsonlWriter(Writer):
    """One JSON object per line, the view's lead first."""

    def write(self, view: View) -> int:
        count = 0
        for count, row in enumerate(view.rows, 1):
            self.out.writelines(
                json.dumps({**view.lead, **record}) + "\n" for record in view.records(row)
            )
        return count


class CsvWriter(Writer):
    """A header row (once per session), then the view's csv rows."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(out)
        self._csv = csv.writer(out, lineterminator="\n")
        self._header = False

    def write(self, view: View) -> int:
        lead = list(view.lead.values())
        if not self._header:
            self._csv.writerow([*view.lead, *view.fields])
            self._header = True
        count = 0
        for count, row in enumerate(view.rows, 1):
            self._csv.writerows([*lead, *cells] for cells in view.csv_rows(row))
        return count


class JsonWriter(Writer):
    """The view's JSON document: whole (indented), or streamed one item per line between
    its head and its trailer, for views whose rows come while a scan runs."""

    def write(self, view: View) -> int:
        if not view.stream_json:
            json.dump(view.document(), self.out, indent=view.json_indent)
            self.out.write("\n")
            return 0
        head = json.dumps(view.head())[:-1]
        self.out.write(f"{head}{', ' if len(head) > 1 else ''}{json.dumps(view.rows_key)}: [")
        count = items = 0
        for count, row in enumerate(view.rows, 1):
            for item in view.json_items(row):
                self.out.write(
                    ("\n  " if not items else ",\n  ") + json.dumps({**view.lead, **item})
                )
                items += 1
        trailer = json.dumps(view.trailer(items))
        self.out.write("\n]" + (", " + trailer[1:] if len(trailer) > 2 else "}") + "\n")
        return count


def _fixed_line(columns: Sequence[Column], cells: Sequence[str], rstrip: bool) -> str:
    parts = []
    for i, (text, column) in enumerate(zip(cells, columns)):
        width = column.width
        if width is not None:
            if column.cut is not None and len(text) > width:
                text = text[: width - len(column.cut)] + column.cut
            text = text.rjust(width) if column.right else text.ljust(width)
        parts.append(text if i == 0 else column.sep + text)
    line = "".join(parts)
    return line.rstrip() if rstrip else line


def table_lines(table: Table) -> Iterable[str]:
    """The lines of a table (without their newlines); a fixed table's as its rows come."""
    yield from table.preamble
    if table.fixed:
        heading = [c.header for c in table.columns]
        shown = table.empty is None
        if shown:
            yield _fixed_line(table.columns, heading, table.rstrip)
            if table.dashes:
                yield _fixed_line(
                    table.columns, ["-" * (c.width or 0) for c in table.columns], True
                )
        for cells in table.rows:
            if not shown:
                yield _fixed_line(table.columns, heading, table.rstrip)
                shown = True
            yield _fixed_line(table.columns, cells, table.rstrip)
        if not shown and table.empty:
            yield table.empty
    else:
        rows = list(table.rows)
        if rows or table.empty is None:
            yield format_table(
                [c.header for c in table.columns],
                rows,
                [c.right for c in table.columns],
                max_width={i: c.width for i, c in enumerate(table.columns) if c.width},
            )
        elif table.empty:
            yield table.empty
    yield from table.postscript


def render_table(table: Table) -> str:
    """A table as one text, each line ending in a newline."""
    return "".join(line + "\n" for line in table_lines(table))


class TableWriter(Writer):
    """The view's table, under a `== NAME` line when the run reads several dumps."""

    def write(self, view: View) -> int:
        if view.heading is not None:
            self.out.write(f"== {view.heading}\n")
        count = 0
        table = view.table()

        def counted(rows: Iterable[Sequence[object]]) -> Iterable[Sequence[object]]:
            nonlocal count
            for row in rows:
                count += 1
                yield row

        table.rows = counted(table.rows)
        for line in table_lines(table):
            self.out.write(line + "\n")
        return count


WRITERS: dict[str, type[Writer]] = {
    "table": TableWriter,
    "json": JsonWriter,
    "jsonl": JsonlWriter,
    "csv": CsvWriter,
}


def formats(*names: str, view: type[View] | None = None) -> tuple[str, ...]:
    """A command's `--format` choices, in the order it lists them: each a registered
    writer or one of `view`'s own formats."""
    known = {**WRITERS, **(view.formats if view is not None else {})}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no writer for format {unknown[0]!r}")
    return names


def make_writer(fmt: str, out: TextIO, view: type[View] | None = None) -> Writer:
    """The session writing `fmt` (a registered format, or one of `view`'s own)."""
    own = view.formats if view is not None else {}
    return (own.get(fmt) or WRITERS[fmt])(out)


def write_view(fmt: str, out: TextIO, view: View) -> int:
    """One view in `fmt`, as a session of its own."""
    writer = make_writer(fmt, out, type(view))
    count = writer.write(view)
    writer.finish()
    return count
