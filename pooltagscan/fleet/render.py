"""The fleet views as table, json, jsonl and csv, and the stack as an HTML heat map.

Same formats as every other view: json is one document (kind, version, the fleet's
header with its failed dumps, the rows), jsonl and csv one row per line. The HTML page
is self-contained like the attribution report (no script at all, inline CSS allowed by
its hash in a Content-Security-Policy that forbids every fetch), and every string in it
comes from dumps or tag files an attacker may choose, so all of it is escaped.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import math
import os
from collections.abc import Sequence
from typing import Any, TextIO

from pooltagscan.render.table import format_table

VIEW_VERSION = 1


def write_view(
    fmt: str,
    out: TextIO,
    kind: str,
    header: dict[str, Any],
    rows: list[dict[str, Any]],
    table: tuple[Sequence[str], Sequence[str], Sequence[bool]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `rows` (dicts) in `fmt`; `table` is (headings, keys, right-aligned) of the
    table view, whose cells a list value shows as its length."""
    if fmt == "json":
        doc = {"kind": f"pooltagscan-fleet-{kind}", "version": VIEW_VERSION, **header}
        doc.update(extra or {})
        doc["rows"] = rows
        json.dump(doc, out, indent=1)
        out.write("\n")
    elif fmt == "jsonl":
        out.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        keys = list(rows[0]) if rows else list(table[1])
        writer.writerow(keys)
        writer.writerows([_csv_cell(r.get(k)) for k in keys] for r in rows)
    else:
        headings, keys, right = table
        body = [[_table_cell(r.get(k)) for k in keys] for r in rows]
        widths = {i: 28 for i, k in enumerate(keys) if k in ("description", "where")}
        widths.update({i: 12 for i, k in enumerate(keys) if k == "owner"})
        out.write(format_table(headings, body, right, widths) + "\n")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list):  # stack's per_dump: "path=allocs/bytes;..."
        return ";".join(f"{d['dump']}={d['live_allocs']}/{d['live_bytes']}" for d in value)
    return "" if value is None else value


def _table_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{100 * value:.1f}%"
    if isinstance(value, list):
        return ", ".join(os.path.basename(d["dump"]) for d in value)
    return str(value)


# -- the stack's heat map -----------------------------------------------------------------

HEAT_MAX_TAGS = 300
HEAT_MAX_DUMPS = 150

_CSS = """
body { margin: 0; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, Arial,
  sans-serif; color: #1d2330; }
header { background: #17324d; color: #fff; padding: 12px 24px; }
header h1 { font-size: 17px; margin: 0; font-weight: 600; }
main { padding: 8px 24px 32px; }
p.note { color: #5b6472; max-width: 70em; }
.failed { color: #9b1c1c; }
table.heat { border-collapse: collapse; }
table.heat th, table.heat td { border: 1px solid #fff; padding: 0; }
table.heat th.tag { text-align: left; padding: 0 8px 0 0; font-family: ui-monospace,
  "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre; font-weight: 400; }
table.heat th.num { text-align: right; padding: 0 8px; font-weight: 400; color: #5b6472; }
table.heat th.owner { text-align: left; padding: 0 8px; font-weight: 400; color: #5b6472;
  white-space: nowrap; max-width: 14em; overflow: hidden; text-overflow: ellipsis; }
table.heat thead th.host { height: 130px; width: 16px; vertical-align: bottom;
  font-weight: 400; }
table.heat thead th.host div { writing-mode: vertical-rl; transform: rotate(180deg);
  white-space: nowrap; max-height: 128px; overflow: hidden; font-size: 11px; }
table.heat td { width: 16px; height: 16px; min-width: 16px; }
td.h0 { background: #f2f4f7; }
td.h1 { background: #d6e6f5; } td.h2 { background: #a9cbe9; } td.h3 { background: #74a9d8; }
td.h4 { background: #3f83c2; } td.h5 { background: #1f5f99; } td.h6 { background: #0d3a66; }
.legend span { display: inline-block; width: 16px; height: 12px; margin: 0 2px;
  vertical-align: middle; }
"""
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
_CSP = f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'"
_SHADES = 6


