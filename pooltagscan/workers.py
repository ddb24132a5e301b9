"""An ordered map over worker processes that never hangs and never leaves one behind.

`multiprocessing.Pool` was not good enough for a tool users interrupt and pipe into
`head`: `terminate()` could hang, workers printed KeyboardInterrupt tracebacks, an
exception that did not unpickle killed its result thread so `imap` waited forever, and a
worker that died (OOM killer, SIGKILL) was waited for forever too. This pool is small
and owns every case:

- workers ignore SIGINT (a terminal sends Ctrl-C to the whole process group: the parent
  owns shutdown) and die with the parent (PR_SET_PDEATHSIG on Linux) even if it is
  killed outright;
- the parent waits on the result pipes and the workers' sentinels together, with a
  timeout, so a dead worker is noticed and reported, not waited for;
- an exception raised by the work function comes back to the parent and is raised
  there as itself (or, if it cannot be pickled, as a `WorkerError` carrying its text);
- results come back in input order, with a bounded number of tasks in flight, so the
  parent's memory stays bounded however far the workers get ahead;
- when the consumer stops (a closed pipe, Ctrl-C, an error in the parent), every
  worker is killed and reaped before control returns.

Nothing here prints.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pooltagscan import interrupts

T = TypeVar("T")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1
# How long a worker asked to stop may take before it is killed.
_STOP_GRACE_SECONDS = 0.5
_POLL_SECONDS = 0.25


class WorkerError(RuntimeError):
    """A worker failed in a way that cannot be raised in the parent as the original error
    (the process died, or its exception could not be pickled)."""


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphan workers)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives a pickle round trip, else a WorkerError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return WorkerError(text)


def _worker_main(
    conn: multiprocessing.connection.Connection,
    func: Callable[[Any], Any],
    initializer: Callable[..., None] | None,
    initargs: tuple,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent around the fork
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent()
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        with contextlib.suppress(OSError, ValueError):
            conn.send((-1, False, _portable(exc)))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed our pipe
        if message is None:
            return
        index, item = message
        try:
            outcome = (index, True, func(item))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            outcome = (index, False, _portable(exc))
        try:
            conn.send(outcome)
        except (OSError, ValueError):
            return
        except Exception as exc:  # noqa: BLE001 - an unpicklable result
            with contextlib.suppress(OSError, ValueError):
                conn.send((index, False, WorkerError(f"result could not be sent: {exc}")))


def can_start_workers() -> bool:
    """Whether this process may start worker processes: a daemonic one (a multiprocessing
    worker that calls us as a library) may not have children, and callers then do the
    work in this process."""
    return not multiprocessing.current_process().daemon


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Hold off SIGINT while workers are being reaped: a second Ctrl-C must not leave
    them behind or print a traceback from inside the cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        # None: the handler was not installed from Python (or the interpreter is
        # shutting down and the module is half gone): nothing to put back.
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT around a fork: a Ctrl-C in that instant stays pending for the
    parent (delivered when this block ends) and never reaches the new worker before it
    has set SIGINT to be ignored."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Worker:
    def __init__(self, ctx: Any, func, initializer, initargs):
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.process = ctx.Process(
            target=_worker_main, args=(child, func, initializer, initargs), daemon=True
        )
        self.process.start()
        child.close()
        self.busy = 0  # tasks sent and not yet answered

    def send(self, message: Any) -> None:
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            _raise_dead(self)

    def stop(self, kill: bool) -> None:
        process = self.process
        if not kill:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
            process.join(_STOP_GRACE_SECONDS)
        if process.is_alive():
            with contextlib.suppress(OSError, AttributeError):
                process.kill()
            process.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(ValueError, AttributeError):
            process.close()


def ordered_map(
    func: Callable[[T], R],
    items: Iterable[T],
    jobs: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    ahead: int | None = None,
) -> Iterator[R]:
    """`func(item)` for every item, computed by `jobs` worker processes, in input order.

    `func` and `initializer` must be module-level functions (picklable for platforms
    without fork). At most `ahead` results (default: two per job) are computed beyond
    the one the consumer waits for. Closing the iterator early kills the workers.
    """
    tasks = list(items)
    if not tasks:
        return
    ctx = _context()
    jobs = max(1, min(jobs, len(tasks)))
    ahead = max(jobs, ahead or 2 * jobs)
    workers: list[_Worker] = []
    clean = False
    try:
        for _ in range(jobs):
            with _sigint_blocked():
                workers.append(_Worker(ctx, func, initializer, initargs))
        by_conn = {w.conn: w for w in workers}
        by_sentinel = {w.process.sentinel: w for w in workers}
        results: dict[int, tuple[bool, Any]] = {}
        next_task = 0
        next_out = 0
        while next_out < len(tasks):
            interrupts.check()
            # Keep every worker fed (the least busy first, so consecutive tasks run side
            # by side), never running further ahead than `ahead`.
            while workers and next_task < len(tasks) and next_task < next_out + ahead:
                worker = min(workers, key=lambda w: w.busy)
                if worker.busy >= 2:
                    break
                worker.send((next_task, tasks[next_task]))
                worker.busy += 1
                next_task += 1
            while next_out in results:
                ok, value = results.pop(next_out)
                next_out += 1
                if not ok:
                    raise value
                yield value
            if next_out >= len(tasks):
                break
            handles = [*by_conn, *by_sentinel]
            ready = multiprocessing.connection.wait(handles, timeout=_POLL_SECONDS)
            for handle in ready:
                if handle in by_conn:
                    worker = by_conn[handle]
                    try:
                        index, ok, value = worker.conn.recv()
                    except (EOFError, OSError):
                        _raise_dead(worker)
                    if index < 0:  # the initializer failed
                        raise value
                    worker.busy -= 1
                    results[index] = (ok, value)
            for handle in ready:
                if handle in by_sentinel:
                    worker = by_sentinel[handle]
                    # Answers it sent before dying are still in its pipe.
                    while worker.conn.poll():
                        try:
                            index, ok, value = worker.conn.recv()
                        except (EOFError, OSError):
                            break
                        worker.busy -= 1
                        results[index] = (ok, value)
                    if worker.busy > 0 or next_task < len(tasks):
                        _raise_dead(worker)
                    # Idle and nothing left to give it: let it go quietly.
                    del by_conn[worker.conn], by_sentinel[handle]
                    workers.remove(worker)
                    worker.stop(kill=True)
        clean = True
    finally:
        with _no_interrupts():
            for worker in workers:
                worker.stop(kill=not clean)


class Background:
    """`func(item)` computed by one worker process while the caller goes on.

    For work that must not share this process's GIL with the scan: a thread hashing a
    dump next to a one-job scan waited for the interpreter lock at every chunk and made
    the run 4x slower. The process follows this module's rules (ignores SIGINT, dies
    with the parent, reports its death); `cancel` kills it at once. Without fork (the
    worker would have to re-import everything) or in a daemonic process, None is returned
    by `start`.
    """

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self._outcome: tuple[bool, Any] | None = None
        self._stopped = False

    @classmethod
    def start(
        cls,
        func: Callable[[T], R],
        item: T,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
    ) -> Background | None:
        """Start computing; `initargs` reach the process unpickled (fork), `item` pickled."""
        if "fork" not in multiprocessing.get_all_start_methods() or not can_start_workers():
            return None
        with _sigint_blocked():
            worker = _Worker(multiprocessing.get_context("fork"), func, initializer, initargs)
        worker.send((0, item))
        return cls(worker)

    def result(self) -> Any:
        """The function's value (waits for it), or its exception raised here."""
        if self._outcome is None:
            worker = self._worker
            while self._outcome is None:
                ready = multiprocessing.connection.wait(
                    [worker.conn, worker.process.sentinel], timeout=_POLL_SECONDS
                )
                if worker.conn in ready or (ready and worker.conn.poll()):
                    try:
                        _, ok, value = worker.conn.recv()
                    except (EOFError, OSError):
                        _raise_dead(worker)
                    self._outcome = (ok, value)
                elif ready:
                    _raise_dead(worker)
            self._stop(kill=False)
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        """Stop the process now (kill and reap it); a later `result` is not allowed."""
        self._stop(kill=True)

    def _stop(self, kill: bool) -> None:
        if not self._stopped:
            self._stopped = True
            with _no_interrupts():
                self._worker.stop(kill=kill)


def _raise_dead(worker: _Worker) -> None:
    worker.process.join(1)
    code = worker.process.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    hint = " (out of memory?)" if code == -signal.SIGKILL else ""
    raise WorkerError(f"a worker process (pid {worker.process.pid}) {how}{hint}")
