"""The attribution report as one self-contained HTML file.

Analysts open this file from evidence shares, air-gapped workstations and mail
attachments, so it must work from a `file://` URL with no network at all: the CSS, the
script and the charts (SVG generated here) are inline, and a Content-Security-Policy
forbids every fetch. Every string in it that came from the dump, the drivers or a
pooltag file is attacker controlled (a rootkit chooses its pool tag and its driver
name), so it is escaped, and the policy only lets run the script whose hash it lists:
a `<script>` smuggled in by a tag could not run even if escaping were ever missed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from pooltagscan.report.model import (
    ATTRIBUTED,
    KNOWN,
    STATUS_ORDER,
    UNCONFIRMED,
    UNKNOWN,
    Candidate,
    Report,
    ReportRow,
    Sample,
)

CHART_TOP = 15  # tags per bar chart
HEX_WIDTH = 16  # bytes per hex-dump line

# C0 controls (but tab, newline, return), DEL and C1 controls: a pooltag file may hold
# them and they are invalid in HTML, so they are shown as U+FFFD.
_CONTROLS = {
    c: "\ufffd" for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]
}

_CSS = """
:root {
  --fg: #1d2330; --muted: #5b6472; --line: #dde1e7; --bg: #ffffff; --panel: #f6f7f9;
  --accent: #1f5f99; --np: #1f5f99; --pg: #7fb3e0; --other: #b8bec8;
  --attributed: #0f6b3a; --attributed-bg: #e2f4ea; --unknown: #8a4b00; --unknown-bg: #fdf0dc;
  --known: #4a5260; --known-bg: #eceef2; --bad: #9b1c1c; --bad-bg: #fdecec;
  --unconfirmed: #6b6f76; --unconfirmed-bg: #f3f3f1;
  --mono: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace;
}
* { box-sizing: border-box; }
html { scroll-padding-top: 1rem; }
body {
  margin: 0; color: var(--fg); background: var(--bg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    sans-serif;
}
header.top {
  background: #17324d; color: #fff; padding: 14px 28px;
  display: flex; align-items: baseline; gap: 24px; flex-wrap: wrap;
}
header.top h1 { font-size: 18px; margin: 0; font-weight: 600; }
header.top h1 span { font-weight: 400; opacity: .8; }
header.top nav a { color: #cfe3f7; text-decoration: none; margin-right: 16px; }
header.top nav a:hover { text-decoration: underline; }
main { padding: 8px 28px 40px; max-width: 1500px; }
h2 { font-size: 16px; margin: 28px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 8px; }
code, .mono, .tag { font-family: var(--mono); font-size: 13px; }
.tag { white-space: pre; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
  gap: 10px; margin: 12px 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 12px; }
.card b { display: block; font-size: 20px; font-weight: 600; }
.card span { color: var(--muted); font-size: 12px; }
.card.attributed b { color: var(--attributed); }
.card.unknown b { color: var(--unknown); }
.card.unconfirmed b { color: var(--unconfirmed); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.problems { background: var(--bad-bg); border: 1px solid #f3c2c2; color: var(--bad);
  border-radius: 6px; padding: 8px 14px; margin: 12px 0; }
.problems ul { margin: 4px 0 0; padding-left: 20px; }
details.drivers { margin-top: 8px; }
details summary { cursor: pointer; color: var(--accent); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr));
  gap: 18px; }
figure.chart { margin: 0; border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 12px; }
figure.chart figcaption { font-weight: 600; margin-bottom: 4px; }
svg.bars { width: 100%; height: auto; display: block; }
svg.bars text { font-size: 12px; fill: var(--fg); }
svg.bars text.lbl { font-family: var(--mono); }
svg.bars text.tick, svg.bars text.val { fill: var(--muted); font-size: 11px; }
svg.bars line.grid { stroke: var(--line); }
svg.bars .np { fill: var(--np); } svg.bars .pg { fill: var(--pg); }
svg.bars .other { fill: var(--other); }
svg.bars a text.lbl { fill: var(--accent); text-decoration: underline; }
.toolbar { display: flex; align-items: center; gap: 14px; margin: 8px 0; }
.toolbar input { font: inherit; padding: 5px 10px; width: 340px; max-width: 100%;
  border: 1px solid #b9c0ca; border-radius: 5px; }
.toolbar input:focus { outline: 2px solid #9cc3ea; border-color: var(--accent); }
.tablewrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: baseline; }
td.cands { min-width: 340px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
thead th { background: var(--panel); position: sticky; top: 0; z-index: 1;
  font-weight: 600; white-space: nowrap; }
thead th button { all: unset; cursor: pointer; }
thead th button:focus-visible { outline: 2px solid #9cc3ea; }
thead th button::after { content: " \\2195"; color: #a3abb7; }
thead th[aria-sort="ascending"] button::after { content: " \\25B2"; color: var(--accent); }
thead th[aria-sort="descending"] button::after { content: " \\25BC"; color: var(--accent); }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef5fc; }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px;
  font-weight: 600; }
.badge.attributed { color: var(--attributed); background: var(--attributed-bg); }
.badge.unknown { color: var(--unknown); background: var(--unknown-bg); }
.badge.known { color: var(--known); background: var(--known-bg); }
.badge.unconfirmed { color: var(--unconfirmed); background: var(--unconfirmed-bg);
  font-style: italic; }
.up { color: var(--bad); } .down { color: var(--attributed); }
ul.cands { list-style: none; margin: 0; padding: 0; }
ul.cands li + li { margin-top: 6px; }
ul.cands .api { white-space: nowrap; }
.conf { font-size: 11px; padding: 0 5px; border-radius: 3px; border: 1px solid var(--line); }
.conf.high { border-color: #8cc9a6; color: var(--attributed); }
.conf.low { color: var(--muted); }
.ev { color: var(--muted); font-size: 12px; }
section.tagpage { border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px;
  margin: 14px 0; }
section.tagpage:target { border-color: var(--accent); box-shadow: 0 0 0 3px #cfe3f7; }
section.tagpage h3 .tag { font-size: 16px; }
.tagindex { display: flex; flex-wrap: wrap; gap: 4px 12px; }
.samples table { width: auto; min-width: 520px; }
.samples { width: fit-content; max-width: 100%; max-height: 280px; overflow-y: auto; border: 1px solid var(--line);
  border-radius: 4px; margin: 8px 0; }
.samples table td, .samples table th { padding: 2px 9px; }
pre.hex { width: fit-content; max-width: 100%; background: var(--panel); border: 1px solid var(--line); border-radius: 4px;
  padding: 8px 10px; margin: 6px 0; font: 12px/1.4 var(--mono); overflow-x: auto; }
.back { font-size: 12px; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
"""

_JS = """
(function () {
  "use strict";
  var table = document.getElementById("tags");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var filter = document.getElementById("filter");
  var shown = document.getElementById("shown");
  rows.forEach(function (row, i) { row.dataset.index = String(i); });

  function value(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    return numeric ? Number(raw) : raw.toLowerCase();
  }

  function sortBy(th) {
    var col = heads.indexOf(th);
    var numeric = th.dataset.type === "num";
    var dir = th.getAttribute("aria-sort") === "descending" ? "ascending"
      : th.getAttribute("aria-sort") === "ascending" ? "descending"
      : (th.dataset.first || (numeric ? "descending" : "ascending"));
    var sign = dir === "ascending" ? 1 : -1;
    var keyed = rows.map(function (row) {
      return { row: row, key: value(row, col, numeric), index: Number(row.dataset.index) };
    });
    keyed.sort(function (a, b) {
      if (a.key < b.key) { return -sign; }
      if (a.key > b.key) { return sign; }
      return a.index - b.index;
    });
    heads.forEach(function (h) {
      if (h.hasAttribute("aria-sort")) { h.setAttribute("aria-sort", "none"); }
    });
    th.setAttribute("aria-sort", dir);
    keyed.forEach(function (k) { body.appendChild(k.row); });
  }

  heads.forEach(function (th) {
    var button = th.querySelector("button");
    if (button) { button.addEventListener("click", function () { sortBy(th); }); }
  });

  function applyFilter() {
    var q = filter.value.trim().toLowerCase();
    var n = 0;
    rows.forEach(function (row) {
      var hit = !q || row.dataset.filter.indexOf(q) !== -1;
      row.hidden = !hit;
      if (hit) { n += 1; }
    });
    shown.textContent = n + " of " + rows.length + " tags shown";
  }
  filter.addEventListener("input", applyFilter);
  applyFilter();
})();
"""


def _csp_hash(text: str) -> str:
    """The CSP source expression that allows exactly this inline block and nothing else."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (
    "default-src 'none'; "
    f"style-src {_csp_hash(_CSS)}; "
    f"script-src {_csp_hash(_JS)}; "
    "base-uri 'none'; form-action 'none'"
)


def _esc(value: Any) -> str:
    """Text safe in element content and in double-quoted attributes."""
    return html.escape(str(value), quote=True).translate(_CONTROLS)


def tag_anchor(tag: str) -> str:
    """The id of a tag's section: hex of its text, since tags may hold any character."""
    return "tag-" + tag.encode("utf-8", "surrogateescape").hex()


def has_page(row: ReportRow) -> bool:
    """Tags the analyst has to look into get a section; database-known tags do not.
    Unconfirmed tags get one too (they come last): their hex preview is how an analyst
    tells a real allocation from bytes that happened to look like a header."""
    return row.status in (ATTRIBUTED, UNKNOWN, UNCONFIRMED)


def human_bytes(n: float) -> str:
    """Binary units with one decimal, exact bytes below 1 KiB."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _int(n: int) -> str:
    return f"{n:,}"


def _signed(n: int) -> str:
    return f"{n:+,}"


def _nice_step(top: float, ticks: int = 4) -> float:
    """A 1-2-5 step giving about `ticks` gridlines up to `top`, so axis labels read well."""
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def axis(top: float, binary: bool) -> tuple[float, Callable[[float], str]]:
    """Gridline step and tick labeller for values up to `top`.

    Byte axes step in whole binary units (10 KiB, not 9.8 KiB) so ticks match the
    sizes printed on the bars; counts never step below one allocation.
    """
    units = [(1, "B"), (1024, "KiB"), (1024**2, "MiB"), (1024**3, "GiB")] if binary else [(1, "")]
    unit, name = units[0]
    for size, label in units:
        if top >= size:
            unit, name = size, label
    step = _nice_step(top / unit) * unit
    if unit == 1:
        step = max(step, 1.0)

    def tick(value: float) -> str:
        if value == 0:
            return "0"
        scaled = value / unit
        text = f"{scaled:,.0f}" if scaled == int(scaled) else f"{scaled:g}"
        return f"{text} {name}".rstrip()

    return step, tick


def _other_part(row: ReportRow, metric: str) -> int:
    """Live allocations of no known pool: the bar must still add up to the total."""
    c = row.counters
    if metric == "bytes":
        return max(0, row.bytes - c["nonpaged_bytes"] - c["paged_bytes"])
    return max(0, row.allocs - c["nonpaged_allocs"] - c["paged_allocs"])


def bar_chart(rows: Sequence[ReportRow], metric: str, title: str) -> str:
    """A horizontal stacked bar chart (nonpaged / paged / other) of the top tags as SVG."""
    total = (lambda r: r.bytes) if metric == "bytes" else (lambda r: r.allocs)
    fmt = human_bytes if metric == "bytes" else _int
    key = "bytes" if metric == "bytes" else "allocs"
    top = sorted((r for r in rows if total(r) > 0), key=lambda r: (-total(r), r.tag))[:CHART_TOP]
    caption = f'<figure class="chart"><figcaption>{_esc(title)}</figcaption>'
    if not top:
        return caption + '<p class="muted">No live allocations.</p></figure>'

    label_w = 16 + 8 * max(len(r.tag) for r in top)
    value_w, width, row_h, top_pad = 78, 640, 20, 44
    plot_w = width - label_w - value_w
    height = top_pad + row_h * len(top) + 8
    biggest = max(total(r) for r in top)
    step, tick = axis(biggest, binary=metric == "bytes")
    scale_top = step * math.ceil(biggest / step)
    scale = plot_w / scale_top
    show_other = any(_other_part(r, metric) for r in top)

    out = [
        caption,
        (
            f'<svg class="bars" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_esc(title)}" xmlns="http://www.w3.org/2000/svg">'
        ),
    ]
    legend = [("np", "nonpaged"), ("pg", "paged")] + ([("other", "other")] if show_other else [])
    x = label_w
    for cls, name in legend:
        out.append(f'<rect class="{cls}" x="{x}" y="4" width="12" height="12" rx="2"/>')
        out.append(f'<text x="{x + 17}" y="14">{name}</text>')
        x += 30 + 7 * len(name)
    ticks = round(scale_top / step)
    for i in range(ticks + 1):
        gx = label_w + i * step * scale
        out.append(
            f'<line class="grid" x1="{gx:.1f}" y1="{top_pad - 6}" x2="{gx:.1f}" y2="{height - 6}"/>'
        )
        out.append(
            f'<text class="tick" x="{gx:.1f}" y="{top_pad - 10}" text-anchor="middle">'
            f"{_esc(tick(i * step))}</text>"
        )
    for i, row in enumerate(top):
        y = top_pad + i * row_h
        c = row.counters
        parts = [
            ("np", c[f"nonpaged_{key}"], "nonpaged"),
            ("pg", c[f"paged_{key}"], "paged"),
            ("other", _other_part(row, metric), "other"),
        ]
        tip = f"{row.tag}: {fmt(total(row))} (" + ", ".join(
            f"{name} {fmt(v)}" for _, v, name in parts if v
        )
        tip += ")"
        big = c.get(f"big_{key}", 0)
        if big:  # big-pool allocations are in the pool parts; say how much of the bar
            tip += f"; big pool {fmt(big)}"
        out.append(f"<g><title>{_esc(tip)}</title>")
        label = (
            f'<text class="lbl" x="{label_w - 8}" y="{y + 14}" text-anchor="end">'
            f"{_esc(row.tag)}</text>"
        )
        if has_page(row):
            label = f'<a href="#{tag_anchor(row.tag)}">{label}</a>'
        out.append(label)
        x = float(label_w)
        for cls, v, _ in parts:
            if v:
                w = v * scale
                out.append(
                    f'<rect class="{cls}" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="14"/>'
                )
                x += w
        out.append(f'<text class="val" x="{x + 5:.1f}" y="{y + 14}">{_esc(fmt(total(row)))}</text>')
        out.append("</g>")
    out.append("</svg></figure>")
    return "".join(out)


def _summary(report: Report) -> str:
    m = report.meta
    counts = {
        s: sum(r.status == s for r in report.rows)
        for s in (ATTRIBUTED, UNKNOWN, KNOWN, UNCONFIRMED)
    }
    live_allocs = sum(r.allocs for r in report.rows)
    live_bytes = sum(r.bytes for r in report.rows)
    big_bytes = sum(r.counters.get("big_bytes", 0) for r in report.rows)
    cards = [
        ("", _int(len(report.rows)), "tags"),
        (ATTRIBUTED, _int(counts[ATTRIBUTED]), "attributed to a driver"),
        (UNKNOWN, _int(counts[UNKNOWN]), "unknown"),
        (KNOWN, _int(counts[KNOWN]), "in the tag database"),
        (UNCONFIRMED, _int(counts[UNCONFIRMED]), "unconfirmed (low confidence only)"),
        ("", _int(live_allocs), "live allocations"),
        ("", human_bytes(live_bytes), "in live allocations"),
        ("", human_bytes(big_bytes), "of them in big-pool allocations"),
        ("", _int(len(report.drivers)), "drivers analysed"),
    ]
    out = ['<section id="summary"><h2>Summary</h2><div class="cards">']
    for cls, value, label in cards:
        out.append(
            f'<div class="card {cls}" data-count="{_esc(label)}"><b>{_esc(value)}</b>'
            f"<span>{_esc(label)}</span></div>"
        )
    out.append("</div>")

    size = m.get("size")
    scanned = m.get("scanned_bytes")
    seconds = m.get("scan_seconds")
    layout = str(m.get("layout") or "?")
    if m.get("pooltype_encoding"):
        layout += f" (PoolType encoding {m['pooltype_encoding']})"
    prov = m.get("provenance") or {}
    facts: list[tuple[str, str, str]] = [
        ("Dump", "dump", f"<code>{_esc(m.get('dump', ''))}</code>"),
        ("Format", "format", _esc(m.get("format") or "?")),
        ("Architecture", "architecture", _esc(m.get("architecture") or "unknown")),
        ("Layout", "layout", _esc(layout)),
        (
            "File size",
            "size",
            f"{_esc(human_bytes(size))} ({_esc(_int(size))} bytes)" if size is not None else "?",
        ),
        ("SHA-256", "sha256", f'<code id="sha256">{_esc(m.get("sha256", ""))}</code>'),
        (
            "Scan",
            "scan",
            (f"{seconds:.2f} s" if isinstance(seconds, (int, float)) else "?")
            + (f", {_esc(human_bytes(scanned))} scanned" if scanned is not None else ""),
        ),
    ]
    if prov:
        facts.append(
            (
                "Produced by",
                "provenance",
                (
                    f"pooltagscan {_esc(prov.get('version', '?'))} at "
                    f"{_esc(prov.get('time_utc', '?'))} UTC: "
                    f"<code>{_esc(prov.get('command_line', ''))}</code>"
                ),
            )
        )
    if m.get("evidence"):
        ev = ", ".join(f"{k} {v}" for k, v in m["evidence"].items())
        facts.append(("Layout evidence", "evidence", _esc(ev)))
    if m.get("format_details"):
        det = ", ".join(f"{k} {v}" for k, v in m["format_details"].items())
        facts.append(("Format details", "format-details", _esc(det)))
    if m.get("baseline"):
        facts.append(("Baseline", "baseline", f"<code>{_esc(m['baseline'])}</code>"))
    out.append('<dl class="facts">')
    for label, key, value in facts:
        out.append(f'<dt>{label}</dt><dd data-fact="{key}">{value}</dd>')
    out.append("</dl>")

    if report.problems:
        out.append(
            f'<div class="problems" id="problems"><b>{len(report.problems)} problem(s)</b><ul>'
        )
        out += [f"<li>{_esc(p)}</li>" for p in report.problems]
        out.append("</ul></div>")
    if report.drivers:
        out.append(
            f'<details class="drivers"><summary>{len(report.drivers)} driver(s) analysed'
            '</summary><div class="tablewrap"><table><thead><tr><th>Driver</th><th>Arch</th>'
            '<th class="num">Tags</th><th>Path</th></tr></thead><tbody>'
        )
        for d in report.drivers:
            out.append(
                f"<tr><td>{_esc(d.get('driver', ''))}</td><td>{_esc(d.get('arch', ''))}</td>"
                f'<td class="num">{len(d.get("tags", []))}</td>'
                f"<td><code>{_esc(d.get('path', ''))}</code></td></tr>"
            )
        out.append("</tbody></table></div></details>")
    if report.hidden is not None:
        out.append(_hidden(report.hidden))
    out.append("</section>")
    return "".join(out)


def _hidden(hidden: dict[str, list[dict[str, Any]]]) -> str:
    """report --objects: processes and drivers found only in freed or unlinked blocks."""
    rows = []
    for kind, label in (("processes", "process"), ("drivers", "driver")):
        for row in hidden[kind]:
            ident = row.get("pid") if kind == "processes" else row.get("image_base")
            ident_text = (
                "" if ident is None else (str(ident) if kind == "processes" else hex(ident))
            )
            rows.append(
                f"<tr><td>{label}</td><td><code>{_esc(row.get('name', ''))}</code></td>"
                f"<td>{_esc(ident_text)}</td><td>{_esc(', '.join(row['found_in']))}</td>"
                f"<td><code>{_esc(', '.join(hex(o) for o in row['offsets']))}</code></td></tr>"
            )
    body = "".join(rows) or '<tr><td colspan="5">none</td></tr>'
    return (
        '<details class="drivers" id="hidden-objects" open><summary>Processes and drivers '
        f"found only in freed or unlinked blocks ({len(rows)})</summary>"
        '<div class="tablewrap"><table><thead><tr><th>Object</th><th>Name</th>'
        "<th>PID / image base</th><th>Found in</th><th>Blocks</th></tr></thead>"
        f"<tbody>{body}</tbody></table></div></details>"
    )


def _candidates(cands: Iterable[Candidate]) -> str:
    items = [
        f"<li><b>{_esc(c.driver)}</b> "
        f'<span class="conf {_esc(c.confidence)}">{_esc(c.confidence)}</span>'
        f'<div class="ev"><code class="api">{_esc(c.api)}</code> · {_esc(c.evidence)}</div></li>'
        for c in cands
    ]
    return f'<ul class="cands">{"".join(items)}</ul>' if items else ""


def filter_text(row: ReportRow) -> str:
    """What the filter box searches: the words an analyst types, not the numbers."""
    words = [row.tag, row.status, row.owner, row.description]
    for c in row.candidates:
        words += [c.driver, c.path, c.api, c.evidence]
    return "\n".join(words).lower()


def _text_cell(text: str) -> str:
    """A cell that shows a dash when empty but sorts as empty."""
    if not text:
        return '<td data-sort=""><span class="muted">—</span></td>'
    return f"<td>{_esc(text)}</td>"


def _table(report: Report) -> str:
    growth = any(r.growth_allocs is not None for r in report.rows)
    # (label, css class, data-type, data-first)
    heads: list[tuple[str, str, str, str]] = [
        ("Tag", "", "text", ""),
        ("Status", "", "num", "ascending"),
        ("Allocs", "num", "num", ""),
        ("Bytes", "num", "num", ""),
        ("Nonpaged", "num", "num", ""),
        ("Paged", "num", "num", ""),
        ("Free", "num", "num", ""),
        ("Big bytes", "num", "num", ""),
    ]
    if growth:
        heads += [("Growth allocs", "num", "num", ""), ("Growth bytes", "num", "num", "")]
    heads += [
        ("Owner", "", "text", ""),
        ("Description", "", "text", ""),
        ("Candidate drivers", "", "text", ""),
    ]
    out = [
        (
            '<section id="table"><h2>Attribution</h2><div class="toolbar">'
            '<input id="filter" type="search" placeholder="Filter by tag, status, owner, driver…" '
            'aria-label="Filter tags" autocomplete="off">'
            '<span id="shown" class="muted"></span></div>'
            '<div class="tablewrap"><table id="tags"><thead><tr>'
        )
    ]
    for label, cls, kind, first in heads:
        attrs = f' class="{cls}"' if cls else ""
        attrs += f' data-type="{kind}" aria-sort="none"'
        attrs += f' data-first="{first}"' if first else ""
        out.append(f'<th{attrs}><button type="button">{label}</button></th>')
    out.append("</tr></thead><tbody>")
    for r in report.rows:
        c = r.counters
        big = c.get("big_bytes", 0)
        tag = f'<span class="tag">{_esc(r.tag)}</span>'
        if has_page(r):
            tag = f'<a href="#{tag_anchor(r.tag)}">{tag}</a>'
        cells = [
            f'<td data-sort="{_esc(r.tag)}">{tag}</td>',
            (
                f'<td data-sort="{STATUS_ORDER.get(r.status, 9)}">'
                f'<span class="badge {_esc(r.status)}">{_esc(r.status)}</span></td>'
            ),
            f'<td class="num" data-sort="{r.allocs}">{_int(r.allocs)}</td>',
            f'<td class="num" data-sort="{r.bytes}">{_int(r.bytes)}</td>',
            f'<td class="num" data-sort="{c["nonpaged_allocs"]}">{_int(c["nonpaged_allocs"])}</td>',
            f'<td class="num" data-sort="{c["paged_allocs"]}">{_int(c["paged_allocs"])}</td>',
            f'<td class="num" data-sort="{c["free_allocs"]}">{_int(c["free_allocs"])}</td>',
            f'<td class="num" data-sort="{big}">{_int(big)}</td>',
        ]
        if growth:
            for v in (r.growth_allocs, r.growth_bytes):
                if v is None:
                    cells.append('<td class="num" data-sort="0"></td>')
                else:
                    cls = "num up" if v > 0 else "num down" if v < 0 else "num"
                    cells.append(f'<td class="{cls}" data-sort="{v}">{_signed(v)}</td>')
        cells += [
            _text_cell(r.owner),
            _text_cell(r.description),
            f'<td class="cands">{_candidates(r.candidates)}</td>',
        ]
        out.append(
            f'<tr data-tag="{_esc(r.tag)}" data-filter="{_esc(filter_text(r))}">'
            + "".join(cells)
            + "</tr>"
        )
    out.append("</tbody></table></div></section>")
    return "".join(out)


def hex_dump(address: int, data: bytes, width: int = HEX_WIDTH) -> str:
    """`xxd`-style lines: address, hex bytes in two groups of eight, printable ASCII."""
    lines = []
    for start in range(0, len(data), width):
        chunk = data[start : start + width]
        cells = [f"{b:02x}" for b in chunk] + ["  "] * (width - len(chunk))
        half = width // 2
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(
            f"{address + start:012x}  {' '.join(cells[:half])}  {' '.join(cells[half:])}  {text}"
        )
    return "\n".join(lines)


def _samples(row: ReportRow) -> str:
    samples: list[Sample] = row.samples
    total = row.counters.get("total_allocs", len(samples))
    if not samples:
        return '<p class="muted">No allocation addresses were kept for this tag.</p>'
    shown = f"{len(samples)} of {_int(total)}" if total > len(samples) else f"all {len(samples)}"
    out = [
        (
            f"<h4>Allocations ({shown})</h4>"
            '<div class="samples"><table><thead><tr><th class="num">Address</th>'
            '<th class="num">Size</th><th>Pool</th><th>State</th><th>Confidence</th>'
            "</tr></thead><tbody>"
        )
    ]
    for s in samples:
        where = f"0x{s.offset:x}"
        if s.entry is not None:  # virtual address, from the big-page table entry at...
            where += f' <span class="muted">(big pool, entry 0x{s.entry:x})</span>'
        out.append(
            f'<tr><td class="num mono">{where}</td><td class="num">{s.size}</td>'
            f"<td>{_esc(s.pool)}</td><td>{_esc(s.state)}</td><td>{_esc(s.confidence)}</td></tr>"
        )
    out.append("</tbody></table></div>")
    previews = [s for s in samples if s.preview]
    if previews:
        out.append("<h4>First bytes</h4>")
        for s in previews:
            out.append(
                f'<div class="muted mono">0x{s.offset:x}, {s.size} bytes, {_esc(s.pool)}, '
                f'{_esc(s.state)}</div><pre class="hex">{_esc(hex_dump(s.offset, s.preview))}</pre>'
            )
    return "".join(out)


def _tag_pages(report: Report) -> str:
    rows = [r for r in report.rows if has_page(r)]
    out = ['<section id="tagpages"><h2>Tags to investigate</h2>']
    if not rows:
        out.append('<p class="muted">Every tag in this dump is in the tag database.</p>')
        return "".join(out) + "</section>"
    out.append('<div class="tagindex">')
    out += [f'<a href="#{tag_anchor(r.tag)}" class="tag">{_esc(r.tag)}</a>' for r in rows]
    out.append("</div>")
    for r in rows:
        c = r.counters
        out.append(
            f'<section class="tagpage" id="{tag_anchor(r.tag)}" data-tag="{_esc(r.tag)}">'
            f'<h3><span class="tag">{_esc(r.tag)}</span> '
            f'<span class="badge {_esc(r.status)}">{_esc(r.status)}</span></h3>'
            f"<p>{_int(r.allocs)} live allocations, {_esc(human_bytes(r.bytes))} "
            f"({_int(c['nonpaged_allocs'])} nonpaged, {_int(c['paged_allocs'])} paged), "
            f"{_int(c['free_allocs'])} free"
        )
        if c.get("big_allocs", 0):
            out.append(
                f"; {_int(c.get('small_allocs', 0))} small "
                f"({_esc(human_bytes(c.get('small_bytes', 0)))}) and {_int(c['big_allocs'])} "
                f"big-pool ({_esc(human_bytes(c.get('big_bytes', 0)))}) live allocations"
            )
        if r.growth_allocs is not None:
            out.append(
                f"; growth {_signed(r.growth_allocs)} allocations, "
                f"{_signed(r.growth_bytes or 0)} bytes"
            )
        out.append("</p>")
        if r.owner or r.description:
            out.append(f"<p>{_esc(' '.join(filter(None, (r.owner, r.description))))}</p>")
        if r.candidates:
            out.append(
                '<h4>Candidate drivers</h4><div class="tablewrap"><table><thead><tr>'
                '<th>Driver</th><th>Arch</th><th>API</th><th class="num">Call site</th>'
                "<th>Confidence</th><th>Evidence</th><th>Path</th></tr></thead><tbody>"
            )
            for cand in r.candidates:
                out.append(
                    f"<tr><td><b>{_esc(cand.driver)}</b></td><td>{_esc(cand.arch)}</td>"
                    f"<td><code>{_esc(cand.api)}</code></td>"
                    f'<td class="num mono">+0x{cand.site:x}</td>'
                    f'<td><span class="conf {_esc(cand.confidence)}">{_esc(cand.confidence)}'
                    f"</span></td><td>{_esc(cand.evidence)}</td>"
                    f"<td><code>{_esc(cand.path)}</code></td></tr>"
                )
            out.append("</tbody></table></div>")
        out.append(_samples(r))
        out.append('<p class="back"><a href="#table">↑ back to the table</a></p></section>')
    out.append("</section>")
    return "".join(out)


def render_html(report: Report) -> str:
    """The whole document as a string."""
    dump = str(report.meta.get("dump", ""))
    name = os.path.basename(dump) or dump
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="pooltagscan">',
        f"<title>pooltagscan report: {_esc(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        '<header class="top"><h1>pooltagscan report <span>',
        _esc(name),
        "</span></h1><nav>",
        '<a href="#summary">Summary</a><a href="#charts">Charts</a>',
        '<a href="#table">Attribution</a><a href="#tagpages">Tags to investigate</a>',
        "</nav></header><main>",
        _summary(report),
        '<section id="charts"><h2>Top tags</h2><div class="charts">',
        bar_chart(report.rows, "bytes", f"Top {CHART_TOP} tags by bytes (live allocations)"),
        bar_chart(report.rows, "allocs", f"Top {CHART_TOP} tags by allocation count"),
        "</div></section>",
        _table(report),
        _tag_pages(report),
        (
            "<footer>Generated by pooltagscan. Sizes include the pool header; live = allocated "
            "or state unknown; big bytes = live bytes of big-pool allocations (from the "
            "big-page table), a part of the live bytes; unconfirmed = no database or driver "
            "explains the tag and all its records are of low confidence. Every value from "
            "the dump and the drivers is shown as found.</footer>"
        ),
        f"</main><script>{_JS}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_html(report: Report, out: TextIO) -> None:
    """Write the self-contained HTML report of `report` to `out`."""
    out.write(render_html(report))
