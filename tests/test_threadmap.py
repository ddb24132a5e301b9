"""The ordered thread map behind parallel scans: input order, errors in their turn, a
bounded number of results ahead of the consumer, and threads that stop when it does."""

from __future__ import annotations

import threading
import time

import pytest

from pooltagscan.threadmap import ordered_thread_map


def test_results_come_in_input_order():
    def slow_first(i: int) -> int:
        time.sleep(0.02 if i % 3 == 0 else 0)
        return i * i

    assert list(ordered_thread_map(slow_first, range(40), 3)) == [i * i for i in range(40)]


def test_an_error_is_raised_after_the_earlier_results():
    def fails_at_five(i: int) -> int:
        if i == 5:
            raise ValueError("item 5")
        return i

    got = []
    with pytest.raises(ValueError, match="item 5"):
        got.extend(ordered_thread_map(fails_at_five, range(20), 2))
    assert got == [0, 1, 2, 3, 4]


def test_no_more_than_ahead_results_wait_for_the_consumer():
    started: list[int] = []
    lock = threading.Lock()

    def note(i: int) -> int:
        with lock:
            started.append(i)
        return i

    results = ordered_thread_map(note, range(100), 2, ahead=3)
    assert next(results) == 0
    # Item 0 is handed out: items 1, 2 and 3 may be computed ahead of the consumer, no
    # further. Wait until the threads got that far, then a while more.
    deadline = time.monotonic() + 5
    while len(started) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    with lock:
        assert sorted(started) == [0, 1, 2, 3]
    results.close()


def scan_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pooltagscan-scan-")]


def test_stopping_early_stops_the_threads():
    results = ordered_thread_map(lambda i: time.sleep(0.005) or i, range(10_000), 2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    assert len(scan_threads()) == 2
    results.close()
    assert scan_threads() == []


def test_empty_input_starts_nothing():
    assert list(ordered_thread_map(lambda i: i, [], 4)) == []
    assert scan_threads() == []
