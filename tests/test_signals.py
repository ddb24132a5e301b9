"""One Ctrl-C ends a parallel run within 2 s: exit 130, one line, no traceback, no worker
left behind. Twenty times each, for a dump scan and a driver batch with --jobs 2.

The signal goes to the whole process group, as a terminal sends it, at a random moment
after the workers have started.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

REPETITIONS = 20
DRIVERS = REPO / "samples" / "drivers"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads process trees from /proc"
)


def children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(c) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def threads(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("Threads:")).split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0


# numpy's BLAS starts no threads of its own then: the threads counted are the scan's.
ONE_BLAS_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _started(pid: int, kids: set[int], workers: int, scan_threads: int) -> bool:
    if scan_threads:
        return threads(pid) > scan_threads
    return len(kids) >= workers


def interrupt_runs(command: list[str], workers: int = 2, scan_threads: int = 0) -> None:
    """`workers` child processes, or `scan_threads` threads beside the main one, are
    running when the signal is sent."""
    rng = random.Random(20)
    for repetition in range(REPETITIONS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pooltagscan", *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, like a terminal's job
            cwd=REPO,
            env=ONE_BLAS_THREAD,
        )
        deadline = time.monotonic() + 60
        kids: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            kids = children(proc.pid)
            if _started(proc.pid, kids, workers, scan_threads):
                break
            time.sleep(0.01)
        assert _started(proc.pid, kids, workers, scan_threads), f"run {repetition}: not started"
        time.sleep(rng.uniform(0, 0.3))
        kids |= children(proc.pid)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        elapsed = time.monotonic() - sent
        err = proc.stderr.read().decode()
        assert code == 130, (repetition, code, err)
        assert elapsed < 2, (repetition, elapsed)
        assert err.strip().splitlines() == ["pooltagscan: error: interrupted"], err
        gone_by = time.monotonic() + 2
        while any(alive(k) for k in kids) and time.monotonic() < gone_by:
            time.sleep(0.02)
        assert not any(alive(k) for k in kids), f"run {repetition}: a worker outlived its parent"


def test_ctrl_c_ends_a_parallel_scan(tmp_path: Path):
    dump = tmp_path / "big.raw"
    with open(dump, "wb") as f:
        f.truncate(64 << 30)  # sparse: 64 GiB of zeros cost no disk, and take seconds to scan
    # --jobs 3: three scan threads
    command = ["scan", str(dump), "--stats", "--layout", "x64", "--jobs", "3", "-q"]
    interrupt_runs(command, workers=0, scan_threads=3)


def test_ctrl_c_ends_a_parallel_driver_batch(tmp_path: Path):
    folder = tmp_path / "drivers"
    folder.mkdir()
    names = ("pooltags_x64.sys", "pooltags_x86.sys", "multiapi_x64.sys", "multiapi_x86.sys")
    for i in range(1200):
        shutil.copyfile(DRIVERS / names[i % 4], folder / f"{i:04d}-{names[i % 4]}")
    interrupt_runs(["drivers", str(folder), "--jobs", "2", "-q"])


class _Swallows:
    """A finalizer that is running when Ctrl-C arrives, as distributed's
    `Future.__del__` was in CI: Python prints the KeyboardInterrupt as "Exception
    ignored" and goes on."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_again(capfd, monkeypatch):
    from pooltagscan import interrupts

    # Python's own hook, which prints "Exception ignored" (pytest puts its own in place).
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    with interrupts.catching():
        _Swallows()  # collected at once: the interrupt lands in its __del__
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert not interrupts.requested()
    interrupts.check()  # over with the run: nothing pending for the next one
    assert sys.unraisablehook is sys.__unraisablehook__
    assert "Exception ignored" not in capfd.readouterr().err
    _Swallows()  # without catching(): Python's hook prints it (so the check above can fail)
    assert "Exception ignored" in capfd.readouterr().err


def test_the_cli_exits_130_when_the_interrupt_was_swallowed(monkeypatch, capfd, tmp_path):
    """The command returned normally, but a Ctrl-C came during it: exit 130, one line,
    and no output is put in place."""
    from pooltagscan import cli
    from pooltagscan.commands import scan

    def swallowing(args, outputs):
        _Swallows()
        return cli.EXIT_OK

    monkeypatch.setattr(scan, "run_command", swallowing)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    sample = REPO / "samples" / "dumps" / "win10-1809-x64.raw"
    out = tmp_path / "stats.txt"
    status = cli.main(["scan", str(sample), "-o", str(out)])
    assert status == cli.EXIT_INTERRUPTED
    assert not out.exists()
    assert capfd.readouterr().err.strip().splitlines() == ["pooltagscan: error: interrupted"]
