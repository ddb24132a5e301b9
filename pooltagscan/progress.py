"""A progress bar on stderr for long scans; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable as `(done, total)`; appears only after `delay` seconds so short scans stay quiet."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        delay: float = 1.0,
        enabled: bool | None = None,
    ):
        self.stream = stream or sys.stderr
        self.label = label
        self.delay = delay
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        if elapsed < self.delay and done < total:
            return
        if not self.shown and done >= total:
            return  # finished before the bar was due
        frac = done / total if total else 1.0
        width = 30
        fill = int(frac * width)
        rate = done / elapsed / 1e6 if elapsed > 0 else 0.0
        eta = (total - done) / (done / elapsed) if done and elapsed > 0 else 0.0
        self.stream.write(
            f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] "
            f"{frac:4.0%} {rate:6.0f} MB/s ETA {eta:4.0f}s "
        )
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False
