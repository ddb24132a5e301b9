"""The SIGBUS guard: a dump cut short under a mapped scan is a one-line error, not a crash.

Scans map their windows (inputs/mapguard.py). A page the file no longer holds raises
SIGBUS on access; under the guard it reads zeros and the window ends in `Faulted`, which
the image turns into "the file shrank". Faults outside a guarded range must still kill
the process, as they would without the guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from pooltagscan import cli
from pooltagscan.inputs import base, mapguard

ROOT = Path(__file__).resolve().parent.parent
DUMPS = ROOT / "samples" / "dumps"
SAMPLE = DUMPS / "win10-1809-x64.raw"

needs_guard = pytest.mark.skipif(not mapguard.available(), reason="the guard is not built here")


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    """A file of non-zero bytes, so that zeros read back can only come from the guard."""
    data = np.random.default_rng(7).integers(1, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "cut.raw"
    path.write_bytes(data)
    return path, data


@needs_guard
@pytest.mark.parametrize("offset", [0, 0x2FF000])
def test_pages_cut_off_read_zeros_and_the_window_says_where(tmp_path, offset):
    path, data = _file(tmp_path, 4 << 20)
    end = offset + 0x10064  # inside a page: the kernel serves that page's tail as zeros
    fd = os.open(path, os.O_RDONLY)
    try:
        with (
            pytest.raises(mapguard.Faulted) as caught,
            mapguard.mapped(fd, offset, 1 << 20, guard=True) as view,
        ):
            os.truncate(path, end)
            seen = bytes(view)  # read in address order
    finally:
        os.close(fd)
    kept = end - offset
    assert seen[:kept] == data[offset:end]
    assert seen[kept:] == bytes((1 << 20) - kept)
    assert caught.value.offset == offset + 0x11000  # the first page past the new end


@needs_guard
def test_a_page_touched_at_its_end_first_is_reported_from_its_start(tmp_path):
    """A copy may read a page's last bytes before its first (memcpy does): the guard
    reports where the file's bytes stopped, the start of the page, not the byte that
    happened to fault first."""
    path, _ = _file(tmp_path, 1 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        with (
            pytest.raises(mapguard.Faulted) as caught,
            mapguard.mapped(fd, 0, 1 << 20, guard=True) as view,
        ):
            os.truncate(path, 0x10000)
            assert bytes(view[0x12FF0:0x13000]) == bytes(16)
            assert bytes(view[0x11FF8:0x12000]) == bytes(8)
    finally:
        os.close(fd)
    assert caught.value.offset == 0x11000


@needs_guard
def test_without_a_free_slot_the_bytes_are_copied(tmp_path, monkeypatch):
    path, data = _file(tmp_path, 1 << 20)
    monkeypatch.setattr(mapguard._mapguard, "arm", lambda view: -1)
    fd = os.open(path, os.O_RDONLY)
    try:
        with mapguard.mapped(fd, 4096, 8192, guard=True) as view:
            assert bytes(view) == data[4096 : 4096 + 8192]
        os.truncate(path, 4096 + 100)
        with pytest.raises(mapguard.Faulted) as caught, mapguard.mapped(fd, 4096, 8192, True):
            pass
    finally:
        os.close(fd)
    assert caught.value.offset == 4096 + 100


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "probe.py"
    script.write_text(
        "import os\nfrom pooltagscan.inputs import mapguard\n"
        f"path = {str(tmp_path / 'cut.raw')!r}\nfd = os.open(path, os.O_RDONLY)\n"
        + textwrap.dedent(body)
    )
    return subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=60
    )


@needs_guard
def test_a_fault_outside_every_guarded_range_still_kills(tmp_path):
    """The guard answers only its own ranges: an unguarded mapping of the same file,
    read past the new end while a guarded one is armed, dies of SIGBUS."""
    _file(tmp_path, 1 << 20)
    done = _run(
        tmp_path,
        """
        with mapguard.mapped(fd, 0, 1 << 20, guard=True) as guarded:
            with mapguard.mapped(fd, 0, 1 << 20, guard=False) as bare:
                os.truncate(path, 4096)
                print(bytes(guarded[8192:8200]), flush=True)
                print(bytes(bare[8192:8200]), flush=True)
        """,
    )
    assert done.returncode == -7  # SIGBUS
    assert done.stdout == repr(bytes(8)) + "\n"


@needs_guard
def test_a_view_kept_past_its_block_keeps_the_guard(tmp_path):
    """`with image.words(w) as words:` leaves `words` bound after the block: the mapping
    lives on with it, and so must its guard."""
    _file(tmp_path, 1 << 20)
    done = _run(
        tmp_path,
        """
        try:
            with mapguard.mapped(fd, 0, 1 << 20, guard=True) as view:
                kept = view[0:]
        except mapguard.Faulted:
            raise SystemExit("faulted before the cut")
        os.truncate(path, 4096)
        print(bytes(kept[8192:8200]))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == repr(bytes(8)) + "\n"


