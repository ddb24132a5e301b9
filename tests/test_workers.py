"""The worker pool: order, errors that come back as themselves, dead workers, early stops."""

from __future__ import annotations

import os
import pickle
import signal
import time

import pytest

from pooltagscan.errors import InputError, OutputError
from pooltagscan.workers import Background, WorkerError, ordered_map


def square(x: int) -> int:
    if x == 3:
        time.sleep(0.05)  # finishes after its successors: order must still hold
    return x * x


def fail_on_five(x: int) -> int:
    if x == 5:
        raise InputError(f"dump{x}.raw", "the file shrank during the scan")
    return x


class Unpicklable(Exception):
    def __init__(self, handle):
        super().__init__("cannot travel")
        self.handle = handle

    def __reduce__(self):
        raise TypeError("no")


def fail_unpicklable(x: int) -> int:
    raise Unpicklable(lambda: None)


def die(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def pid_of(_: int) -> int:
    time.sleep(0.2)
    return os.getpid()


def test_errors_pickle_as_themselves():
    for exc in (InputError("a.raw", "b"), InputError(None, "c"), OutputError("x", "y")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert back.__reduce__() == exc.__reduce__()


def test_results_come_in_input_order():
    assert list(ordered_map(square, range(20), 2)) == [x * x for x in range(20)]


def test_worker_error_is_raised_as_itself_after_earlier_results():
    results = ordered_map(fail_on_five, range(10), 2)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(InputError) as caught:
        next(results)
    assert caught.value.path == "dump5.raw" and "shrank" in caught.value.problem


def test_unpicklable_error_becomes_worker_error():
    with pytest.raises(WorkerError, match="Unpicklable: cannot travel"):
        list(ordered_map(fail_unpicklable, range(3), 2))


def test_dead_worker_is_reported_not_waited_for():
    start = time.monotonic()
    with pytest.raises(WorkerError, match="was killed by SIGKILL"):
        list(ordered_map(die, range(6), 2))
    assert time.monotonic() - start < 10


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_stopping_early_kills_the_workers():
    results = ordered_map(pid_of, range(50), 2)
    pids = {next(results), next(results)}  # tasks 0 and 1 ran side by side
    assert len(pids) == 2
    results.close()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    assert os.getpid() not in pids


def slow_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_background_result_error_death_and_cancel():
    job = Background.start(square, 7)
    assert job.result() == 49 and job.result() == 49
    job.cancel()  # after the result: nothing left to stop, no error
    with pytest.raises(InputError, match="shrank"):
        Background.start(fail_on_five, 5).result()
    with pytest.raises(WorkerError, match="was killed by SIGKILL"):
        Background.start(die, 2).result()
    job = Background.start(slow_pid, 30)
    pid = job._worker.process.pid
    assert _alive(pid) and pid != os.getpid()
    start = time.monotonic()
    job.cancel()
    assert time.monotonic() - start < 2 and not _alive(pid)


def test_record_views_scan_with_jobs_threads_filtered_or_not(tmp_path, monkeypatch):
    """The record views scan with --jobs threads, beside the join of the lines (C,
    without the GIL), whatever the filter."""
    from pooltagscan.filters import RecordFilter
    from pooltagscan.inputs import open_image
    from pooltagscan.scan import prepare
    from pooltagscan.scanner import engine
    from pooltagscan.summary import ScanSummary, collect_records

    dump = tmp_path / "zeros.raw"
    with open(dump, "wb") as f:
        f.truncate(256 << 20)  # over engine.PARALLEL_MIN_BYTES
    pools = []
    real = engine.ordered_thread_map
    monkeypatch.setattr(
        engine, "ordered_thread_map", lambda *a, **k: pools.append(a[2]) or real(*a, **k)
    )
    prepared = prepare(open_image(dump), "x64")
    for record_filter, expected in ((None, [2]), (RecordFilter.from_names(["Pro*"]), [2])):
        pools.clear()
        summary = ScanSummary(prepared.image.scanned_bytes)
        assert sum(b.size for b in collect_records(prepared, summary, record_filter, 2)) == 0
        assert pools == expected


def _scan_as_a_daemon(queue) -> None:
    import contextlib
    import hashlib
    import io
    import json
    from pathlib import Path

    from pooltagscan import cli

    sample = Path(__file__).resolve().parent.parent / "samples" / "dumps" / "win7-x64.raw"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["scan", str(sample), "--stats", "--format", "json", "-q"])
    digest = json.loads(out.getvalue())["provenance"]["inputs"][0]["sha256"] if code == 0 else None
    queue.put((code, digest == hashlib.sha256(sample.read_bytes()).hexdigest()))


def test_a_daemonic_caller_gets_its_work_done_in_process():
    """A multiprocessing worker (daemonic: it may not have children) that calls us as a
    library: the provenance hash runs in a thread instead of a process, not an error."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=_scan_as_a_daemon, args=(queue,), daemon=True)
    process.start()
    assert queue.get(timeout=60) == (0, True)
    process.join(10)
