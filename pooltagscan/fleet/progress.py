"""Progress of `fleet scan` on a terminal: the whole run, and the dumps in flight.

A fleet run scans many dumps at once, so one overall bar says little about which host
is slow; the line adds each dump in flight with its fraction done, as many as fit the
terminal, and how many more. Like `progress.ProgressBar` (same bar, rate and ETA), it
writes to stderr only when stderr is a terminal, only after a delay (short runs stay
quiet), and redraws one line in place; `render` is a pure function of its inputs so
that the exact text can be tested with a fake clock.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 20
NAME_WIDTH = 24


def _name(path: str) -> str:
    """A dump's file name, cut to NAME_WIDTH (its end kept: host names differ there)."""
    name = os.path.basename(path) or path
    return name if len(name) <= NAME_WIDTH else "…" + name[-(NAME_WIDTH - 1) :]


def render(
    label: str,
    done: int,
    total: int,
    elapsed: float,
    flight: list[tuple[str, int, int]],
    width: int,
) -> str:
    """One line of at most `width - 1` characters: the overall bar, rate and ETA, then
    `name NN%` for each dump in flight (in the order given) while they fit, then
    `+N more` for those that do not."""
    frac = min(done / total, 1.0) if total else 0.0
    fill = int(frac * BAR_WIDTH)
    rate = done / elapsed / 1e6 if elapsed > 0 else 0.0
    eta = (total - done) / (done / elapsed) if done and elapsed > 0 else 0.0
    head = (
        f"{label} [{'#' * fill}{'.' * (BAR_WIDTH - fill)}] {frac:4.0%} "
        f"{rate:6.0f} MB/s ETA {eta:4.0f}s"
    )
    room = width - 1
    if not flight:
        return head[:room].rstrip()
    parts = [f"{_name(path)} {min(d / t, 1.0) if t else 0.0:.0%}" for path, d, t in flight]
    line = head + " |"
    for i, part in enumerate(parts):
        rest = len(parts) - i - 1
        more = f" +{rest} more" if rest else ""
        if len(line) + 1 + len(part) + len(more) > room:
            line += f" +{len(parts) - i} more"
            break
        line += " " + part
    return line[:room].rstrip()


class FleetProgress:
    """Callable as `(done, total)` for the run; `dump(path, done, total)` for a dump in
    flight and `forget(path)` when it is done (ok or failed). Silent unless enabled
    (default: stderr is a terminal) and `delay` seconds have passed."""

    def __init__(
        self,
        label: str = "fleet scan",
        stream: TextIO | None = None,
        delay: float = 1.0,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ):
        self.stream = stream or sys.stderr
        self.label = label
        self.delay = delay
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.clock = clock
        self.width = width
        self.start = clock()
        self.shown = False
        self.done = 0
        self.total = 0
        self.flight: dict[str, tuple[int, int]] = {}  # in the order the dumps started

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self._draw()

    def dump(self, path: str, done: int, total: int) -> None:
        """Record a dump's progress; drawn with the run's next `(done, total)`, which the
        runner reports after every task (drawing here would show a stale total)."""
        self.flight[path] = (done, total)

    def forget(self, path: str) -> None:
        self.flight.pop(path, None)

    def _draw(self) -> None:
        if not self.enabled:
            return
        elapsed = self.clock() - self.start
        if elapsed < self.delay:
            return
        width = self.width or shutil.get_terminal_size((100, 24)).columns
        flight = [(path, d, t) for path, (d, t) in self.flight.items()]
        line = render(self.label, self.done, self.total, elapsed, flight, width)
        # Padded to the width so a shorter line leaves nothing of the longer one before.
        self.stream.write("\r" + line.ljust(width - 1))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """End the line (before another line is written, and at the end)."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False
