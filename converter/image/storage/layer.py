"""A stored layer's original tar, rebuilt from its tar-split and its files.

containers/storage keeps, for each layer, the files (the driver's diff
directory) and `<layers-dir>/<id>.tar-split.gz`: gzip'd JSON lines holding
every byte of the original tar except the file payloads

    {"type":2,"payload":"<base64 raw bytes>","position":N}
    {"type":1,"name":"<path>","size":S,"payload":"<base64 crc64>","position":N}

(`name_raw`, base64, instead of `name` when the path is not UTF-8). Putting
the payloads back from the files gives the tar byte for byte, so its sha256
is the layer's DiffID. The stream below does that in 1 MiB pieces (a layer
is never held in memory) and checks the DiffID as it goes: a file changed
in the diff directory is an error naming the layer, never a different blob.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import posixpath
import stat
import zlib
from typing import Any, Iterator

from converter.errors import BadInputError
from converter.image.model import VerifyingReader, short
from converter.image.storage.userns import LocalFiles, NamespaceFiles

PIECE = 1 << 20


class LayerFiles:
    """Opens a layer's files: its own diff directory first, then the lower ones (overlay's getter order)."""

    def __init__(
        self, dirs: list[str], what: str, fs: LocalFiles | NamespaceFiles | None = None, no_userns: str | None = None
    ) -> None:
        self.dirs = dirs
        self.what = what
        # How files are opened: as we are, or in a rootless store's user namespace (userns.py);
        # no_userns says why a rootless store could not be entered, for the permission error.
        self.fs = fs or LocalFiles()
        self.no_userns = no_userns
        self._real = [self.fs.realpath(d) for d in dirs]
        self._parent_ok: dict[tuple[int, str], bool] = {}

    def _inside(self, i: int, rel_dir: str) -> bool:
        key = (i, rel_dir)
        ok = self._parent_ok.get(key)
        if ok is None:
            real = self.fs.realpath(os.path.join(self.dirs[i], rel_dir)) if rel_dir else self._real[i]
            ok = real == self._real[i] or real.startswith(self._real[i] + os.sep)
            self._parent_ok[key] = ok
        return ok

    def open(self, name: str) -> int:
        rel = posixpath.normpath("/" + name).lstrip("/")
        if not rel or rel == ".":
            raise BadInputError(f"{self.what}: tar-split names a file with an empty path")
        parent = posixpath.dirname(rel)
        for i, d in enumerate(self.dirs):
            if not self._inside(i, parent):
                continue  # a symlinked parent pointing out of the layer is not the layer's file
            try:
                fd = self.fs.open(os.path.join(d, rel))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError:
                raise BadInputError(f"{self.what}: cannot read {rel} in {d}{self.fs.via}: {self._denied()}") from None
            except OSError as e:
                raise BadInputError(f"{self.what}: cannot open {rel} in {d}{self.fs.via} ({e.strerror})") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                continue
            return fd
        raise BadInputError(f"{self.what}: file {rel} is missing from {self.dirs[0]}")

    def _denied(self) -> str:
        if self.no_userns:
            return (
                "permission denied; the files of a rootless podman store belong to your subordinate uids, and "
                f"zconv could not enter the store's user namespace ({self.no_userns}): "
                "run it as `podman unshare zconv ...` (or `buildah unshare zconv ...`)"
            )
        return (
            "permission denied; for a rootless podman store run it as `podman unshare zconv ...`, "
            "which can read every file of the store"
        )


def _pieces(tarsplit_path: str, files: LayerFiles) -> Iterator[bytes]:
    what = files.what
    try:
        fh = gzip.open(tarsplit_path, "rb")
    except OSError as e:
        raise BadInputError(f"{what}: cannot open its tar-split {tarsplit_path} ({e.strerror})") from None
    with fh:
        lineno = 0
        try:
            for line in fh:
                lineno += 1
                try:
                    entry = json.loads(line)
                    kind = entry["type"]
                except (ValueError, KeyError, TypeError):
                    raise BadInputError(f"{what}: {tarsplit_path} line {lineno} is not a tar-split entry") from None
                if kind == 2:
                    payload = entry.get("payload")
                    if payload:
                        yield base64.b64decode(payload)
                elif kind == 1:
                    size = entry.get("size") or 0
                    if not isinstance(size, int) or size < 0:
                        raise BadInputError(f"{what}: {tarsplit_path} line {lineno} has a bad size {size!r}")
                    if size == 0:
                        continue
                    raw = entry.get("name_raw")
                    name = base64.b64decode(raw).decode("utf-8", "surrogateescape") if raw else entry.get("name", "")
                    fd = files.open(name)
                    try:
                        left = size
                        while left:
                            data = os.read(fd, min(left, PIECE))
                            if not data:
                                raise BadInputError(
                                    f"{what}: file {name} in {files.dirs[0]} is shorter than the layer's tar "
                                    f"entry ({size - left} of {size} bytes): the layer's files were changed"
                                )
                            left -= len(data)
                            yield data
                    finally:
                        os.close(fd)
                else:
                    raise BadInputError(f"{what}: {tarsplit_path} line {lineno} has unknown entry type {kind!r}")
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise BadInputError(f"{what}: tar-split {tarsplit_path} is damaged ({e})") from None


class RebuiltTar(io.RawIOBase):
    """The rebuilt tar as a raw stream (no verification; LayerReader does that)."""

    def __init__(self, tarsplit_path: str, files: LayerFiles) -> None:
        super().__init__()
        self._it = _pieces(tarsplit_path, files)
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._buf):
            nxt = next(self._it, None)
            if nxt is None:
                return 0
            self._buf, self._pos = nxt, 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._pos >= len(self._buf):
            nxt = next(self._it, None)
            if nxt is None:
                return b""
            self._buf, self._pos = nxt, 0
        if self._pos == 0 and size >= len(self._buf):
            data, self._buf = self._buf, b""
            return data
        data = self._buf[self._pos : self._pos + size]
        self._pos += len(data)
        return data

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        super().close()


class LayerReader(VerifyingReader):
    """Verifies the rebuilt tar against the layer's DiffID, with errors naming the stored layer."""

    def __init__(self, raw: RebuiltTar, diff_id: str, size: int, what: str, layer_what: str) -> None:
        super().__init__(raw, diff_id, size, what)  # type: ignore[arg-type]
        self._layer_what = layer_what

    def _mismatch(self, detail: str) -> BadInputError:
        return BadInputError(
            f"{self._layer_what} does not rebuild to its DiffID {short(self._digest)} ({detail}): "
            "its files were changed after it was stored"
        )

    def _account(self, data: bytes) -> None:
        self._count += len(data)
        if self._count > self._size:
            raise self._mismatch(f"more than its {self._size} bytes")
        self._hash.update(data)

    def _check_end(self) -> None:
        if self._verified:
            return
        if self._count != self._size:
            raise self._mismatch(f"{self._count} of {self._size} bytes")
        got = f"{self._digest.split(':')[0]}:{self._hash.hexdigest()}"
        if got != self._digest:
            raise self._mismatch(f"rebuilt {short(got)}")
        self._verified = True
