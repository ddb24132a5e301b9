"""Fleet scale: scan hundreds of dumps as Dask tasks and query them as Parquet.

Incident responders collect memory from many hosts at once; their questions (which hosts
carry this tag, which tags only one or two hosts hold) need every dump scanned and the
per-tag statistics kept side by side. Rather than a home-made scheduler, the work runs
on Dask (`distributed`): an embedded `LocalCluster` by default, or an existing cluster.

Modules, one job each:

- `tasks`: what runs on a worker (prepare a dump, scan a range of its windows, hash it);
  it reuses the library (`scan.prepare`, `scanner.engine.window_results`,
  `summary.WindowCounts`), so per-dump results are those of `scan --stats`;
- `store`: the Parquet folder (per-dump files written atomically) and reading it back;
- `runner`: the client side: submit, merge per-tag counters, record every dump's fate;
- `cluster`: start the embedded cluster or connect to one, and stop it quickly;
- `views`: stack, hunt and diff over the store; `render`: their table/json/jsonl/csv
  and the HTML heat map.

Dask and pyarrow are optional (`pip install 'pooltagscan[fleet]'`): `require` says so on
one line instead of an ImportError traceback.
"""

from __future__ import annotations

from pooltagscan.errors import PoolTagScanError

INSTALL_HINT = "pip install 'pooltagscan[fleet]'"


class FleetUnavailable(PoolTagScanError):
    """Dask or pyarrow is missing: the fleet commands cannot run."""


def require(*modules: str) -> None:
    """Raise FleetUnavailable naming the first of `modules` that cannot be imported."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise FleetUnavailable(
                f"the fleet commands need {name}, which is not installed ({INSTALL_HINT})"
            ) from None
