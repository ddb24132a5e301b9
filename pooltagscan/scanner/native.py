"""The C page filters of the table search (_tables.c), when they were built.

`pip install` compiles them where a C compiler is at hand; elsewhere the numpy twins in
bigpages.py and tracker.py run instead, slower and with the same results.
POOLTAGSCAN_NO_NATIVE=1 makes the numpy code run anyway (the tests compare the two).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("POOLTAGSCAN_NO_NATIVE") or sys.byteorder != "little":
        return None
    try:
        from pooltagscan.scanner import _tables
    except ImportError:
        return None
    return _tables


native = _load()
