"""The Volatility 3 plugin (plugins/pooltagscan.py) against the standalone scanner.

The plugin must be a shell: on every sample and container format its records and its
--stats rows must equal `pooltagscan scan`'s exactly. It runs here in-process, through
Volatility's framework API as a library user would, and through the `vol` command.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DUMPS, REPO, SAMPLES, shared_data_dir

pytest.importorskip("volatility3")

import volatility3.plugins
from volatility3 import framework
from volatility3.framework import automagic, constants, contexts, exceptions, plugins, renderers
from volatility3.framework.layers import intel, physical

from pooltagscan.filters import RecordFilter
from pooltagscan.inputs import open_image
from pooltagscan.records import TagNames, to_dicts
from pooltagscan.scan import prepare, run
from pooltagscan.stats import COLUMNS, TRACKER_COLUMNS, TagStats
from pooltagscan.tags.database import TagDatabase
from pooltagscan.tracking import TrackerTotals, attach

PLUGIN_DIR = REPO / "plugins"
FORMATS = SAMPLES / "formats"
FAMILIES = ("xp-x86", "win7-x86", "win7-x64", "win10-1809-x64", "win11-segheap-x64")
FORMAT_FILES = sorted(p.name for p in FORMATS.iterdir() if p.suffix != ".json")
FORMAT_FILES.remove("vmware-x64.vmss")
KEYS = (
    "offset",
    "tag",
    "protected",
    "size",
    "pool",
    "state",
    "layout",
    "confidence",
    "source",
    "entry",
    "owner",
    "description",
)


def row_dict(values) -> dict:
    """A plugin row as the standalone contract object (`entry` only on big-pool rows;
    owner and description on every row)."""
    item = dict(zip(KEYS, values))
    item["offset"] = int(item["offset"])
    entry = item.pop("entry")
    if isinstance(entry, int):
        item["entry"] = int(entry)
    return item


def json_row(row: dict) -> dict:
    return row_dict([row[k.capitalize()] for k in KEYS])


STATS_KEYS = (
    "NonPagedAllocs",
    "NonPagedBytes",
    "PagedAllocs",
    "PagedBytes",
    "FreeAllocs",
    "FreeBytes",
    "Undecided",
    "TotalAllocs",
    "TotalBytes",
    "AllocatedAllocs",
    "AllocatedBytes",
    "UndecidedBytes",
    "LiveAllocs",
    "LiveBytes",
    "HighConfidence",
    "MediumConfidence",
    "LowConfidence",
    "SmallAllocs",
    "SmallBytes",
    "BigAllocs",
    "BigBytes",
)


@pytest.fixture(scope="module")
def plugin_class():
    framework.require_interface_version(2, 0, 0)
    if str(PLUGIN_DIR) not in volatility3.plugins.__path__:
        volatility3.plugins.__path__ = [str(PLUGIN_DIR), *constants.PLUGINS_PATH]
    framework.import_files(volatility3.plugins, True)
    return framework.list_plugins()["pooltagscan.PoolTagScan"]


def construct(plugin_class, dump: Path, **options):
    """The plugin built as `vol` builds it: automagic stacks layers from a file URL."""
    ctx = contexts.Context()
    ctx.config["automagic.LayerStacker.single_location"] = dump.resolve().as_uri()
    for key, value in options.items():
        ctx.config[f"plugins.PoolTagScan.{key}"] = value
    magics = automagic.choose_automagic(automagic.available(ctx), plugin_class)
    return ctx, plugins.construct_plugin(ctx, magics, plugin_class, "plugins", None, None)


def grid_rows(plugin) -> tuple[list[str], list[tuple]]:
    grid = plugin.run()
    rows: list[tuple] = []
    grid.populate(lambda node, _acc: rows.append(node.values), None)
    return [c.name for c in grid.columns], rows


def plugin_records(plugin_class, dump: Path, **options) -> list[dict]:
    _, plugin = construct(plugin_class, dump, **options)
    names, rows = grid_rows(plugin)
    assert names == [k.capitalize() for k in KEYS]
    return [row_dict(r) for r in rows]


def standalone(dump: Path, layout="auto", record_filter=None, db=None) -> list[dict]:
    """The records of `pooltagscan scan`, owner and description from `db`."""
    db = db or TagDatabase.builtin()
    prepared = prepare(open_image(dump), layout, db)
    batches = list(run(prepared, record_filter))
    return list(to_dicts(np.concatenate(batches), TagNames(db))) if batches else []


def standalone_stats(dump: Path, db: TagDatabase) -> list[dict]:
    stats = TagStats()
    totals = TrackerTotals()
    for records in run(prepare(open_image(dump), "auto", db), tracker=totals.add):
        stats.add(records)
    rows = stats.rows(db.describe, "bytes")
    attach(rows, totals)
    kernel = dict(zip(("KernelLive", "Seen", "KernelFlag"), TRACKER_COLUMNS))
    return [
        {"Tag": r.tag, **{k: r.counters[c] for k, c in zip(STATS_KEYS, COLUMNS)},
         **{k: (r.tracker or {}).get(c) for k, c in kernel.items()},
         "Owner": r.owner, "Description": r.description}
        for r in rows
    ]  # fmt: skip


def plugin_value(value):
    """Volatility's absent value (a row with no tracker count) as None."""
    return None if isinstance(value, renderers.NotApplicableValue) else value


