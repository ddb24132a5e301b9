"""`pooltagscan fleet`: dumps scanned as Dask tasks give exactly `scan --stats`.

The clusters are real: an embedded LocalCluster, and a `dask scheduler` with two
`dask worker` processes started here on random free ports (killed at the end whatever
happens). Dumps are split into many window-range tasks (small windows) so that the
merge of partial counters is what is compared with the single-process scan.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DUMPS, REPO, SAMPLES

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

from pooltagscan.cli import main
from pooltagscan.errors import InputError
from pooltagscan.fleet.cluster import fleet_client
from pooltagscan.fleet.runner import FleetOptions, scan_fleet
from pooltagscan.fleet.store import FleetStore, dump_id
from pooltagscan.fleet.tasks import plan_dump, scan_range
from pooltagscan.fleet.views import Fleet
from pooltagscan.tags.database import TagDatabase

pytestmark = pytest.mark.fleet

RAW = sorted(DUMPS.glob("*.raw"))
FORMATS = [
    SAMPLES / "formats" / name
    for name in ("crash-full-x64.dmp", "crash-bitmap-x64.dmp", "minidump-x64.dmp",
                 "lime-x86.lime", "elfcore-x64.elf", "vmware-x64.vmem")
]  # fmt: skip
DASK = Path(sys.executable).with_name("dask")
# Small windows and tasks: a 2 MiB sample becomes 4 range tasks of 2 windows each.
SPLIT = {"window_bytes": 256 << 10, "task_bytes": 512 << 10}


def single_process(path: Path, tmp: Path) -> dict:
    """`pooltagscan scan DUMP --stats --format json`, the reference."""
    out = tmp / f"{path.name}.stats.json"
    assert main(["scan", str(path), "--stats", "--format", "json", "-o", str(out), "-q"]) == 0
    return json.loads(out.read_text())


def compare_with_scan(store_dir: Path, paths: list[Path], tmp: Path) -> None:
    """Every dump's rows in the store equal `scan --stats`, column by column and in
    order, and its provenance carries the scan's facts and the file's sha256."""
    fleet = Fleet.load(str(store_dir))
    dumps = {d["path"]: d for d in fleet.ok}
    for path in paths:
        ref = single_process(path, tmp)
        prov = dumps[os.path.abspath(path)]
        rows = [
            {k: v for k, v in r.items() if k not in ("dump_id", "scan_id", "path")}
            for r in fleet.stats
            if r["dump_id"] == prov["dump_id"]
        ]
        assert rows == ref["tags"], path.name
        assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert prov["size"] == path.stat().st_size
        for key in ("records", "bytes", "pool_pages", "scanned_pages", "pool_page_share"):
            assert prov[key] == ref["summary"][key], (path.name, key)
        for key in ("format", "architecture", "layout", "pooltype_encoding", "scanned_bytes"):
            assert prov[key] == ref[key], (path.name, key)
        assert json.loads(prov["evidence"]) == ref["evidence"]
        assert prov["tracker_pages"] == ref.get("tracker_pages", 0)
        assert prov["status"] == "ok" and prov["error"] is None


@pytest.fixture(scope="module")
def local_client():
    with fleet_client(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def local_store(local_client, tmp_path_factory):
    """The samples scanned on the embedded cluster, split into range tasks, records on."""
    folder = tmp_path_factory.mktemp("fleet") / "store"
    store = FleetStore(str(folder))
    store.create([])
    outcomes = scan_fleet(
        local_client,
        store,
        [str(p) for p in [*RAW, *FORMATS]] + [str(folder.parent / "missing.raw")],
        TagDatabase.load([]),
        FleetOptions(records=True, **SPLIT),
    )
    return folder, outcomes


def test_local_cluster_equals_single_process(local_store, tmp_path):
    folder, outcomes = local_store
    status = {os.path.basename(o.path): o.status for o in outcomes}
    assert status.pop("missing.raw") == "failed"
    assert set(status.values()) == {"ok"} and len(status) == len(RAW) + len(FORMATS)
    compare_with_scan(folder, [*RAW, *FORMATS], tmp_path)
    # The missing dump is recorded with its error, not dropped.
    failed = Fleet.load(str(folder)).failed
    assert [os.path.basename(d["path"]) for d in failed] == ["missing.raw"]
    assert failed[0]["error"].endswith("missing.raw: no such file")
    # Split dumps really were split.
    prov = {d["path"]: d for d in Fleet.load(str(folder)).ok}
    # one per 512 KiB task: 4 for 2 MiB, 5 with gen_images' appended loaded-driver pages
    assert prov[str(RAW[0])]["records_files"] == -(-RAW[0].stat().st_size // (512 << 10))


def test_records_equal_jsonl(local_store, tmp_path):
    import pyarrow.parquet as pq

    folder, _ = local_store
    for path in (RAW[0], FORMATS[2]):  # a raw dump and a minidump (virtual addresses)
        prov = {d["path"]: d for d in Fleet.load(str(folder)).ok}[str(path)]
        table = pq.read_table(folder / "records" / prov["dump_id"])
        got = sorted(
            (
                {k: v for k, v in r.items() if not (k == "entry" and v is None)}
                for r in table.to_pylist()
            ),
            key=lambda r: (r["offset"], r["source"]),
        )
        out = tmp_path / "records.jsonl"
        assert main(["scan", str(path), "--format", "jsonl", "-o", str(out), "-q"]) == 0
        want = [json.loads(line) for line in out.read_text().splitlines()]
        assert got == sorted(want, key=lambda r: (r["offset"], r["source"]))


def test_no_hash_records_null_with_the_reason(tmp_path, capsys):
    """`--no-hash`: no sha256 task (the dump is read once), the provenance row holds
    null and why, and the statistics are still exactly `scan --stats`."""
    store = tmp_path / "store"
    args = ["fleet", "scan", str(RAW[0]), str(RAW[1]), "--out", str(store), "--workers", "1"]
    assert main([*args, "--no-hash"]) == 0, capsys.readouterr().err
    fleet = Fleet.load(str(store))
    rows = {d["path"]: d for d in fleet.ok}
    assert set(rows) == {str(RAW[0]), str(RAW[1])}
    for row in rows.values():
        assert row["sha256"] is None
        assert row["sha256_note"] == "not computed (--no-hash)"
        assert row["tasks"] == 2  # the plan and one range: no sha256 task
    ref = single_process(RAW[0], tmp_path)
    mine = [
        {k: v for k, v in r.items() if k not in ("dump_id", "scan_id", "path")}
        for r in fleet.stats
        if r["dump_id"] == rows[str(RAW[0])]["dump_id"]
    ]
    assert mine == ref["tags"]
    # A rescan with the hash on fills it in, and the note goes.
    assert main([*args, "--rescan", "-q"]) == 0
    row = {d["path"]: d for d in Fleet.load(str(store)).ok}[str(RAW[0])]
    assert row["sha256"] == hashlib.sha256(RAW[0].read_bytes()).hexdigest()
    assert row["sha256_note"] is None and row["tasks"] == 3  # plan, one range, sha256


def test_vanished_dump_fails_its_task(tmp_path):
    copy = tmp_path / "host.raw"
    shutil.copy(RAW[0], copy)
    plan = plan_dump(str(copy), window_bytes=256 << 10, task_bytes=512 << 10)
    # 512 KiB tasks: 4 for 2 MiB, 5 when gen_images appended loaded-driver pages.
    assert len(plan.ranges) == -(-copy.stat().st_size // (512 << 10))
    scan_range(plan, *plan.ranges[0])  # fine while it is there
    copy.unlink()
    with pytest.raises(InputError, match="host.raw"):
        scan_range(plan, *plan.ranges[1])


@contextlib.contextmanager
def dask_cluster(tmp: Path, workers: int = 2, env: dict[str, str] | None = None):
    """`dask scheduler` and `dask worker`s on localhost, random free ports; every
    process is killed on the way out, also when the test fails. `env` adds Dask
    settings (DASK_...) to the processes' environment."""
    info = tmp / "scheduler.json"
    procs: list[subprocess.Popen] = []
    common = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
              "start_new_session": True, "cwd": tmp,
              "env": {**os.environ, **(env or {})}}  # fmt: skip
    try:
        procs.append(
            subprocess.Popen(
                [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                 "--no-dashboard", "--scheduler-file", str(info)],
                **common,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            assert procs[0].poll() is None, "dask scheduler exited"
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [str(DASK), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                     "--no-dashboard", "--no-nanny"],
                    **common,
                )
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def fleet_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pooltagscan", "fleet", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        **kw,
    )


