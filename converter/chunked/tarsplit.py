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
import itertools
import operator
import tempfile
from array import array
from typing import Any, BinaryIO

import zstandard

from converter.chunked.toc import _PLAIN, NotRepresentable, go_clean, go_json

SEGMENT = 2
FILE = 1
_name_hash = hash  # of a cleaned name, for the duplicate check (a hook for the tests to force collisions)


class TarSplitWriter:
    """Streams tar-split lines through a zstd compressor, keeping only the compressed bytes.

    Its memory per tar entry is small, for layers of many entries: the
    compressed output waits in a spooled temporary file (on disk past SPOOL
    bytes), and the duplicate-name check keeps 8 bytes per name, the hash of
    the name as Go cleans it, with the names themselves in a temporary file.
    check_names() sorts the hashes, and only if one comes twice reads the
    names back to tell a duplicate (refused: NotRepresentable) from two names
    that share a hash. A duplicate is therefore found at the end of the
    layer, not at its second entry: the outcome is the same, plain zstd.
    """

    FLUSH = 1 << 20  # lines are handed to the compressor in batches of this size
    SPOOL = 4 << 20  # compressed output kept in memory up to this, then in a temporary file
    NAMES_FLUSH = 1 << 20  # names recorded for the duplicate check go to their file in pieces of this size

    def __init__(self, cctx: zstandard.ZstdCompressor) -> None:
        self._out: Any = tempfile.SpooledTemporaryFile(max_size=self.SPOOL, prefix="zconv-tarsplit-")
        self._cobj = cctx.compressobj()
        # One worker compresses the batches in order, off the parsing thread
        # (zstd releases the GIL); it alone writes self._out until finish().
        self._worker = cf.ThreadPoolExecutor(1)
        self._jobs: list[cf.Future] = []
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.uncompressed_size = 0
        self._pos = 0
        self._hashes = array("q")  # _name_hash of every cleaned name, in order
        self._names = bytearray()  # cleaned names not yet in self._names_file, each after its 4-byte length
        self._names_file: Any = None

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
            self._out.write(out)

    def segment(self, raw: bytes) -> None:
        if not raw:
            return
        # Base64 needs no JSON escaping: format the line directly (hot path).
        self._emit(b'{"type":2,"payload":"%s","position":%d}\n' % (binascii.b2a_base64(raw, newline=False), self._pos))
        self._pos += 1

    def _claim_plain(self, name: bytes) -> None:
        """Record a plain (ASCII, JSON-safe) file name, as cleaned by Go, for the duplicate check."""
        text = name.decode("ascii")
        # Clean already unless it has empty, "." or ".." parts or a leading/trailing slash.
        if "//" in text or "/." in text or text[0] in "./" or text[-1] == "/":
            clean = go_clean(text)
            if clean != text:
                self._claim(clean, clean.encode("ascii"))
                return
        self._claim(text, name)

    def _claim(self, clean: str, raw: bytes) -> None:
        """Record a cleaned name (`raw`: its bytes, UTF-8 with surrogateescape) for the duplicate check."""
        self._hashes.append(_name_hash(clean))
        self._names += len(raw).to_bytes(4, "little")
        self._names += raw
        if len(self._names) >= self.NAMES_FLUSH:
            self._flush_names()

    def _flush_names(self) -> None:
        if self._names_file is None:
            self._names_file = tempfile.TemporaryFile(prefix="zconv-names-")
        self._names_file.write(self._names)
        self._names = bytearray()

    def check_names(self) -> None:
        """Refuse a path that appears twice (as Go cleans it): tar-split and the consumer refuse it.

        Frees the recorded names (a second call checks nothing).
        """
        # As floats: CPython sorts them with a faster comparison than 64-bit ints
        # (0.26 s, not 0.42 s, and 28 MiB for a moment, on 700,000 names; numpy
        # is not imported at run time). Hashes that round to one float only make
        # suspects, told apart below by the names themselves.
        hashes = sorted(map(float, self._hashes))
        self._hashes = array("q")
        try:
            if not any(map(operator.eq, hashes, itertools.islice(hashes, 1, None))):
                return
            suspects = {a for a, b in zip(hashes, itertools.islice(hashes, 1, None)) if a == b}
            del hashes
            seen: set[str] = set()
            for name in self._read_names():
                if float(_name_hash(name)) in suspects:
                    if name in seen:
                        raise NotRepresentable(f"path {name!r} appears twice in the layer")
                    seen.add(name)
        finally:
            self._drop_names()

    def _read_names(self):
        """The recorded names, in order (from the temporary file, then memory)."""
        if self._names_file is not None:
            self._names_file.flush()
            self._names_file.seek(0)
        parts = iter(lambda: self._names_file.read(1 << 20), b"") if self._names_file is not None else iter(())
        data = b""
        for piece in itertools.chain(parts, [bytes(self._names)]):
            data += piece
            i = 0
            while i + 4 <= len(data):
                n = int.from_bytes(data[i : i + 4], "little")
                if i + 4 + n > len(data):
                    break
                yield data[i + 4 : i + 4 + n].decode("utf-8", "surrogateescape")
                i += 4 + n
            data = data[i:]

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
        self._claim(clean, clean.encode("utf-8", "surrogateescape"))
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

    def finish(self, check: bool = True) -> tuple[BinaryIO, int, str]:
        """The compressed tar-split: a file positioned at its start, its size and its sha256 digest.

        The caller closes the file. Raises NotRepresentable if a path appears
        twice, unless `check` is false: then the caller calls check_names()
        later (the writer does, once the TOC's compressed copy is freed).
        """
        try:
            self._flush()
            if check:
                self.check_names()  # while the worker compresses the last batch
            for job in self._jobs:
                job.result()
        except BaseException:
            self.close()
            raise
        self._worker.shutdown(wait=True)
        self._out.write(self._cobj.flush())
        size = self._out.tell()
        self._out.seek(0)
        sha = hashlib.sha256()
        while block := self._out.read(1 << 20):
            sha.update(block)
        self._out.seek(0)
        out, self._out = self._out, None
        return out, size, "sha256:" + sha.hexdigest()

    def _drop_names(self) -> None:
        self._hashes = array("q")
        self._names = bytearray()
        if self._names_file is not None:
            self._names_file.close()
            self._names_file = None

    def close(self) -> None:
        """Stop the worker and free what finish() did not hand over (a layer abandoned half way)."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._drop_names()
        if self._out is not None:
            self._out.close()
            self._out = None


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
