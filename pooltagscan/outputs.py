"""Where results are written, so that writing them can never harm the evidence.

Every output a command writes (`-o`, `--html`, and any later one) goes through an
`Outputs` set:

- an output that is the same file as an input (compared by device and inode, so a hard
  link or a symlink to the dump is caught too) is refused before anything is written,
  and checked again just before the result is put in place, against every input the
  run opened (the VMware state file beside a .vmem, rule files in a folder, tag lists
  named by the environment...);
- a regular-file output is written to a temporary file beside the target and renamed
  over it only when the command succeeds, so a failed or interrupted run leaves an
  existing file exactly as it was; a symlinked target is written through (the file it
  names is replaced, the link stays);
- outputs that are not regular files (`/dev/stdout`, a FIFO, a terminal) are written
  directly, since they cannot be renamed into;
- a write that fails (full disk, I/O error) raises `OutputError` naming the output and
  the OS's words, for one line and exit code 2; a closed pipe stays a BrokenPipeError,
  which the CLI treats as the reader having had enough.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from pooltagscan.errors import OutputError
from pooltagscan.files import FileId, file_id, opened_inputs

STDOUT = "standard output"


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _stdout_file() -> FileId | None:
    """The identity of the regular file standard output is redirected to, if it is."""
    try:
        info = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return FileId.of(info) if stat.S_ISREG(info.st_mode) else None


class OutputStream(io.TextIOBase):
    """A text stream that turns write failures into OutputError naming its target."""

    def __init__(self, raw: TextIO, label: str):
        super().__init__()
        self._raw = raw
        self.label = label
        self.written = False

    def writable(self) -> bool:
        return True

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write is an OutputError naming the target; a closed pipe stays a
        BrokenPipeError (the CLI ends quietly on it)."""
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(self.label, f"cannot write: {_strerror(exc)}") from None

    def write(self, text: str) -> int:
        with self._writing():
            count = self._raw.write(text)
        if text:
            self.written = True
        return count

    def flush(self) -> None:
        with self._writing():
            self._raw.flush()

    def isatty(self) -> bool:
        try:
            return self._raw.isatty()
        except (OSError, ValueError):
            return False

    def byte_sink(self) -> Callable[[bytes], None] | None:
        """A writer of UTF-8 bytes straight into the binary stream under this one, or None
        where they would not be what writing the text gives (another encoding, a platform
        that translates newlines, a stream with no binary side). The record writers join
        their lines as bytes: encoding the text cost a copy of every byte, a tenth of a
        jsonl run."""
        raw = self._raw
        buffer = getattr(raw, "buffer", None)
        encoding = str(getattr(raw, "encoding", "") or "").lower().replace("_", "-")
        if buffer is None or encoding not in _UTF8 or os.linesep != "\n":
            return None

        def write(data: bytes) -> None:
            with self._writing():
                raw.flush()  # what was written as text comes first
                buffer.write(data)
            if data:
                self.written = True

        return write


_UTF8 = frozenset({"utf-8", "utf8"})


