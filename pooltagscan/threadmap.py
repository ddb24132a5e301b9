"""An ordered map over threads, for work that runs in C without the GIL.

A window's scan is almost all C code that releases the GIL (the page walk, the --stats
counters, the mapping's page population), so threads scale it the way processes do,
without what processes cost on a dump of a GiB: a fork of a process of 140 MiB,
copy-on-write faults in both processes, a cold heap in the worker, results pickled
through a pipe. Measured on the 1 GiB benchmark dumps, `--stats` with two threads took
66-73 ms where two processes took 72-78 ms.

Threads cannot be killed: a stopped map lets each thread finish the item in hand (a
window is a few milliseconds) and start no other, so Ctrl-C still ends a run at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pooltagscan import interrupts

T = TypeVar("T")
R = TypeVar("R")

_WAIT_SECONDS = 0.25  # a waiting consumer still sees Ctrl-C (and interrupts.check)
_JOIN_SECONDS = 0.5


def ordered_thread_map(
    func: Callable[[T], R], items: Iterable[T], threads: int, ahead: int | None = None
) -> Iterator[R]:
    """`func(item)` for every item, computed by `threads` threads, in input order.

    At most `ahead` results (default: two per thread) are computed beyond the one the
    consumer waits for, so memory stays bounded however slow the consumer is. An
    exception is raised in its turn, as a serial map would raise it. Closing the
    iterator early stops the threads after the items they hold.
    """
    tasks = list(items)
    if not tasks:
        return
    threads = max(1, min(threads, len(tasks)))
    ahead = max(threads, ahead or 2 * threads)
    cond = threading.Condition()
    results: dict[int, tuple[bool, Any]] = {}
    state = {"next": 0, "out": 0, "stop": False}

    def work() -> None:
        while True:
            with cond:
                while not state["stop"] and state["next"] >= state["out"] + ahead:
                    cond.wait()
                index = state["next"]
                if state["stop"] or index >= len(tasks):
                    return
                state["next"] = index + 1
            try:
                outcome = (True, func(tasks[index]))
            except BaseException as exc:  # noqa: BLE001 - raised in the consumer, in turn
                outcome = (False, exc)
            with cond:
                results[index] = outcome
                cond.notify_all()
                if not outcome[0]:
                    return

    pool = [
        threading.Thread(target=work, name=f"pooltagscan-scan-{i}", daemon=True)
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    try:
        for index in range(len(tasks)):
            with cond:
                while index not in results:
                    cond.wait(_WAIT_SECONDS)
                    interrupts.check()
                ok, value = results.pop(index)
                state["out"] = index + 1
                cond.notify_all()
            if not ok:
                raise value
            yield value
    finally:
        with cond:
            state["stop"] = True
            results.clear()
            cond.notify_all()
        # Let the items in hand finish before the caller closes what they read (a
        # window takes milliseconds); a stalled read is not waited for past the budget.
        deadline = time.monotonic() + _JOIN_SECONDS
        for thread in pool:
            thread.join(max(0.0, deadline - time.monotonic()))
