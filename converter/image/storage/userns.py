"""Opening a rootless store's files from inside its user namespace.

A rootless podman store belongs to the user, but the files of its layers
belong to the user's subordinate uids (container uid 5 is host uid 100004
with `zt:100000:65536` in /etc/subuid): a 0600 file of container uid 5 or a
file under a 0700 directory cannot be opened by the user. podman and buildah
read them as root of the user namespace they map those uids in
(`podman unshare`, `buildah unshare`).

zconv does not re-run itself there. It starts one small helper under
`podman unshare` (stdlib only, `_HELPER` below) that is root of that
namespace, and asks it over a socketpair, one request at a time, to resolve
a directory (`realpath`) or open a file with O_NOFOLLOW; the helper sends
back the open file descriptor itself (SCM_RIGHTS). Everything else, the store's
records, the read locks, the tar-split, the DiffID check, the conversion and
every file written, stays in the user's own process, as the user. A
descriptor opened by the helper reads the same bytes as root would read, so
the rebuilt tar is the one whose sha256 the store recorded.

The helper must be started before the process takes the store's read locks:
`podman unshare` opens the user's store and takes its layer and image locks
for writing when it sets up the namespace (no pause process yet) and again
as it exits; podman 4.3 was seen waiting forever at both points for the read
locks of the process that started it. So one helper serves the whole process
(refcounted by the sources using it: a second source opened while the first
holds its locks reuses it), it is stopped after the last source released
its locks, and its podman is never waited for while locks are held.
"""

from __future__ import annotations

import array
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

from converter.errors import BadInputError

# Runs as `python -I -S -c _HELPER` under `podman unshare`; fd 0 is a SOCK_SEQPACKET socket.
# Requests: b"R" + path (realpath) or b"O" + path (open O_RDONLY|O_NOFOLLOW).
# Answers: b"r" + path; b"o" with the descriptor attached; b"e" + errno as text.
_HELPER = r"""
import array, os, socket, sys
s = socket.socket(fileno=0)
s.send(b"ready")
while True:
    try:
        req = s.recv(65536)
    except OSError:
        break
    if not req:
        break
    op, path = req[:1], req[1:]
    try:
        if op == b"R":
            s.send(b"r" + os.fsencode(os.path.realpath(path)))
        elif op == b"O":
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                s.sendmsg([b"o"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            finally:
                os.close(fd)
        else:
            s.send(b"e22")
    except OSError as e:
        try:
            s.send(b"e%d" % (e.errno or 5))
        except OSError:
            break
"""


def needs_user_namespace(graphroot: str) -> bool:
    """A rootless store read from outside its user namespace: the store is ours and we are not root.

    (Inside `podman unshare` the euid is 0: the files are readable as they are.)
    """
    if os.geteuid() == 0:
        return False
    try:
        return os.stat(graphroot).st_uid == os.geteuid()
    except OSError:
        return False


class LocalFiles:
    """The files as this process sees them."""

    via = ""

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def open(self, path: str) -> int:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)


class NamespaceFiles:
    """The files as root of the rootless store's user namespace sees them, through the helper."""

    via = " (read in the store's user namespace through `podman unshare`)"

    def __init__(self, sock: socket.socket, proc: subprocess.Popen, stderr_file: object) -> None:
        self._sock = sock
        self._proc = proc
        self._stderr = stderr_file
        self._lock = threading.Lock()
        self.users = 0

    def _ask(self, op: bytes, path: str) -> tuple[bytes, int | None]:
        with self._lock:
            try:
                self._sock.send(op + os.fsencode(path))
                msg, anc, _flags, _addr = self._sock.recvmsg(
                    65536, socket.CMSG_SPACE(array.array("i").itemsize), socket.MSG_CMSG_CLOEXEC
                )
            except OSError as e:
                raise BadInputError(
                    f"the helper reading the rootless store under `podman unshare` failed ({e.strerror})"
                ) from None
        fd = None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                for extra in fds[1:]:
                    os.close(extra)
                fd = fds[0] if fds else None
        if not msg:
            raise BadInputError(
                "the helper reading the rootless store under `podman unshare` ended unexpectedly"
                + _last_line(self._stderr)
            )
        if msg[:1] == b"e":
            if fd is not None:
                os.close(fd)
            try:
                err = int(msg[1:])
            except ValueError:
                err = 5
            raise OSError(err, os.strerror(err), path)
        return msg, fd

    def realpath(self, path: str) -> str:
        msg, fd = self._ask(b"R", path)
        if fd is not None:
            os.close(fd)
        return os.fsdecode(msg[1:])

    def open(self, path: str) -> int:
        msg, fd = self._ask(b"O", path)
        if msg[:1] != b"o" or fd is None:
            if fd is not None:
                os.close(fd)
            raise OSError(5, "no descriptor from the user-namespace helper", path)
        return fd

    def stop(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
        # The helper ends at EOF. podman unshare then takes the store's locks as it exits, so it is
        # not waited for: another podman holding them must not keep zconv from finishing; the
        # process is reaped if it is done by now, else it finishes on its own.
        try:
            self._proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        close = getattr(self._stderr, "close", None)
        if close is not None:
            close()


def _last_line(f: object) -> str:
    try:
        f.seek(0)  # type: ignore[attr-defined]
        lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]  # type: ignore[attr-defined]
    except (OSError, AttributeError, ValueError):
        return ""
    errors = [ln for ln in lines if "level=warning" not in ln]
    return f": {(errors or lines)[-1]}" if lines else ""


