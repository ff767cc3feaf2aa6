"""Read locks on a containers/storage store, as its pkg/lockfile takes them.

containers/storage guards each of its stores with a lock file and a POSIX
(fcntl) record lock on the whole file: readers F_RDLCK, writers F_WRLCK.
`overlay-layers/layers.lock` guards the layer records and the layers'
files (a `podman rmi` or a layer commit holds it for writing);
`overlay-images/images.lock` the image records and their big-data files;
`storage.lock` in the graph root the graph driver itself.

While a source reads a store it holds read locks on the layer and image
stores, so no writer can change what it streams. `storage.lock` is taken
first and released once the others are held: containers/storage writers
take it for the whole of a driver operation, so waiting on it means waiting
for one in flight, while holding it would stop every podman command.

POSIX locks belong to the process and are dropped when any descriptor of the
file closes, so the process opens each lock file once (`_HELD` counts the
holders) and closes it when the last one releases.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from typing import Callable

from converter.errors import BadInputError

DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "ZCONV_STORAGE_LOCK_TIMEOUT"


def lock_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise BadInputError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    return max(value, 0.0)


# path -> [fd, holders]: per process, because POSIX locks are per process.
_HELD: dict[str, list[int]] = {}


def say_on_stderr(msg: str) -> None:
    print(f"zconv: {msg}", file=sys.stderr, flush=True)


class ReadLocks:
    """Shared locks on several lock files, taken in order, waited for up to a timeout."""

    def __init__(
        self,
        paths: list[str],
        what: str,
        timeout: float | None = None,
        say: Callable[[str], None] = say_on_stderr,
        poll: float = 0.1,
    ) -> None:
        self.paths = paths
        self.what = what
        self.timeout = lock_timeout() if timeout is None else timeout
        self._say = say
        self._poll = poll
        self._fds: dict[str, int] = {}

    def _open(self, path: str) -> int | None:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # a store never written to has no lock file yet, and nothing to change
        except OSError as e:
            raise BadInputError(f"{self.what}: cannot open lock file {path} ({e.strerror})") from None

    def acquire(self, path: str, deadline: float) -> None:
        held = _HELD.get(path)
        if held is not None:
            held[1] += 1
            self._fds[path] = held[0]
            return
        fd = self._open(path)
        if fd is None:
            return
        told = False
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise BadInputError(f"{self.what}: cannot lock {path} ({e.strerror})") from None
                now = time.monotonic()
                if now >= deadline:
                    raise BadInputError(
                        f"{self.what}: {path} is still locked for writing by another process after "
                        f"{self.timeout:g}s (a podman build, pull or rmi?); retry later or raise {TIMEOUT_ENV}"
                    )
                if not told:
                    self._say(
                        f"waiting for {path}: the store is locked for writing by another process "
                        f"(giving up after {self.timeout:g}s)"
                    )
                    told = True
                time.sleep(min(self._poll, max(deadline - now, 0.0)))
        except BaseException:
            os.close(fd)
            raise
        self._fds[path] = fd
        _HELD[path] = [fd, 1]

    def __enter__(self) -> ReadLocks:
        deadline = time.monotonic() + self.timeout
        try:
            for p in self.paths:
                self.acquire(p, deadline)
        except BaseException:
            self.release()
            raise
        return self

    def release(self, path: str | None = None) -> None:
        for p in [path] if path is not None else list(self._fds):
            if self._fds.pop(p, None) is None:
                continue
            held = _HELD.get(p)
            if held is None:
                continue
            held[1] -= 1
            if held[1] <= 0:
                del _HELD[p]
                os.close(held[0])  # closing drops the process's lock on the file

    def __exit__(self, *exc: object) -> None:
        self.release()
