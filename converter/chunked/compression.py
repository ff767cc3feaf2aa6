"""Opening a layer blob as a tar stream, whatever its compression.

The compression is read from the magic bytes, not trusted from the media
type. Decoding runs in a thread of its own (ReadAhead), next to the
conversion; gzip is decoded by isal. zstd is decoded frame by frame with
bounded output per step, so a truncated blob is an error (python-zstandard's
stream reader ends silently on a truncated frame) and a decompression bomb
cannot balloon memory.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from typing import BinaryIO

import zstandard
from isal import igzip

from converter.chunked.format import ZSTD_MAGIC
from converter.errors import BadInputError

GZIP_MAGIC = b"\x1f\x8b"


def detect_compression(head: bytes) -> str:
    """ "gzip", "zstd" or "none" (plain tar) from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    # A zstd stream may start with a skippable frame (magic 0x184D2A5?).
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return "zstd"
    return "none"


def _close_wrapped(f) -> None:
    """Close the stream a reader wraps (the readers here own their source), if it can be closed."""
    close = getattr(f, "close", None)
    if close:
        close()


class _Prefixed(io.RawIOBase):
    """A reader that first returns bytes already taken from the stream."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._f = f

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out, self._head = self._head + self._f.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._f.read(n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        _close_wrapped(self._f)
        super().close()


class ZstdFrameWalker:
    """Follows the frame and block structure of raw zstd bytes as they pass.

    Only headers are parsed (a few bytes per 128 KiB block), so it costs
    nothing next to decompression; at the end it tells whether the stream
    stopped on a frame boundary, which python-zstandard's stream reader does
    not report.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of block or skippable content still to pass
        self._state = "frame"  # "frame" | "block" | "checksum"
        self._checksum = False
        self.offset = 0  # compressed bytes seen
        self.frames = 0

    def feed(self, data: bytes) -> None:
        self.offset += len(data)
        mv = memoryview(data)
        if self._skip:
            k = min(self._skip, len(mv))
            self._skip -= k
            mv = mv[k:]
        if not len(mv):
            return
        self._buf += mv
        while self._step():
            pass

    def _step(self) -> bool:
        b = self._buf
        if self._skip:
            k = min(self._skip, len(b))
            del b[:k]
            self._skip -= k
            return bool(b) and not self._skip
        if self._state == "frame":
            if len(b) < 8:
                if len(b) >= 4 and b[:4] == ZSTD_MAGIC and len(b) >= 5:
                    pass
                else:
                    return False
            magic = bytes(b[:4])
            if magic[1:4] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:
                if len(b) < 8:
                    return False
                self._skip = int.from_bytes(b[4:8], "little")
                del b[:8]
                self.frames += 1
                return True
            if magic != ZSTD_MAGIC:
                raise ValueError(f"not a zstd frame at compressed offset {self.offset - len(b)}")
            if len(b) < 5:
                return False
            fhd = b[4]
            if fhd & 0x08:
                raise ValueError(f"reserved bit set in zstd frame header at offset {self.offset - len(b)}")
            single = bool(fhd & 0x20)
            fcs = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fhd >> 6]
            did = {0: 0, 1: 1, 2: 2, 3: 4}[fhd & 3]
            hlen = 5 + (0 if single else 1) + did + fcs
            if len(b) < hlen:
                return False
            self._checksum = bool(fhd & 0x04)
            del b[:hlen]
            self._state = "block"
            self.frames += 1
            return True
        if self._state == "block":
            if len(b) < 3:
                return False
            h = int.from_bytes(b[:3], "little")
            last, btype, size = h & 1, (h >> 1) & 3, h >> 3
            if btype == 3:
                raise ValueError(f"reserved zstd block type at compressed offset {self.offset - len(b)}")
            del b[:3]
            self._skip = 1 if btype == 1 else size
            if last:
                self._state = "checksum" if self._checksum else "frame"
            return True
        # checksum
        if len(b) < 4:
            return False
        del b[:4]
        self._state = "frame"
        return True

    @property
    def at_boundary(self) -> bool:
        return self._state == "frame" and not self._skip and not self._buf


