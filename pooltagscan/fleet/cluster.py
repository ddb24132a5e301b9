"""Where the fleet's tasks run: an embedded local cluster, or an existing Dask cluster.

The embedded cluster is what a new user gets: a Dask scheduler in this process (on
127.0.0.1, a random free port, no dashboard unless bokeh is installed) and one
`dask worker` process per core, each with one thread (the scan's numpy and C code then
use every core without contending for the GIL).

The workers are our own child processes rather than a `LocalCluster`'s nanny-managed
ones, because a run must end within two seconds of a Ctrl-C: a LocalCluster closes its
nannies politely (a running task finishes first, then up to its close timeout, then
atexit handlers wait again), which measured 1.5 to 13 s. Here the workers run in their
own session, so the terminal's Ctrl-C reaches only this process, which kills them by
their process ids at once; on a normal end they are asked to stop, then killed. A
watchdog restarts a worker that dies (what a nanny would do) so that a dump that kills
its worker is retried by Dask elsewhere, and recorded as failed when it keeps doing so,
instead of the run waiting forever for workers that are gone. A worker whose scheduler
disappears (this process killed outright) exits by itself after `DEATH_SECONDS`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

CLOSE_SECONDS = 2
CONNECT_SECONDS = 10
START_SECONDS = 60
DEATH_SECONDS = 10
WATCH_SECONDS = 0.5


def quiet_logs() -> None:
    """Dask logs connection chatter at INFO and WARNING; the shell reports what matters."""
    for name in ("distributed", "distributed.client", "distributed.scheduler", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def dashboard_available() -> bool:
    """Dask serves its dashboard only when bokeh is installed."""
    return importlib.util.find_spec("bokeh") is not None


def default_workers() -> int:
    from pooltagscan.parallel import default_jobs

    return default_jobs()


class LocalWorkers:
    """`count` single-threaded `dask worker` processes for a scheduler, kept alive."""

    def __init__(self, address: str, count: int):
        self.address = address
        self.count = count
        self.procs: list[subprocess.Popen] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "distributed.cli.dask_worker", self.address,
            "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
            "--death-timeout", str(DEATH_SECONDS),
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's Ctrl-C is for us, not for them
            close_fds=True,
        )

    def start(self) -> None:
        for _ in range(self.count):
            self.procs.append(self._spawn())
        self._watch = threading.Thread(target=self._watchdog, name="fleet-workers", daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        while not self._closing.wait(WATCH_SECONDS):
            with self._lock:
                if self._closing.is_set():
                    return
                for i, proc in enumerate(self.procs):
                    if proc.poll() is not None:
                        self.procs[i] = self._spawn()

    def stop(self, kill: bool) -> None:
        """Stop every worker: SIGKILL at once (`kill`), else SIGTERM and a grace."""
        self._closing.set()
        with self._lock:
            procs = list(self.procs)
        if not kill:
            for proc in procs:
                with contextlib.suppress(OSError):
                    proc.terminate()
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(CLOSE_SECONDS)
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(CLOSE_SECONDS)


@contextlib.contextmanager
def fleet_client(
    scheduler: str | None = None,
    workers: int | None = None,
    on_dashboard: Callable[[str], None] | None = None,
) -> Iterator[Any]:
    """A connected `distributed.Client`: to `scheduler` (tcp://host:port), or to an
    embedded scheduler with `workers` worker processes (default: one per core). Closed on
    exit; on Ctrl-C the embedded workers are killed at once."""
    import dask
    from distributed import Client, LocalCluster

    quiet_logs()
    cluster = None
    client = None
    local: LocalWorkers | None = None
    interrupted = False
    settings = {
        # Results stay in worker memory until the client takes them; spilling them to
        # disk would write evidence-derived data where nobody asked.
        "distributed.worker.memory.spill": False,
        "distributed.scheduler.allowed-failures": 2,
        "distributed.comm.timeouts.connect": f"{CONNECT_SECONDS}s",
    }
    with dask.config.set(settings):
        try:
            if scheduler:
                client = Client(scheduler, timeout=CONNECT_SECONDS, set_as_default=False)
            else:
                cluster = LocalCluster(
                    n_workers=0,
                    processes=False,
                    protocol="tcp",
                    host="127.0.0.1",
                    scheduler_port=0,
                    # Loopback and a free port, always: None or ":0" would have Dask's
                    # HTTP server listen on every interface (8787 by default).
                    dashboard_address="127.0.0.1:0",
                    silence_logs=logging.CRITICAL,
                )
                local = LocalWorkers(cluster.scheduler_address, workers or default_workers())
                local.start()
                client = Client(cluster, set_as_default=False)
                client.wait_for_workers(1, timeout=START_SECONDS)
            if on_dashboard is not None:
                services = client.scheduler_info().get("services", {})
                link = getattr(client, "dashboard_link", None)
                # Without bokeh a local scheduler serves no dashboard page.
                if link and "dashboard" in services and (scheduler or dashboard_available()):
                    on_dashboard(link)
            yield client
        except BaseException:
            interrupted = True
            if local is not None:
                local.stop(kill=True)
            raise
        finally:
            with _sigint_ignored():
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close(timeout=CLOSE_SECONDS)
                if local is not None and not interrupted:
                    local.stop(kill=False)
                if cluster is not None:
                    with contextlib.suppress(Exception):
                        cluster.close(timeout=CLOSE_SECONDS)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C during the cleanup changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
