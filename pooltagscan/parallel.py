"""How many workers to use: scan threads for a dump, processes for a driver batch."""

from __future__ import annotations

import os


def default_jobs() -> int:
    """All the cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