# ---------------------------------------------------------------- in-process


@pytest.mark.parametrize("family", FAMILIES)
def test_records_equal_standalone_on_raw_samples(plugin_class, family):
    dump = DUMPS / f"{family}.raw"
    got = plugin_records(plugin_class, dump)
    assert len(got) > 1000
    assert got == standalone(dump)


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_records_equal_standalone_on_every_format(plugin_class, name):
    """Crash/LiME/ELF/VMware through Volatility's stacked layer, minidumps through ours."""
    dump = FORMATS / name
    got = plugin_records(plugin_class, dump)
    assert len(got) > 200
    assert got == standalone(dump)


def test_options_mirror_the_cli(plugin_class):
    dump = DUMPS / "win7-x86.raw"
    got = plugin_records(
        plugin_class,
        dump,
        tags=["Pro?", "Thr*", "Fil?"],
        min_confidence="high",
        state=["free"],
        layout="x86",
    )
    want = standalone(
        dump, "x86", RecordFilter.from_names(["Pro?", "Thr*", "Fil?"], "high", (), ["free"])
    )
    assert got == want
    assert {r["tag"] for r in got} == {"Proc", "Thre", "File"}


def test_tracker_view_and_source_filter(plugin_class):
    dump = DUMPS / "win11-segheap-x64.raw"
    _, plugin = construct(plugin_class, dump, tracker=True, sort="tag")
    names, rows = grid_rows(plugin)
    assert names == ["Tag", "NonPagedAllocs", "NonPagedFrees", "NonPagedBytes", "PagedAllocs",
                     "PagedFrees", "PagedBytes", "Owner"]  # fmt: skip
    totals = TrackerTotals()
    for _ in run(prepare(open_image(dump), "auto", TagDatabase.builtin()), tracker=totals.add):
        pass
    want = [(r.tag, *r.counters.values(), r.owner) for r in totals.rows(
        TagDatabase.builtin().describe, "tag")]  # fmt: skip
    assert [tuple(r) for r in rows] == want and len(want) > 40
    big = plugin_records(plugin_class, dump, source=["bigpool"])
    assert big == standalone(dump, record_filter=RecordFilter.from_names(sources=["bigpool"]))
    assert len(big) > 200 and {r["source"] for r in big} == {"bigpool"}
    assert all(r["entry"] // 4096 != r["offset"] // 4096 for r in big)


def test_records_carry_owner_and_description_of_the_pooltag_file(plugin_class, tmp_path):
    tag_file = tmp_path / "localtag.txt"
    tag_file.write_text("Qx9p - qx9p.sys - a third-party driver's buffers\n")
    db = TagDatabase.load([tag_file], env=None)
    dump = DUMPS / "win10-1809-x64.raw"
    got = plugin_records(plugin_class, dump, pooltag=[str(tag_file)])
    assert got == standalone(dump, db=db)
    qx9p = [r for r in got if r["tag"] == "Qx9p"]
    assert qx9p and {(r["owner"], r["description"]) for r in qx9p} == {
        ("qx9p.sys", "a third-party driver's buffers")
    }
    proc = next(r for r in got if r["tag"] == "Proc")
    assert proc["owner"] == "nt!ps" and proc["description"].startswith("process object (EPROCESS)")


def test_stats_equal_standalone(plugin_class, tmp_path):
    tag_file = tmp_path / "localtag.txt"
    tag_file.write_text("Qx9p - qx9p.sys - a third-party driver's buffers\n")
    db = TagDatabase.load([tag_file], env=None)
    for dump in (DUMPS / "win10-1809-x64.raw", FORMATS / "minidump-x64.dmp"):
        _, plugin = construct(plugin_class, dump, stats=True, pooltag=[str(tag_file)])
        names, rows = grid_rows(plugin)
        got = [{k: plugin_value(v) for k, v in zip(names, row)} for row in rows]
        assert got == standalone_stats(dump, db)
        if dump.suffix == ".raw":  # the sample holds a tracker table: the kernel's counts
            assert sum(r["KernelLive"] is not None for r in got) > 40
    assert any(r["Owner"] == "qx9p.sys" for r in standalone_stats(DUMPS / "win10-1809-x64.raw", db))


def test_scans_physical_layer_below_an_intel_layer(plugin_class):
    """Given a virtual layer (as Windows plugins stack), the plugin scans the one beneath."""
    dump = DUMPS / "win11-segheap-x64.raw"
    ctx = contexts.Context()
    ctx.config["t.file.location"] = dump.resolve().as_uri()
    ctx.add_layer(physical.FileLayer(ctx, "t.file", "memory_layer"))
    ctx.config["t.intel.memory_layer"] = "memory_layer"
    ctx.config["t.intel.page_map_offset"] = 0x1000
    ctx.add_layer(intel.WindowsIntel32e(ctx, "t.intel", "virtual", metadata={"os": "Windows"}))
    ctx.config["plugins.PoolTagScan.primary"] = "virtual"
    _, rows = grid_rows(plugin_class(ctx, "plugins.PoolTagScan"))
    assert [row_dict(r) for r in rows] == standalone(dump)


def test_layer_without_a_file_is_read_through_the_layer(plugin_class, tmp_path):
    """Volatility decompresses a gzip dump on the fly: no file to mmap, same records."""
    dump = DUMPS / "win7-x64.raw"
    packed = tmp_path / "win7-x64.raw.gz"
    packed.write_bytes(__import__("gzip").compress(dump.read_bytes(), compresslevel=1))
    assert plugin_records(plugin_class, packed) == standalone(dump)
    ctx = contexts.Context()
    ctx.add_layer(physical.BufferDataLayer(ctx, "t.buf", "buffer", buffer=dump.read_bytes()))
    ctx.config["plugins.PoolTagScan.primary"] = "buffer"
    _, rows = grid_rows(plugin_class(ctx, "plugins.PoolTagScan"))
    assert [int(r[0]) for r in rows] == [r["offset"] for r in standalone(dump)]


def test_format_stacking_skips_the_os_stackers(plugin_class):
    module = sys.modules[plugin_class.__module__]
    chosen = module.format_stackers()
    assert {"WindowsCrashDumpStacker", "LimeStacker", "Elf64Stacker", "VmwareStacker"} <= chosen
    assert not chosen & {"WindowsIntelStacker", "LinuxIntelStacker", "MacIntelStacker"}
    ctx, plugin = construct(plugin_class, FORMATS / "crash-full-x64.dmp")
    top = ctx.layers[plugin.config["primary"]]
    assert type(top).__name__.startswith("WindowsCrashDump64Layer")


@pytest.mark.parametrize(("layout", "warned"), [("x64-segment-heap", True), ("x86", False)])
def test_forced_layout_against_the_evidence_logs_a_warning(plugin_class, caplog, layout, warned):
    dump = DUMPS / "win7-x86.raw"
    _, plugin = construct(plugin_class, dump, stats=True, layout=layout)
    _, rows = grid_rows(plugin)
    assert rows  # a warning, not an error: the scan runs as asked
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    mine = [w for w in warnings if w.startswith("pooltagscan:")]
    want = (
        f"pooltagscan: {dump}: --layout x64-segment-heap goes against the evidence, which "
        "favours x86 (x86 chains 205, x64 chains 0, segment-heap pages 0); records are likely "
        "bogus"
    )
    assert mine == ([want] if warned else [])


def test_foreign_file_logs_one_error_and_no_rows(plugin_class, tmp_path, caplog):
    path = tmp_path / "app.dmp"
    path.write_bytes(b"MDMP\x93\xa7\0\0" + bytes(8192))
    _, plugin = construct(plugin_class, path)
    _, rows = grid_rows(plugin)
    assert rows == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    expected = (
        f"pooltagscan: {path}: this is a user-mode minidump (MDMP): a dump of one process, "
        "not a memory dump (kernel pool lives in kernel dumps such as MEMORY.DMP or "
        "C:\\Windows\\Minidump\\*.dmp)"
    )
    assert errors == [expected]


def test_missing_package_is_a_clear_volatility_error(plugin_class, monkeypatch):
    _, plugin = construct(plugin_class, DUMPS / "xp-x86.raw")
    monkeypatch.setitem(sys.modules, "pooltagscan.stats", None)  # import now fails
    with pytest.raises(exceptions.MissingModuleException, match="pip install pooltagscan"):
        plugin.run()


def test_option_choices_are_pooltagscan_s(plugin_class):
    """The plugin spells its choices out (to load without numpy); they must not drift."""
    from pooltagscan import records, scan, stats

    module = sys.modules[plugin_class.__module__]
    assert module.LAYOUT_CHOICES == scan.LAYOUT_CHOICES
    assert module.CONFIDENCE_NAMES == records.CONFIDENCE_NAMES
    assert module.POOL_NAMES == records.POOL_NAMES
    assert module.STATE_NAMES == records.STATE_NAMES
    assert module.SOURCE_NAMES == records.SOURCE_NAMES
    assert module.SORT_KEYS == stats.SORT_KEYS
    assert tuple(module.STATS_HEADINGS) == stats.COLUMNS


def test_progress_goes_through_volatility(plugin_class):
    ctx = contexts.Context()
    ctx.config["automagic.LayerStacker.single_location"] = (DUMPS / "win7-x64.raw").as_uri()
    seen: list[tuple[float, str]] = []
    magics = automagic.choose_automagic(automagic.available(ctx), plugin_class)
    plugin = plugins.construct_plugin(
        ctx, magics, plugin_class, "plugins", lambda pct, what: seen.append((pct, what)), None
    )
    grid_rows(plugin)
    scanning = [pct for pct, what in seen if what == "Scanning pool pages"]
    assert scanning and scanning == sorted(scanning) and scanning[-1] == 100.0


def test_versions_are_declared(plugin_class):
    assert plugin_class._required_framework_version == (2, 26, 0)
    assert plugin_class._version == (1, 1, 0)
    assert framework.interface_version()[0] == 2


# ---------------------------------------------------------------- the vol command


def vol(*args: str, tmp: Path, python_prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = python_prefix or (str(Path(sys.executable).with_name("vol")),)
    return subprocess.run(
        [*command, "-q", "--offline", "-p", str(PLUGIN_DIR), *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")},
        cwd=tmp,
        timeout=120,
    )


def test_vol_json_renderer(tmp_path):
    dump = DUMPS / "win11-segheap-x64.raw"
    proc = vol("-r", "json", "-f", str(dump), "pooltagscan.PoolTagScan", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    got = [json_row(r) for r in rows]
    assert got == standalone(dump)


def test_vol_csv_renderer_on_a_minidump(tmp_path):
    dump = FORMATS / "minidump-x64.dmp"
    proc = vol("-r", "csv", "-f", str(dump), "pooltagscan.PoolTagScan", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    want = standalone(dump)
    assert [int(r["Offset"], 16) for r in rows] == [w["offset"] for w in want]
    assert [r["Tag"] for r in rows] == [w["tag"] for w in want]
    assert rows[0]["Offset"].startswith("0xffff")  # kernel virtual addresses, hex


def test_vol_stats_and_tag_options(tmp_path):
    dump = FORMATS / "crash-kernel-bitmap-x64.dmp"
    proc = vol("-r", "json", "-f", str(dump), "pooltagscan.PoolTagScan", "--stats", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = [{k: v for k, v in r.items() if k != "__children"} for r in json.loads(proc.stdout)]
    assert got == standalone_stats(dump, TagDatabase.load([]))
    # --tags (the plugin's name) and --tag (the CLI's) in one command line: one list
    proc = vol("-r", "pretty", "-f", str(dump), "pooltagscan.PoolTagScan", "--tags", "Pro?",
               "--tag", "Thr*", "--min-confidence", "high", tmp=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("*")]
    want = standalone(dump, record_filter=RecordFilter.from_names(["Pro?", "Thr*"], "high"))
    assert len(lines) == len(want) > 10
    assert {line.split("|")[2].strip() for line in lines} == {"Proc", "Thre"}


def test_vol_on_a_foreign_file(tmp_path):
    path = tmp_path / "case.zip"
    shutil.copyfile(FORMATS / "formats.json", tmp_path / "x.json")
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.write(tmp_path / "x.json", "memory.raw")
    proc = vol("-f", str(path), "pooltagscan.PoolTagScan", tmp=tmp_path)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1
    assert f"pooltagscan: {path}: this is a zip archive, not a memory dump" in errors[0]


def test_vol_without_pooltagscan_installed(tmp_path):
    """The plugin loads, and running it says which package to install."""
    script = tmp_path / "vol_without_pooltagscan.py"
    script.write_text(
        "import sys\n"
        "sys.modules['pooltagscan'] = None  # any import of it now raises ImportError\n"
        "from volatility3.cli import main\n"
        "main()\n"
    )
    proc = vol(
        "-f", str(DUMPS / "xp-x86.raw"), "pooltagscan.PoolTagScan",
        tmp=tmp_path, python_prefix=(sys.executable, str(script)),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Volatility could not import a necessary module: pooltagscan" in proc.stderr
    assert "pip install pooltagscan" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data absent")
def test_vol_on_the_real_arm64_minidump(tmp_path):
    dump = shared_data_dir() / "win11-arm64-triage.dmp"
    if not dump.is_file():
        pytest.skip("win11-arm64-triage.dmp absent")
    proc = vol("-r", "json", "-f", str(dump), "pooltagscan.PoolTagScan", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = [json_row(r) for r in json.loads(proc.stdout)]
    assert got == standalone(dump)
    assert {"offset": 0xFFFFBB8EBA5FB3A0, "tag": "Driv"}.items() <= next(
        r for r in got if r["offset"] == 0xFFFFBB8EBA5FB3A0
    ).items()


def test_tag_and_tags_are_one_list(plugin_class):
    """`--tag` is the CLI's name, `--tags` the plugin's: both work, and they add up."""
    dump = DUMPS / "win7-x86.raw"
    both = plugin_records(plugin_class, dump, tags=["Pro?"], tag=["Thr*"])
    assert {r["tag"] for r in both} == {"Proc", "Thre"}
    assert both == standalone(dump, record_filter=RecordFilter.from_names(["Pro?", "Thr*"]))
    alone = plugin_records(plugin_class, dump, tag=["Thr*"])
    assert alone == [r for r in both if r["tag"] == "Thre"]


def test_garbage_logs_the_cli_s_warnings(plugin_class, tmp_path, caplog):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"pool leak notes, not memory\n" * 300)
    _, plugin = construct(plugin_class, notes, stats=True)
    _, rows = grid_rows(plugin)
    assert rows == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if w.startswith("pooltagscan:")] == [
        f"pooltagscan: {notes}: this looks like a text file, not a memory dump",
        (
            f"pooltagscan: {notes}: no pool structure proven in the sampled pages; results are "
            "unlikely"
        ),
    ]


def test_sort_is_refused_for_records_as_in_the_cli(plugin_class, caplog):
    """Records come in scan order: a sort the plugin would ignore is an error, as in the
    CLI; --stats rows follow it."""
    dump = DUMPS / "win7-x86.raw"
    _, plugin = construct(plugin_class, dump, sort="tag")
    _, rows = grid_rows(plugin)
    assert rows == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "pooltagscan: --sort orders --stats and --tracker rows; records come in scan order"
    ]
    _, plugin = construct(plugin_class, dump, stats=True, sort="tag")
    columns, rows = grid_rows(plugin)
    tags = [row[columns.index("Tag")] for row in rows]
    assert len(tags) > 20 and tags == sorted(tags)