class _Tap:
    def __init__(self, f, walker: ZstdFrameWalker, what: str) -> None:
        self._f = f
        self._walker = walker
        self._what = what

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        try:
            self._walker.feed(data)
        except ValueError as e:
            raise BadInputError(f"{self._what}: corrupt zstd stream: {e}") from None
        return data


class ZstdStream:
    """Decodes concatenated zstd frames (skippable ones included), strictly."""

    def __init__(self, f, what: str) -> None:
        self._what = what
        self._walker = ZstdFrameWalker()
        self._tap = _Tap(f, self._walker, what)
        self._f = f
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._tap,  # type: ignore[arg-type]  # zstandard reads any object with read(); its stub asks for IO[bytes]
            read_size=256 << 10,
            read_across_frames=True,
        )
        self.consumed = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 24
        try:
            out = self._reader.read(n)
        except zstandard.ZstdError as e:
            raise BadInputError(
                f"{self._what}: corrupt zstd stream near compressed offset {self._walker.offset}: {e}"
            ) from None
        if not out and n and not self._walker.at_boundary:
            raise BadInputError(
                f"{self._what}: truncated zstd stream (ends inside a frame after "
                f"{self._walker.offset} compressed bytes)"
            )
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        _close_wrapped(self._f)


class ReadAhead:
    """Reads a decoded stream ahead in a thread of its own, hashing every byte it reads.

    The thread does the decompression and the sha256 of the tar (the DiffID),
    so the thread that parses the tar only takes finished blocks: on two
    cores the parsing thread is the one that sets the pace. `sha256` is
    complete once read() has returned b"" (end of stream). Whatever the
    source raises is raised again by read(), at the same place in the stream.
    """

    BLOCK = 1 << 20
    DEPTH = 8  # blocks decoded ahead at most (memory: DEPTH x BLOCK)

    def __init__(self, f, also_close=None) -> None:
        self._f = f
        self._also_close = also_close  # the stream under `f`, when closing `f` leaves it open
        self.sha256 = hashlib.sha256()
        self._q: queue.Queue = queue.Queue(self.DEPTH)
        self._stop = threading.Event()
        self._block = b""
        self._p = 0
        self._end: BaseException | bool = False  # True at end of stream, or what the source raised
        self._thread = threading.Thread(target=self._run, name="zconv-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        read, update, put = self._f.read, self.sha256.update, self._put
        try:
            while not self._stop.is_set():
                b = read(self.BLOCK)
                if not b:
                    break
                update(b)
                put(b)
            put(None)
        except BaseException as e:  # handed to the reading thread, which raises it
            put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1, /) -> bytes:
        """Up to n bytes (at most one block's worth); b"" at the end of the stream."""
        if self._p >= len(self._block):
            if self._end is not False:
                if self._end is True:
                    return b""
                raise self._end
            item = self._q.get()
            if item is None or isinstance(item, BaseException):
                self._end = True if item is None else item
                return self.read(n)
            self._block, self._p = item, 0
        p, block = self._p, self._block
        if p == 0 and (n < 0 or n >= len(block)):
            self._p = len(block)
            return block
        end = len(block) if n < 0 else min(len(block), p + n)
        self._p = end
        return block[p:end]

    def close(self) -> None:
        self._stop.set()
        try:
            while True:  # unblock a thread waiting to put
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
        _close_wrapped(self._f)
        if self._also_close is not None:
            _close_wrapped(self._also_close)


def open_tar_stream(raw: BinaryIO, what: str) -> tuple[ReadAhead, str]:
    """Wrap a blob stream so that reading it yields the uncompressed tar.

    The result's `sha256` hashes the whole uncompressed stream (complete
    once it has been read to its end).
    """
    head = raw.read(4)
    kind = detect_compression(head)
    src = _Prefixed(head, raw)
    if kind == "gzip":
        return ReadAhead(igzip.IGzipFile(fileobj=src, mode="rb"), also_close=src), kind
    if kind == "zstd":
        return ReadAhead(ZstdStream(src, what)), kind
    return ReadAhead(src), kind
