"""Files written whole or not at all."""

from __future__ import annotations

import os
import tempfile


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