# One helper per process (POSIX locks and the user namespace are per process too); see the module doc.
_SHARED: dict[str, NamespaceFiles] = {}
_SHARED_LOCK = threading.Lock()
_TOLD: set[str] = set()


def _say_once(msg: str) -> None:
    # A notice, not a warning: on a terminal only, like the progress line (scripts and CI logs stay quiet).
    if msg in _TOLD:
        return
    _TOLD.add(msg)
    if getattr(sys.stderr, "isatty", lambda: False)():
        print(f"zconv: {msg}", file=sys.stderr, flush=True)


def _start(timeout: float, say: Callable[[str], None]) -> NamespaceFiles:
    podman = shutil.which("podman")
    if podman is None:
        raise OSError("podman is not installed")
    return start_helper([podman, "unshare"], timeout, say)


def start_helper(prefix: list[str], timeout: float, say: Callable[[str], None]) -> NamespaceFiles:
    """The helper run by `prefix` (`podman unshare`), once it says it is ready; OSError saying why not."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    errf = tempfile.TemporaryFile()
    try:
        try:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-S", "-c", _HELPER],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=errf,
                close_fds=True,
                start_new_session=True,  # a Ctrl-C reaches us; we stop the helper by closing its socket
            )
        finally:
            theirs.close()
        started = time.monotonic()
        deadline = started + timeout
        told = False
        while True:
            ready, _, _ = select.select([ours], [], [], 0.2)
            if ready:
                msg = ours.recv(64)
                if msg == b"ready":
                    return NamespaceFiles(ours, proc, errf)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise OSError(f"`podman unshare` failed (exit code {proc.returncode}){_last_line(errf)}")
            if proc.poll() is not None:
                raise OSError(f"`podman unshare` failed (exit code {proc.returncode}){_last_line(errf)}")
            now = time.monotonic()
            if not told and now - started >= 2:
                say(
                    "waiting for `podman unshare` to start (it waits for the store's locks: a podman build, "
                    f"pull or rmi?; giving up after {timeout:g}s)"
                )
                told = True
            if now >= deadline:
                proc.kill()
                proc.wait()
                raise OSError(f"`podman unshare` did not start within {timeout:g}s (is the store locked?)")
    except BaseException:
        ours.close()
        errf.close()
        raise


def acquire(
    graphroot: str, timeout: float, say: Callable[[str], None]
) -> tuple[LocalFiles | NamespaceFiles, str | None]:
    """The way to open this store's files, and why not through the namespace when that failed.

    Call before taking the store's locks. A store we can read as we are gets LocalFiles.
    """
    if not needs_user_namespace(graphroot):
        return LocalFiles(), None
    with _SHARED_LOCK:
        helper = _SHARED.get("helper")
        if helper is None:
            try:
                helper = _start(timeout, say)
            except OSError as e:
                # Not fatal yet: a rootless store whose files all belong to the user reads as it is.
                return LocalFiles(), str(e)
            _SHARED["helper"] = helper
        helper.users += 1
    _say_once(f"{graphroot} is a rootless store: reading its layers' files in its user namespace (podman unshare)")
    return helper, None


def release(files: LocalFiles | NamespaceFiles) -> None:
    """After the store's locks are released: stop the helper when no source uses it any more."""
    if not isinstance(files, NamespaceFiles):
        return
    with _SHARED_LOCK:
        files.users -= 1
        if files.users > 0:
            return
        if _SHARED.get("helper") is files:
            del _SHARED["helper"]
    files.stop()
