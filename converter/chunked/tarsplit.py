"""tar-split metadata: JSON lines that, with the file payloads, rebuild the tar.

Line shapes (vbatts/tar-split tar/storage, JSON as Go encodes it):

    {"type":2,"payload":"<base64 raw bytes>","position":N}        raw segment
    {"type":1,"name":"<name>","size":S,"payload":"<base64 crc64>","position":N}

Every tar entry gets a type-1 line after the type-2 line holding its header
bytes. `size` is left out when 0 and `payload` is null when the entry has no
payload; the payload checksum is Go's CRC-64 (ISO table), big-endian.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures as cf
import hashlib

import zstandard

from converter.chunked.toc import _PLAIN, NotRepresentable, go_clean, go_json

SEGMENT = 2
FILE = 1


class TarSplitWriter:
    """Streams tar-split lines through a zstd compressor, keeping only the compressed bytes."""

    FLUSH = 1 << 20  # lines are handed to the compressor in batches of this size

    def __init__(self, cctx: zstandard.ZstdCompressor) -> None:
        self._chunks: list[bytes] = []
        self._cobj = cctx.compressobj()
        # One worker compresses the batches in order, off the parsing thread
        # (zstd releases the GIL); list.append keeps their order.
        self._worker = cf.ThreadPoolExecutor(1)
        self._jobs: list[cf.Future] = []
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.uncompressed_size = 0
        self._pos = 0
        self._seen: set[str] = set()

    def _emit(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_size += len(line)
        if self._pending_size >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        self.uncompressed_size += len(data)
        self._jobs.append(self._worker.submit(self._compress, data))
        if len(self._jobs) > 4:  # bound the batches waiting in memory
            self._jobs.pop(0).result()

    def _compress(self, data: bytes) -> None:
        out = self._cobj.compress(data)
        if out:
            self._chunks.append(out)

    def segment(self, raw: bytes) -> None:
        if not raw:
            return
        # Base64 needs no JSON escaping: format the line directly (hot path).
        self._emit(b'{"type":2,"payload":"%s","position":%d}\n' % (binascii.b2a_base64(raw, newline=False), self._pos))
        self._pos += 1

    def _claim_plain(self, name: bytes) -> None:
        """Record a plain (ASCII, JSON-safe) file name; refuse one seen before, as cleaned by Go."""
        text = name.decode("ascii")
        # Clean already unless it has empty, "." or ".." parts or a leading/trailing slash.
        if "//" in text or "/." in text or text[0] in "./" or text[-1] == "/":
            clean = go_clean(text)
        else:
            clean = text
        if clean in self._seen:
            raise NotRepresentable(f"path {text!r} appears twice in the layer")
        self._seen.add(clean)

    def entry(self, raw: bytes, name: bytes, size: int, crc64: int | None) -> None:
        """segment(raw) then file(name, size, crc64): one tar entry's two lines, formatted at once when plain."""
        if not (raw and name and _PLAIN.match(name)):
            self.segment(raw)
            self.file(name, size, crc64)
            return
        self._claim_plain(name)
        pos = self._pos
        self._pos = pos + 2
        line = b'{"type":2,"payload":"%s","position":%d}\n{"type":1,"name":"%s",%s"payload":%s,"position":%d}\n' % (
            binascii.b2a_base64(raw, newline=False),
            pos,
            name,
            b'"size":%d,' % size if size else b"",
            b"null" if crc64 is None else b'"%s"' % binascii.b2a_base64(crc64.to_bytes(8, "big"), newline=False),
            pos + 1,
        )
        self._pending.append(line)
        self._pending_size += len(line)
        if self._pending_size >= self.FLUSH:
            self._flush()

    def file(self, name: bytes, size: int, crc64: int | None) -> None:
        if name and _PLAIN.match(name):  # the common case, formatted directly
            self._claim_plain(name)
            self._emit(
                b'{"type":1,"name":"%s",%s"payload":%s,"position":%d}\n'
                % (
                    name,
                    b'"size":%d,' % size if size else b"",
                    b"null"
                    if crc64 is None
                    else b'"%s"' % binascii.b2a_base64(crc64.to_bytes(8, "big"), newline=False),
                    self._pos,
                )
            )
            self._pos += 1
            return
        try:
            text = name.decode("utf-8")
            key = text
        except UnicodeDecodeError:
            text = None
            key = name.decode("utf-8", "surrogateescape")
        clean = go_clean(key)
        if clean in self._seen:
            # tar-split refuses a second entry for one path, and so does the consumer.
            raise NotRepresentable(f"path {key!r} appears twice in the layer")
        self._seen.add(clean)
        obj: dict = {"type": FILE}
        if text is None:
            obj["name_raw"] = base64.b64encode(name).decode()
        elif text:
            obj["name"] = text
        if size:
            obj["size"] = size
        obj["payload"] = None if crc64 is None else base64.b64encode(crc64.to_bytes(8, "big")).decode()
        obj["position"] = self._pos
        self._emit(go_json(obj) + b"\n")
        self._pos += 1

    def finish(self) -> tuple[bytes, str]:
        """The compressed tar-split and its sha256 digest."""
        self._flush()
        self._seen = set()  # the names are checked: free them before the TOC is compressed
        for job in self._jobs:
            job.result()
        self.close()
        self._chunks.append(self._cobj.flush())
        data = b"".join(self._chunks)
        self._chunks = []
        return data, "sha256:" + hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        """Stop the worker (also when the layer is abandoned half way)."""
        self._worker.shutdown(wait=True, cancel_futures=True)


_ZERO_BLOCK = bytes(512)


def trailing_segment_problem(head: bytes, total: int) -> str | None:
    """Why the consumer would refuse the bytes after the end-of-archive blocks, or None.

    tar-split keeps those bytes as the last segment, and containers/storage
    reads every segment with tar-split's asm.IterateHeaders, which parses it
    with archive/tar's Reader.Next (readHeader): nothing, one whole zero
    block, or two zero blocks (whatever follows them) read as the end of the
    archive; anything else is an error there: a short block, a zero block
    then a non-zero one, or a block where a header would be. `head` holds the
    first 1024 of the `total` bytes.
    """
    if total == 0:
        return None
    if total < 512:
        return f"{total} byte(s) after the end-of-archive blocks, less than a tar block"
    if head[:512] != _ZERO_BLOCK:
        return "bytes after the end-of-archive blocks that are not zero blocks"
    if total == 512:
        return None
    if total < 1024:
        return f"{total} bytes after the end-of-archive blocks, not a whole number of tar blocks"
    if head[512:1024] != _ZERO_BLOCK:
        return "a zero block then other bytes after the end-of-archive blocks"
    return None
