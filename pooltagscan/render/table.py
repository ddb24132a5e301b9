"""Plain aligned text tables, the default view of every command."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    right: Sequence[bool] | None = None,
    max_width: dict[int, int] | None = None,
) -> str:
    """Columns sized to their widest cell; `right` marks numeric columns."""
    cells = [[str(c) for c in row] for row in rows]
    max_width = max_width or {}
    for row in cells:
        for i, limit in max_width.items():
            if len(row[i]) > limit:
                row[i] = row[i][: limit - 1] + "…"
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    right = right or [False] * len(headers)

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)