@needs_guard
def test_dump_cut_while_its_window_is_mapped_is_one_line(tmp_path, monkeypatch, capsys):
    """The scan itself: the file is cut after the window was mapped, so the scanner
    meets the missing pages (not the mapping call); the batch goes on."""
    victim = tmp_path / "victim.raw"
    victim.write_bytes(SAMPLE.read_bytes())
    inode = victim.stat().st_ino
    original = mapguard.mapped
    done = []

    @contextmanager
    def cutting(fd, offset, length, guard):
        with original(fd, offset, length, guard) as view:
            if not done and os.fstat(fd).st_ino == inode:
                done.append(True)
                os.truncate(victim, 64 * 1024)
            yield view

    monkeypatch.setattr(base.mapguard, "mapped", cutting)
    good = DUMPS / "win7-x64.raw"
    code = cli.main(["scan", str(victim), str(good), "--stats", "--format", "json", "-q"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines() == [
        (
            f"pooltagscan: error: {victim}: the file shrank during the scan (it was "
            f"{SAMPLE.stat().st_size} bytes, it is now 65536); the scan stopped at offset 0x10000"
        )
    ]
    assert json.loads(out)["dump"] == str(good)


def test_without_the_guard_the_windows_are_read(tmp_path, monkeypatch):
    """Where the guard is not built the main process reads windows with pread into one
    reused buffer (never an unguarded mapping), with the same bytes."""
    monkeypatch.setattr(mapguard, "_mapguard", None)
    monkeypatch.setattr(mapguard, "mapped", None)  # any mapping attempt fails loudly
    from pooltagscan.inputs import open_image

    image = open_image(SAMPLE)
    window = next(image.windows(1 << 20))
    with image.words(window) as words:
        got = words.tobytes()
    image.close()
    assert got == SAMPLE.read_bytes()[window.file_offset : window.file_offset + window.length]


def test_a_file_that_cannot_be_mapped_is_read(monkeypatch):
    """Some mounts refuse mmap (FUSE with direct I/O, as E01 mounts can be): the scan
    reads those files with pread instead, to the same records."""
    from pooltagscan.inputs import open_image
    from pooltagscan.scan import prepare, run

    def scan() -> bytes:
        prepared = prepare(open_image(SAMPLE))
        return np.concatenate(list(run(prepared))).tobytes()

    mapped = scan()

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mapguard.mmap, "mmap", refuse)
    assert scan() == mapped


def test_an_error_of_the_reader_is_not_taken_for_the_mapping(tmp_path):
    """Only the mapping call falls back: an OSError raised by the code reading the
    window (a closed pipe, say) goes through as itself."""
    from pooltagscan.inputs import open_image

    image = open_image(SAMPLE)
    window = next(image.windows(1 << 20))
    with pytest.raises(BrokenPipeError), image.words(window):
        raise BrokenPipeError(32, "Broken pipe")
    assert "_unmappable" not in image.__dict__
    image.close()