def test_external_cluster_cli(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a memory dump at all\n" * 200)
    store = tmp_path / "store"
    dumps = [*RAW, FORMATS[0]]
    with dask_cluster(tmp_path) as address:
        first = fleet_cli(
            "scan", *map(str, dumps), str(tmp_path / "gone.raw"), "--out", str(store),
            "--scheduler", address, "--task-mib", "1",
        )  # fmt: skip
        assert first.returncode == 2, first.stderr
        assert "Traceback" not in first.stderr
        assert f"error: {tmp_path / 'gone.raw'}: no such file" in first.stderr
        compare_with_scan(store, dumps, tmp_path)
        # Unchanged dumps are skipped without a cluster; a touched one is scanned again.
        again = fleet_cli("scan", *map(str, dumps), "--out", str(store), "--scheduler", address)
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("skipped (unchanged") == len(dumps)
        copy = tmp_path / "host.raw"
        shutil.copy(RAW[1], copy)
        listed = tmp_path / "list.txt"
        listed.write_text(f"# hosts\n{copy}\n{RAW[0]}\n")
        third = fleet_cli(
            "scan", "--list", str(listed), "--out", str(store), "--scheduler", address
        )
        assert third.returncode == 0 and "1 scanned, 1 skipped" in third.stderr, third.stderr
        os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))
        fourth = fleet_cli("scan", str(copy), "--out", str(store), "--scheduler", address)
        assert "1 scanned, 0 skipped" in fourth.stderr, fourth.stderr
    compare_with_scan(store, [*dumps, copy], tmp_path)
    fleet = Fleet.load(str(store))
    assert [os.path.basename(d["path"]) for d in fleet.failed] == ["gone.raw"]