class OutputFile:
    """One output path: checked up front, written to a temporary file, committed last."""

    def __init__(self, option: str, path: str):
        self.option = option
        self.path = path
        self.target = os.path.realpath(path)  # write through symlinks
        self.direct = False  # a device or FIFO: written in place
        self.stream: OutputStream | None = None
        self._temp: str | None = None
        self._handle: TextIO | None = None
        self._check_target()

    def _check_target(self) -> None:
        try:
            info = os.stat(self.target)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise OutputError(self.path, f"cannot write: {_strerror(exc)}") from None
        if info is not None:
            if stat.S_ISDIR(info.st_mode):
                raise OutputError(self.path, "cannot write: it is a directory")
            # /dev/stdout and friends name whatever the descriptor is (a pipe, or the
            # file the shell redirected to, which must be written through, not replaced).
            special = os.path.abspath(self.path).startswith(("/dev/", "/proc/"))
            self.direct = special or not stat.S_ISREG(info.st_mode)
        folder = os.path.dirname(self.target) or "."
        if not self.direct and not os.access(folder, os.W_OK | os.X_OK):
            reason = "no such folder" if not os.path.isdir(folder) else "permission denied"
            raise OutputError(self.path, f"cannot write: {reason} ({folder})")

    @property
    def identity(self) -> FileId | None:
        return file_id(self.target)

    def open(self) -> OutputStream:
        """The stream to write to (created on first use)."""
        if self.stream is not None:
            return self.stream
        try:
            if self.direct:
                handle = open(self.target, "w", encoding="utf-8", newline="")  # noqa: SIM115
            else:
                folder, name = os.path.split(self.target)
                fd, self._temp = tempfile.mkstemp(
                    prefix=f".{name}.", suffix=".pooltagscan-partial", dir=folder or "."
                )
                handle = os.fdopen(fd, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise OutputError(self.path, f"cannot write: {_strerror(exc)}") from None
        self._handle = handle
        self.stream = OutputStream(handle, self.path)
        return self.stream

    def commit(self, inputs: frozenset[FileId]) -> None:
        """Put the finished output in place (refusing to replace any input)."""
        if self.stream is None:
            self.open()  # an empty result is still a result
        assert self.stream is not None and self._handle is not None
        self.stream.flush()
        if self.direct:
            self._close()
            return
        target_id = self.identity
        if target_id is not None and target_id in inputs:
            self.discard()
            raise OutputError(
                f"{self.option} {self.path}",
                "is one of this run's input files; refusing to replace it (evidence is never "
                "overwritten; nothing was written)",
            )
        try:
            os.fsync(self._handle.fileno())
            self._apply_mode()
            self._close()
            os.replace(self._temp, self.target)
        except OSError as exc:
            self.discard()
            raise OutputError(self.path, f"cannot write: {_strerror(exc)}") from None
        self._temp = None

    def _apply_mode(self) -> None:
        """The mode the file would have had if written in place: an existing target's
        own, else 0666 minus the umask (mkstemp creates 0600)."""
        try:
            mode = stat.S_IMODE(os.stat(self.target).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(self._temp, mode)

    def _close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError:
                pass

    def discard(self) -> None:
        """Drop what was written; an existing target is left exactly as it was."""
        self._close()
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except OSError:
                pass
            self._temp = None


def refusal(output: OutputFile, what: str, path: str) -> OutputError:
    """The error for an output that is an input: nothing is written, the input is safe."""
    return OutputError(
        f"{output.option} {output.path}",
        f"is the same file as the {what} {path}; refusing to write it (evidence is never "
        "overwritten; nothing was written)",
    )


class Outputs:
    """The outputs of one command run, and the guard that keeps them off the inputs."""

    def __init__(self, targets: Iterable[tuple[str, str]]):
        self.files: dict[str, OutputFile] = {}
        seen: dict[FileId | str, str] = {}
        for option, path in targets:
            output = OutputFile(option, path)
            key: FileId | str = output.identity or output.target
            if key in seen and not output.direct:
                raise OutputError(path, f"is given to both {seen[key]} and {option}")
            seen[key] = option
            self.files[option] = output
        self.keep = False  # set by a command whose run produced a result worth keeping
        self._stdout: OutputStream | None = None

    def check_inputs(self, paths: Iterable[str], what: str = "input") -> None:
        """Refuse outputs that are the same file as one of `paths` (before any work),
        standard output included (`>> evidence.raw` would append to the evidence)."""
        for path in paths:
            identity = file_id(path)
            if identity is None:
                continue  # missing inputs are reported by the command
            if identity == _stdout_file():
                raise OutputError(
                    STDOUT,
                    f"is the same file as the {what} {path}; refusing to write to it "
                    "(evidence is never overwritten; nothing was written)",
                )
            for output in self.files.values():
                if output.direct:
                    continue
                if output.identity == identity:
                    raise refusal(output, what, path)

    def check_opened(self) -> None:
        """Refuse outputs that are a file the run has opened as an input so far (rule
        files found in a folder, a state file beside a .vmem, ...), before more work."""
        inputs = opened_inputs()
        stdout = _stdout_file()
        if stdout is not None and stdout in inputs:
            raise OutputError(
                STDOUT,
                "is one of this run's input files; refusing to write to it (evidence is "
                "never overwritten; nothing was written)",
            )
        for output in self.files.values():
            if not output.direct and output.identity in inputs:
                raise OutputError(
                    f"{output.option} {output.path}",
                    "is one of this run's input files; refusing to write it (evidence is "
                    "never overwritten; nothing was written)",
                )

    def guards(self, identity: FileId) -> OutputFile | None:
        """The output that is this file, if any (for inputs found while running)."""
        for output in self.files.values():
            if not output.direct and output.identity == identity:
                return output
        return None

    def stream(self, option: str = "-o") -> TextIO:
        """Where `option`'s output goes: its file, or standard output when not given."""
        output = self.files.get(option)
        if output is not None:
            return output.open()
        if self._stdout is None:
            self._stdout = OutputStream(sys.stdout, STDOUT)
        return self._stdout

    def given(self, option: str) -> bool:
        return option in self.files

    def commit(self) -> None:
        inputs = opened_inputs()
        for output in self.files.values():
            output.commit(inputs)
        if self._stdout is not None:
            self._stdout.flush()

    def discard(self) -> None:
        for output in self.files.values():
            output.discard()


class OutputFolder:
    """A folder of many outputs (`extract --out DIR`), kept off the evidence like `-o`.

    - refused up front when it exists and is not a folder, is the same file as an input,
      holds an input (writing among the evidence is how evidence gets replaced), or holds
      anything at all unless `force` (an earlier extraction is not mixed in by mistake);
    - each file is written to a temporary file beside its target, flushed to disk, and
      renamed into place, so a file that exists is complete; a target that is one of the
      run's inputs is never replaced (checked just before each rename);
    - `discard` removes the temporary files still open (an interrupted run), never a
      finished one.
    """

    def __init__(self, option: str, path: str, force: bool = False):
        self.option = option
        self.path = path
        self.target = os.path.realpath(path)
        self.force = force
        self._temps: set[str] = set()
        self._mode: int | None = None
        try:
            info = os.stat(self.target)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise OutputError(self._label, f"cannot write: {_strerror(exc)}") from None
        if info is not None and not stat.S_ISDIR(info.st_mode):
            raise OutputError(self._label, "exists and is not a folder; nothing was written")
        if info is not None and not force:
            try:
                busy = any(True for _ in os.scandir(self.target))
            except OSError as exc:
                raise OutputError(self._label, f"cannot read it: {_strerror(exc)}") from None
            if busy:
                raise OutputError(
                    self._label,
                    "is not empty; give an empty or new folder, or --force to write into it "
                    "(nothing was written)",
                )

    @property
    def _label(self) -> str:
        return f"{self.option} {self.path}"

    def check_inputs(self, paths: Iterable[str], what: str = "input") -> None:
        """Refuse a folder that is an input or holds one (symlinks resolved)."""
        for path in paths:
            if file_id(path) is None:
                continue
            real = os.path.realpath(path)
            if real == self.target or file_id(path) == file_id(self.target):
                raise OutputError(self._label, f"is the {what} {path}; nothing was written")
            if os.path.commonpath([real, self.target]) == self.target:
                raise OutputError(
                    self._label,
                    f"holds the {what} {path}; refusing to write among the evidence "
                    "(nothing was written)",
                )

    def create(self) -> None:
        """Make the folder (and its parents) if it does not exist yet."""
        try:
            os.makedirs(self.target, exist_ok=True)
        except OSError as exc:
            raise OutputError(self._label, f"cannot create it: {_strerror(exc)}") from None

    def _file_mode(self) -> int:
        if self._mode is None:
            umask = os.umask(0)
            os.umask(umask)
            self._mode = 0o666 & ~umask
        return self._mode

    def write(self, relative: str, chunks: Iterable[bytes]) -> int:
        """Write `chunks` to `relative` (inside the folder) atomically; bytes written.
        Raises OutputError naming the file when it cannot be written."""
        pending = self.open(relative)
        written = 0
        try:
            for chunk in chunks:
                pending.write(chunk)
                written += len(chunk)
            pending.commit()
        finally:
            pending.discard()
        return written

    def open(self, relative: str) -> PendingFile:
        """A file of the folder being written (a manifest filled as the run goes)."""
        target = os.path.join(self.target, relative)
        folder, name = os.path.split(target)
        shown = os.path.join(self.path, relative)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, temp = tempfile.mkstemp(
                prefix=f".{name}.", suffix=".pooltagscan-partial", dir=folder
            )
        except OSError as exc:
            raise OutputError(shown, f"cannot write: {_strerror(exc)}") from None
        self._temps.add(temp)
        return PendingFile(self, os.fdopen(fd, "wb"), temp, target, shown)

    def _drop(self, temp: str) -> None:
        self._temps.discard(temp)
        try:
            os.unlink(temp)
        except OSError:
            pass

    def discard(self) -> None:
        for temp in list(self._temps):
            self._drop(temp)


class PendingFile:
    """One file of an OutputFolder: written to its temporary name, renamed by `commit`."""

    def __init__(self, folder: OutputFolder, handle, temp: str, target: str, shown: str):
        self.folder = folder
        self.handle = handle
        self.temp: str | None = temp
        self.target = target
        self.shown = shown

    def write(self, data: bytes) -> None:
        try:
            self.handle.write(data)
        except OSError as exc:
            raise OutputError(self.shown, f"cannot write: {_strerror(exc)}") from None

    def commit(self) -> None:
        """Flush to disk and rename into place (never over one of the run's inputs)."""
        assert self.temp is not None
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.chmod(self.temp, self.folder._file_mode())
            identity = file_id(self.target)
            if identity is not None and identity in opened_inputs():
                raise OutputError(
                    self.shown,
                    "is one of this run's input files; refusing to replace it (evidence is "
                    "never overwritten)",
                )
            os.replace(self.temp, self.target)
        except OSError as exc:
            raise OutputError(self.shown, f"cannot write: {_strerror(exc)}") from None
        self.folder._temps.discard(self.temp)
        self.temp = None

    def discard(self) -> None:
        """Drop the temporary file unless committed."""
        if not self.handle.closed:
            try:
                self.handle.close()
            except OSError:
                pass
        if self.temp is not None:
            self.folder._drop(self.temp)
            self.temp = None
