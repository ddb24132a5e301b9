"""Where the fleet's tasks run: an embedded LocalCluster, or an existing Dask cluster.

The embedded cluster is what a new user gets: worker processes (one thread each, so
the scan's numpy and C code use every core without fighting over the GIL) on this
machine's cores, no dashboard unless bokeh is installed, no network beyond localhost.
Its processes are started with SIGINT ignored: a Ctrl-C on the terminal reaches the
whole process group, and it is the client's job, not each worker's, to stop the run
(the workers would print their own tracebacks otherwise). The client closes the
cluster, which kills its workers, within a couple of seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

CLOSE_SECONDS = 2
CONNECT_SECONDS = 10


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while child processes are started (they inherit it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def quiet_logs() -> None:
    """Dask logs connection chatter at INFO and WARNING; the shell reports what matters."""
    for name in ("distributed", "distributed.client", "distributed.scheduler", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def dashboard_available() -> bool:
    """Dask serves its dashboard only when bokeh is installed."""
    return importlib.util.find_spec("bokeh") is not None


@contextlib.contextmanager
def fleet_client(
    scheduler: str | None = None,
    workers: int | None = None,
    on_dashboard: Callable[[str], None] | None = None,
) -> Iterator[Any]:
    """A connected `distributed.Client`: to `scheduler` (tcp://host:port), or to an
    embedded LocalCluster of `workers` single-threaded processes. Closed on exit, also on
    Ctrl-C, without waiting more than a few seconds for the cluster."""
    import dask
    from distributed import Client, LocalCluster

    quiet_logs()
    cluster = None
    client = None
    # Workers keep a task's result in memory until the client releases it; spilling to
    # disk would write evidence-derived data where nobody asked.
    settings = {
        "distributed.worker.memory.spill": False,
        "distributed.scheduler.allowed-failures": 2,
        "distributed.comm.timeouts.connect": f"{CONNECT_SECONDS}s",
    }
    with dask.config.set(settings):
        try:
            if scheduler:
                client = Client(scheduler, timeout=CONNECT_SECONDS, set_as_default=False)
            else:
                dashboard = ":0" if dashboard_available() else None
                with _sigint_ignored():
                    cluster = LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=dashboard,
                        silence_logs=logging.CRITICAL,
                    )
                client = Client(cluster, set_as_default=False)
            if on_dashboard is not None:
                services = client.scheduler_info().get("services", {})
                link = getattr(client, "dashboard_link", None)
                # Without bokeh a local scheduler serves no dashboard page.
                if link and "dashboard" in services and (scheduler or dashboard_available()):
                    on_dashboard(link)
            yield client
        finally:
            with _sigint_ignored():
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close(timeout=CLOSE_SECONDS)
                if cluster is not None:
                    with contextlib.suppress(Exception):
                        cluster.close(timeout=CLOSE_SECONDS)