def big_dump(tmp: Path, copies: int = 64) -> Path:
    """A 128 MiB raw dump (the win10-1809 sample repeated): 8 range tasks of 16 MiB, each
    long enough to be caught running."""
    path = tmp / "big.raw"
    unit = (DUMPS / "win10-1809-x64.raw").read_bytes()
    with path.open("wb") as out:
        for _ in range(copies):
            out.write(unit)
    return path


def kill_worker_in_range_task(address: str, scan: subprocess.Popen, ident: str) -> str:
    """SIGKILL the `dask worker` process that the scheduler has running a range task of
    dump `ident` (and no task of another dump), and return the task's key.

    The worker is first frozen (SIGSTOP) and the scheduler asked again after a moment:
    only when the task is still processing on the frozen worker (it cannot finish or
    report any more) is it killed, so the death really happens mid-task; otherwise the
    worker is thawed and the next range task is tried."""
    from distributed import Client

    def mine(keys) -> list[str]:
        """The range tasks among `keys`, when every key is a task of dump `ident`."""
        keys = [str(k) for k in keys]
        if not keys or not all(f"-{ident}-" in k for k in keys):
            return []
        return [k for k in keys if k.startswith(f"fleet-range-{ident}-")]

    with Client(address, timeout=30) as client:
        pids = client.run(os.getpid)
        deadline = time.monotonic() + 60
        while True:
            assert scan.poll() is None, "the fleet scan ended before a range task was caught"
            assert time.monotonic() < deadline, "no range task caught running"
            for worker, keys in client.processing().items():
                if not mine(keys):
                    continue
                os.kill(pids[worker], signal.SIGSTOP)
                time.sleep(0.05)
                still = mine(client.processing().get(worker, ()))
                if still:
                    os.kill(pids[worker], signal.SIGKILL)
                    return still[0]
                os.kill(pids[worker], signal.SIGCONT)
            time.sleep(0.005)


def fleet_scan_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pooltagscan", "fleet", "scan", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip


