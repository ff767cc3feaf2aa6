"""Files written whole or not at all; local files opened only when they are regular files."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from typing import BinaryIO

from converter.errors import BadInputError


def write_file_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a temporary file beside `path`, fsync, then rename over it.

    A reader sees the old content or the new one, never a half-written file.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path) + "-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """ "a FIFO", "a directory"... for messages."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_regular(path: str, what: str, root: str | None = None) -> os.stat_result:
    """Stat `path` (following symlinks) and refuse anything but a regular file, before it is opened.

    Opening a FIFO for reading would block until a writer appears, and a
    device (/dev/zero, /dev/urandom) never ends: both are refused with one
    BadInputError line naming `what`. A symlink is followed only to a
    regular file; when `root` is given and the link leads outside it, a
    warning names the target. FileNotFoundError passes through.
    """
    try:
        lst = os.lstat(path)
    except NotADirectoryError:
        raise FileNotFoundError(path) from None
    linked = stat.S_ISLNK(lst.st_mode)
    target = os.path.realpath(path) if linked else path
    try:
        st = os.stat(path) if linked else lst
    except FileNotFoundError:
        raise BadInputError(f"{what}: is a symlink to {target}, which does not exist") from None
    except OSError as e:  # a symlink loop, a permission problem on the way
        raise BadInputError(f"{what}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        behind = f"a symlink to {target}, which is " if linked else ""
        raise BadInputError(f"{what}: is {behind}{file_kind(st.st_mode)}, not a regular file")
    if linked and root is not None and not _inside(target, os.path.realpath(root)):
        logging.getLogger("zconv").warning(f"{what}: is a symlink that leaves the layout, to {target}")
    return st


def open_regular(path: str, what: str, root: str | None = None) -> BinaryIO:
    """Open a file for reading once `check_regular` says it is a regular file.

    The open itself is non-blocking and the opened file is checked again
    (fstat), so a file swapped for a FIFO in between cannot hang the reader.
    """
    check_regular(path, what, root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise BadInputError(f"{what}: is a directory, not a regular file") from None
    except PermissionError as e:
        raise BadInputError(f"{what}: cannot be read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInputError(f"{what}: is {file_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
