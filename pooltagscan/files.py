"""The one way user-named input files are opened: read-only, checked, one descriptor kept.

Evidence must never change because we looked at it, and must not change under us
unnoticed. So every input (dump, driver, tag list, rule file, saved statistics) is
opened here:

- it is `stat`ed before it is opened, so a FIFO, a device or a socket is refused without
  ever being opened (opening a FIFO for reading blocks until a writer appears), and
  `fstat`ed again after, so a file swapped in between is refused too;
- the descriptor is `O_RDONLY` (with `O_NOATIME` where the kernel allows it, so not even
  the access time moves), and is kept for the whole scan: windows are read with `pread`
  on it, never by reopening the path, so a file renamed over the dump mid-scan cannot
  mix two files' bytes;
- `changed()` compares the file with what it was when opened (size, mtime, and which
  file the path names now) so the shells can report a dump that shrank, grew or was
  replaced;
- the identity (device, inode) of every input opened is remembered, so the output
  layer can refuse to replace an input, whichever name (hard link, symlink) it was
  given by.

Every way a path can be unusable becomes an InputError whose text names the file and
the problem in the same words whatever the command.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pooltagscan.errors import InputError

if TYPE_CHECKING:
    from typing import Self

try:
    import fcntl
except ImportError:  # not POSIX: no O_NONBLOCK to clear either
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class FileId:
    """What makes two names the same file: its device and inode."""

    device: int
    inode: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileId:
        return cls(info.st_dev, info.st_ino)


# Identities of the inputs this process has opened (see the module docstring).
_OPENED: set[FileId] = set()


def opened_inputs() -> frozenset[FileId]:
    """Every input file this process has opened so far."""
    return frozenset(_OPENED)


def file_id(path: str | os.PathLike[str]) -> FileId | None:
    """The identity of the file `path` names (symlinks followed), None if there is none."""
    try:
        return FileId.of(os.stat(path))
    except (OSError, ValueError):
        return None


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _check_mode(path: str, info: os.stat_result, kind: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise InputError(path, f"is a directory, not {kind}")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(path, f"is not a regular file ({_kind_of(info.st_mode)})")


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot access: {getattr(exc, 'strerror', None) or exc}") from None


def regular_file(path: str | os.PathLike[str], kind: str) -> tuple[str, int]:
    """(path, size) of an existing regular file; `kind` names what was expected."""
    path = os.fspath(path)
    info = _stat(path)
    _check_mode(path, info, kind)
    return path, info.st_size


_BASE_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOATIME = getattr(os, "O_NOATIME", 0)


def _open_readonly(path: str) -> int:
    """A read-only descriptor; non-blocking while it is opened (a FIFO swapped in after
    the stat must not block the open), with O_NOATIME when we own the file."""
    flags = _BASE_FLAGS | _NONBLOCK
    if _NOATIME:
        try:
            return os.open(path, flags | _NOATIME)
        except PermissionError:
            pass  # O_NOATIME needs ownership; a plain read-only open may still work
    return os.open(path, flags)


class InputFile:
    """A user's file opened read-only, with the facts it had when opened."""

    def __init__(self, path: str, fd: int, info: os.stat_result):
        self.path = path
        self.fd = fd
        self.info = info

    @classmethod
    def open(cls, path: str | os.PathLike[str], kind: str = "a file") -> InputFile:
        """Open a regular file for reading; InputError (naming it) for anything else."""
        path = os.fspath(path)
        _check_mode(path, _stat(path), kind)
        try:
            fd = _open_readonly(path)
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except OSError as exc:
            raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            _check_mode(path, info, kind)
            if _NONBLOCK and fcntl is not None:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        _OPENED.add(FileId.of(info))
        return cls(path, fd, info)

    @property
    def size(self) -> int:
        """The size when the file was opened."""
        return self.info.st_size

    @property
    def identity(self) -> FileId:
        return FileId.of(self.info)

    def _error(self, exc: OSError, what: str) -> InputError:
        return InputError(self.path, f"cannot read {what}: {exc.strerror or exc}")

    def pread(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer at the end of the file)."""
        if length <= 0:
            return b""
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise self._error(exc, f"at offset {offset:#x}") from None
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while data and got < length:  # pread may return less than asked before EOF
            try:
                data = os.pread(self.fd, length - got, offset + got)
            except OSError as exc:
                raise self._error(exc, f"at offset {offset + got:#x}") from None
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def readinto(self, buffer: memoryview, offset: int) -> int:
        """Fill `buffer` from `offset`; returns the bytes read (short only at EOF)."""
        total = len(buffer)
        got = 0
        while got < total:
            try:
                n = os.preadv(self.fd, [buffer[got:]], offset + got)
            except OSError as exc:
                raise self._error(exc, f"at offset {offset + got:#x}") from None
            if n == 0:
                break
            got += n
        return got

    def read_prefix(self, limit: int) -> bytes:
        """At most `limit` + 1 bytes from the start (one more, so callers can tell the
        file is larger than they accept)."""
        return self.pread(0, limit + 1)

    def changed(self) -> str | None:
        """How the file differs from when it was opened, or None if it does not."""
        try:
            now = os.fstat(self.fd)
        except OSError as exc:
            return f"can no longer be read ({exc.strerror or exc})"
        problems = []
        if now.st_size < self.info.st_size:
            problems.append(f"shrank from {self.info.st_size} to {now.st_size} bytes")
        elif now.st_size > self.info.st_size:
            problems.append(f"grew from {self.info.st_size} to {now.st_size} bytes")
        elif now.st_mtime_ns != self.info.st_mtime_ns:
            problems.append("was modified")
        try:
            named = FileId.of(os.stat(self.path))
        except OSError:
            problems.append("was deleted or renamed")
        else:
            if named != self.identity:
                problems.append("was replaced by another file")
        return " and ".join(problems) if problems else None

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            finally:
                self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # A worker started by fork inherits the descriptor; one started by spawn gets the
    # path and reopens it, refusing a different file behind the same name.
    def __getstate__(self) -> dict:
        return {"path": self.path, "identity": self.identity, "info": self.info}

    def __setstate__(self, state: dict) -> None:
        fresh = InputFile.open(state["path"])
        if fresh.identity != state["identity"]:
            fresh.close()
            raise InputError(state["path"], "was replaced by another file during the scan")
        self.path, self.fd, self.info = fresh.path, fresh.fd, state["info"]


def read_limited(path: str, limit: int, kind: str = "a file") -> bytes:
    """At most `limit` + 1 bytes of a regular file (one more, so callers can tell it is
    too big); the file is closed again at once."""
    with InputFile.open(path, kind) as source:
        return source.read_prefix(limit)