@pytest.mark.parametrize("allowed_failures", [3, 0], ids=["retried", "recorded"])
def test_worker_killed_mid_range_task(tmp_path, allowed_failures):
    """A `dask worker` SIGKILLed while it runs a range task of a dump: with Dask's
    default allowance the task is run again on the other worker and the dump's results
    are exactly `scan --stats`; with no allowance (the scheduler's
    `allowed-failures` 0) the dump is recorded as failed with the error naming it.
    Either way the dump is in the store, never silently dropped, and the other dump of
    the run is unaffected."""
    dump = big_dump(tmp_path)
    store = tmp_path / "store"
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}
    with dask_cluster(tmp_path, env=env) as address:
        scan = fleet_scan_process(
            str(dump), str(RAW[0]), "--out", str(store), "--scheduler", address,
            "--task-mib", "16",
        )  # fmt: skip
        try:
            key = kill_worker_in_range_task(address, scan, dump_id(str(dump)))
            _out, err = scan.communicate(timeout=120)
        finally:
            scan.kill()
            scan.wait()
    assert key.startswith("fleet-range-") and "Traceback" not in err
    fleet = Fleet.load(str(store))
    if allowed_failures:
        assert scan.returncode == 0, err
        assert "failed" not in err.replace("0 failed", "")
        compare_with_scan(store, [dump, RAW[0]], tmp_path)
        return
    assert scan.returncode == 2, err
    assert [d["path"] for d in fleet.failed] == [str(dump)]
    row = fleet.failed[0]
    assert row["status"] == "failed" and row["sha256"] is None and row["records"] is None
    want = f"{dump}: the worker scanning it died, 1 time (the cluster allows 0 retries)"
    assert row["error"] == want
    assert f"pooltagscan: error: {want}\n" in err
    assert [d["path"] for d in fleet.ok] == [str(RAW[0])]
    assert {r["dump_id"] for r in fleet.stats} == {fleet.ok[0]["dump_id"]}


def test_views(local_store, tmp_path):
    folder, _ = local_store
    out = tmp_path / "stack.json"
    html = tmp_path / "stack.html"
    args = ["fleet", "stack", str(folder), "--format", "json", "-o", str(out), "-q"]
    assert main([*args, "--html", str(html)]) == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "pooltagscan-fleet-stack" and doc["dumps"] == len(RAW) + len(FORMATS)
    assert [f["path"].endswith("missing.raw") for f in doc["failed"]] == [True]
    counts = [r["dumps"] for r in doc["rows"]]
    assert counts == sorted(counts) and all(len(r["per_dump"]) == r["dumps"] for r in doc["rows"])
    page = html.read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert 'class="heat"' in page
    # --max-hosts keeps only the rarer tags.
    assert main([*args[:-3], "-o", str(out), "-q", "--max-hosts", "2"]) == 0
    assert all(r["dumps"] <= 2 for r in json.loads(out.read_text())["rows"])
    # hunt: which dumps hold `Proc`, in csv.
    out = tmp_path / "hunt.csv"
    assert main(["fleet", "hunt", str(folder), "--tag", "Pro?", "--format", "csv",
                 "-o", str(out), "-q"]) == 0  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["tag"] for r in rows} == {"Proc"} and len(rows) == len(RAW) + len(FORMATS)
    # diff against a baseline: growth rows of every other dump, as `pooltagscan diff`.
    out = tmp_path / "diff.jsonl"
    assert main(["fleet", "diff", str(folder), "--baseline", RAW[0].name, "--format",
                 "jsonl", "-o", str(out), "-q"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pair = tmp_path / "pair.json"
    assert main(["diff", str(RAW[0]), str(RAW[1]), "--changed", "--format", "json",
                 "-o", str(pair), "-q"]) == 0  # fmt: skip
    mine = {r["tag"]: r for r in rows if r["dump"] == str(RAW[1])}
    for want in json.loads(pair.read_text())["tags"]:
        got = mine[want["tag"]]
        for key in ("old_allocs", "new_allocs", "old_bytes", "new_bytes", "delta_bytes"):
            assert got[key] == want[key], (want["tag"], key)
    # Bad input is one line naming it.
    assert main(["fleet", "diff", str(folder), "--baseline", "nope.raw", "-q"]) == 2
    assert main(["fleet", "stack", str(tmp_path), "-q"]) == 2


def test_store_refusals(tmp_path, capsys):
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    shutil.copy(RAW[0], evidence / "host.raw")
    assert main(["fleet", "scan", str(evidence / "host.raw"), "--out", str(evidence)]) == 2
    assert "holds the dump" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.txt").write_text("mine")
    assert main(["fleet", "scan", str(RAW[0]), "--out", str(busy)]) == 2
    assert "not a fleet folder" in capsys.readouterr().err
    assert sorted(os.listdir(busy)) == ["thesis.txt"]


def test_interrupt_stops_the_cluster(tmp_path):
    """Ctrl-C to the process group: exit 130 within 2 s, one line, no traceback, no
    process left, and the dumps finished until then readable."""
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    for i in range(120):
        os.symlink(RAW[i % len(RAW)], hosts / f"host{i:03d}.raw")
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{p}\n" for p in sorted(hosts.iterdir())))
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pooltagscan", "fleet", "scan", "--list", str(listed),
         "--out", str(store), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True, cwd=REPO,
    )  # fmt: skip
    try:
        lines = []
        while True:  # until the first dump is done
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if " tags, " in line:
                break
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(10)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, rest
    assert took < 2.0, took
    assert "Traceback" not in rest and rest.strip().endswith("pooltagscan: error: interrupted")
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the run's process group is left
    fleet = Fleet.load(str(store))
    assert 1 <= len(fleet.ok) < 120 and not fleet.failed
    assert {r["dump_id"] for r in fleet.stats} == {d["dump_id"] for d in fleet.ok}


def test_without_dask_one_line(tmp_path):
    code = (
        "import sys; sys.modules['distributed'] = None; "
        "from pooltagscan.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "fleet", "scan", str(RAW[0]), "--out", str(tmp_path / "s")],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        (
            "pooltagscan: error: the fleet commands need distributed, which is not installed "
            "(pip install 'pooltagscan[fleet]')"
        )
    ]


