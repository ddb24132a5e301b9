"""A Ctrl-C that a finalizer swallowed still stops the run.

Python raises KeyboardInterrupt wherever the main thread happens to be. When that is a
`__del__` or a weakref callback (distributed's `Future.__del__` runs often during a fleet
scan), the exception is printed as "Exception ignored" and lost: the run went on to the
end and exited 0. CI saw exactly that. The CLI installs `catching()`: its handler
remembers the request before raising, the long loops call `check()` between steps, and
the swallowed exception is kept off stderr (it is no traceback of ours to show).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

_requested = False


def requested() -> bool:
    """True once Ctrl-C reached this process while `catching()` was in force."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came and was swallowed on its way up."""
    if _requested:
        raise KeyboardInterrupt


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _quiet_unraisable(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        if _requested and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # our Ctrl-C, lost in a finalizer: `check()` raises it again
        previous(unraisable)

    return hook


@contextlib.contextmanager
def catching() -> Iterator[None]:
    """Remember Ctrl-C for `check()` for the duration; a no-op off the main thread or
    when the caller already handles SIGINT its own way (then nothing it recorded is
    touched either)."""
    global _requested
    previous = None
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                previous = signal.signal(signal.SIGINT, _on_sigint)
        except (ValueError, OSError):
            previous = None
    if previous is None:
        yield
        return
    _requested = False
    previous_hook = sys.unraisablehook
    hook = sys.unraisablehook = _quiet_unraisable(previous_hook)
    try:
        yield
    finally:
        _requested = False
        if sys.unraisablehook is hook:  # not if someone put their own since
            sys.unraisablehook = previous_hook
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGINT, previous)
