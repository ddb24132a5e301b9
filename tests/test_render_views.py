"""The one output layer (issue 10): a view is columns, rows and metadata; the writers
of render.writers turn any view into table, json, jsonl and csv, and every command's
`--format` choices come from their registry."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterable
from typing import Any

import pytest

from pooltagscan import cli
from pooltagscan.drivers.render import DriversView
from pooltagscan.render.view import Column, Table, View
from pooltagscan.render.writers import WRITERS, formats, make_writer, write_view


class FruitView(View):
    """A throwaway view: nothing in the tool shows fruit, yet every format writes it."""

    fields = ("name", "weight")
    rows_key = "fruit"

    def records(self, row: tuple[str, int]) -> Iterable[dict[str, Any]]:
        return ({"name": row[0], "weight": row[1]},)

    def table(self) -> Table:
        columns = (Column("Name"), Column("Weight", right=True))
        return Table(columns, list(self.rows), preamble=("fruit by weight",))


ROWS = [("fig", 50), ("watermelon, large", 9000)]
EXPECTED = {
    "table": (
        "fruit by weight\n"
        "Name               Weight\n"
        "-----------------  ------\n"
        "fig                    50\n"
        "watermelon, large    9000\n"
    ),
    "json": (
        "{\n"
        ' "fruit": [\n'
        "  {\n"
        '   "name": "fig",\n'
        '   "weight": 50\n'
        "  },\n"
        "  {\n"
        '   "name": "watermelon, large",\n'
        '   "weight": 9000\n'
        "  }\n"
        " ]\n"
        "}\n"
    ),
    "jsonl": ('{"name": "fig", "weight": 50}\n{"name": "watermelon, large", "weight": 9000}\n'),
    "csv": 'name,weight\nfig,50\n"watermelon, large",9000\n',
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_a_new_view_is_written_in_every_format_by_the_shared_writers(fmt):
    assert set(EXPECTED) == set(WRITERS)
    out = io.StringIO()
    assert write_view(fmt, out, FruitView(ROWS)) == (0 if fmt == "json" else 2)
    assert out.getvalue() == EXPECTED[fmt]


class StreamedFruit(FruitView):
    stream_json = True

    def head(self) -> dict[str, Any]:
        return {"market": "Les Halles"}


def test_streamed_views_and_several_dumps_share_one_session():
    """Rows come from a generator; the lead names the dump on every record; csv writes
    its header once for the whole run; json streams one item per line."""
    out = io.StringIO()
    writer = make_writer("csv", out)
    for dump in ("a.raw", "b.raw"):
        writer.write(FruitView(iter(ROWS[:1]), {"dump": dump}, dump))
    assert out.getvalue() == "dump,name,weight\na.raw,fig,50\nb.raw,fig,50\n"
    out = io.StringIO()
    write_view("json", out, StreamedFruit(iter(ROWS), {"dump": "a.raw"}))
    assert out.getvalue() == (
        '{"market": "Les Halles", "fruit": [\n'
        '  {"dump": "a.raw", "name": "fig", "weight": 50},\n'
        '  {"dump": "a.raw", "name": "watermelon, large", "weight": 9000}\n'
        '], "count": 2}\n'
    )
    out = io.StringIO()
    write_view("table", out, FruitView([], heading="a.raw"))
    assert out.getvalue() == "== a.raw\nfruit by weight\nName  Weight\n----  ------\n"


def _format_choices() -> dict[str, tuple[str, ...]]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, command in sub.choices.items():
        for action in command._actions:
            if "--format" in action.option_strings:
                found[name] = tuple(action.choices)
    return found


def test_every_command_takes_its_formats_from_the_writers_registry():
    choices = _format_choices()
    assert set(choices) >= {"scan", "diff", "drivers", "report", "pool"}
    own = {"drivers": set(DriversView.formats)}  # localtag.txt: the drivers view's own
    for command, names in choices.items():
        assert set(names) <= set(WRITERS) | own.get(command, set()), command
    assert set(choices["scan"]) == set(choices["diff"]) == set(WRITERS)
    with pytest.raises(ValueError, match="xml"):
        formats("table", "xml")