class FakeTty(io.StringIO):
    def __init__(self, tty: bool = True):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_line_shows_the_dumps_in_flight():
    from pooltagscan.fleet.progress import FleetProgress, render

    mib = 1 << 20
    flight = [("/cases/host-a.raw", 64 * mib, 256 * mib), ("/cases/host-b.raw", 0, 512 * mib)]
    assert render("fleet scan", 64 * mib, 768 * mib, 2.0, flight, 100) == (
        "fleet scan [#...................]   8%     34 MB/s ETA   22s | host-a.raw 25% host-b.raw 0%"
    )
    # Narrow: the dumps that do not fit are counted; names cut from the front.
    long = [(f"/cases/{'x' * 30}-{i}.raw", i * mib, 4 * mib) for i in range(4)]
    line = render("fleet scan", 6 * mib, 16 * mib, 3.0, long, 100)
    assert line == (
        "fleet scan [#######.............]  38%      2 MB/s ETA    5s | "
        f"…{'x' * 17}-0.raw 0% +3 more"
    )
    assert len(line) <= 99
    assert render("fleet scan", 0, 0, 0.0, [], 40) == "fleet scan [....................]   0%"

    clock = [100.0]
    tty = FakeTty()
    bar = FleetProgress(stream=tty, clock=lambda: clock[0], width=100)
    bar.dump("/cases/host-a.raw", 0, 256 * mib)
    bar(0, 256 * mib)
    assert tty.getvalue() == ""  # not before the delay
    clock[0] = 102.0
    bar.dump("/cases/host-a.raw", 128 * mib, 256 * mib)
    bar(128 * mib, 256 * mib)
    want = ("fleet scan [##########..........]  50%     67 MB/s ETA    2s | host-a.raw 50%").ljust(
        99
    )
    assert tty.getvalue() == "\r" + want
    bar.forget("/cases/host-a.raw")
    bar.close()
    assert tty.getvalue().endswith(want + "\n")
    # Piped: never a byte.
    piped = FakeTty(tty=False)
    quiet = FleetProgress(stream=piped, clock=lambda: clock[0] + 60)
    quiet.dump("/cases/host-a.raw", 1, 2)
    quiet(1, 2)
    quiet.close()
    assert piped.getvalue() == ""