def _esc(value: Any) -> str:
    text = "".join(
        "\ufffd" if (ord(c) < 0x20 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0 else c
        for c in str(value)
    )
    return html.escape(text, quote=True)


def _shade(value: int, top: int) -> int:
    """Colour class 1..6 of a live byte count on a log scale up to the map's largest."""
    if value <= 0 or top <= 0:
        return 0
    return max(1, min(_SHADES, math.ceil(_SHADES * math.log1p(value) / math.log1p(top))))


def write_heat_map(out: TextIO, header: dict[str, Any], rows: list[Any], title: str) -> None:
    """The stack as a page: tags (rarest first) down, dumps across, cells shaded by the
    tag's live bytes on that dump. At most HEAT_MAX_TAGS x HEAT_MAX_DUMPS cells; the
    page says when more were left out (json and csv carry everything)."""
    shown = rows[:HEAT_MAX_TAGS]
    hosts: list[str] = sorted({d["dump"] for r in shown for d in r.per_dump})
    hosts_shown = hosts[:HEAT_MAX_DUMPS]
    top = max((d["live_bytes"] for r in shown for d in r.per_dump), default=0)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="generator" content="pooltagscan">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_esc(title)}</h1></header><main>",
        (
            f'<p class="note">Fleet {_esc(header["fleet"])}: {header["dumps"]} dumps scanned. '
            "Tags are ranked by how few dumps hold them (rare tags first); a cell's shade is the "
            "tag's live bytes on that dump (log scale; live = allocated + undecided, big-pool "
            "allocations included), its tooltip gives the counts. A dump holds a tag when "
            "its scan found a block of it, free ones included.</p>"
        ),
    ]
    if header["failed"]:
        parts.append(
            f'<p class="note failed">{len(header["failed"])} dump(s) could not be scanned and '
            "are not in this map: "
            + "; ".join(_esc(f"{f['path']}: {f['error']}") for f in header["failed"][:20])
            + "</p>"
        )
    if len(rows) > len(shown) or len(hosts) > len(hosts_shown):
        parts.append(
            f'<p class="note">Shown: the first {len(shown)} of {len(rows)} tags and '
            f"{len(hosts_shown)} of {len(hosts)} dumps (json and csv carry all).</p>"
        )
    legend = "".join(f'<span class="h{i}" title="shade {i}"></span>' for i in range(1, 7))
    parts.append(f'<p class="legend">fewer bytes {legend} more bytes</p>')
    parts.append('<table class="heat"><thead><tr><th class="tag">Tag</th>')
    parts.append('<th class="num">Dumps</th><th class="owner">Owner</th>')
    parts.extend(
        f'<th class="host" title="{_esc(h)}"><div>{_esc(os.path.basename(h))}</div></th>'
        for h in hosts_shown
    )
    parts.append("</tr></thead><tbody>")
    for r in shown:
        cells = {d["dump"]: d for d in r.per_dump}
        parts.append(
            f'<tr><th class="tag" title="{_esc(r.description)}">{_esc(r.tag)}</th>'
            f'<th class="num">{r.dumps}</th><th class="owner">{_esc(r.owner)}</th>'
        )
        for h in hosts_shown:
            d = cells.get(h)
            if d is None:
                parts.append('<td class="h0"></td>')
                continue
            tip = (
                f"{r.tag} on {os.path.basename(h)}: {d['live_allocs']} live, "
                f"{d['live_bytes']} bytes, {d['free_allocs']} free"
            )
            parts.append(
                f'<td class="h{max(1, _shade(d["live_bytes"], top))}" title="{_esc(tip)}"></td>'
            )
        parts.append("</tr>")
    parts.append("</tbody></table></main></body></html>")
    out.write("\n".join(parts) + "\n")
