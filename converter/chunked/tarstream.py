"""Streaming tar reader that keeps every raw byte.

The zstd:chunked consumer rebuilds the layer tar from the tar-split (raw
header bytes) plus file payloads and checks the result against the DiffID, so
the writer must see every byte of the input: headers, extension headers,
padding, the end-of-archive blocks and whatever trails them. stdlib
`tarfile` rewrites names (it strips the trailing `/` of directories, decodes
PAX values as text) and hides the raw blocks, so this module parses the
header blocks itself, with the semantics of Go's archive/tar as forked by
tar-split (the reader behind the reference writer): the TOC we emit must
describe each entry exactly as the consumer's reader will see it.

Strings stay `bytes` throughout (Go strings are byte strings); decoding to
text is the TOC's business.

Plain USTAR/GNU header blocks are parsed by the native module when it is
built (_rollsum.parse_header, same fields); it hands anything else, and
every malformed block, back to parse_header_block, which says what is wrong.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

from converter.errors import BadInputError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
MAX_SPECIAL_FILE = 1 << 20  # Go's maxSpecialFileSize for PAX / GNU long-name data

# Type flags (single bytes).
REG, REGA, LINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO = b"0", b"\x00", b"1", b"2", b"3", b"4", b"5", b"6"
CONT, XHEADER, XGLOBAL, GNU_SPARSE, GNU_LONGNAME, GNU_LONGLINK = b"7", b"x", b"g", b"S", b"L", b"K"
HEADER_ONLY_TYPES = frozenset((LINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO))

MAGIC_USTAR, VERSION_USTAR = b"ustar\x00", b"00"
MAGIC_GNU, VERSION_GNU = b"ustar ", b" \x00"
TRAILER_STAR = b"tar\x00"

try:  # the common headers parsed natively (same result; None sends the rest to parse_header_block)
    from converter.chunked._rollsum import parse_header as _fast_header
except ImportError:
    _fast_header = None

# Entries whose single header block says everything (no extension headers, no REGA quirk, not sparse).
_PLAIN_TYPES = frozenset((REG, LINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO))

_INT_RE = re.compile(rb"[+-]?[0-9]+\Z")


class TarFormatError(Exception):
    """A malformed header; the caller turns it into a BadInputError with context."""


@dataclass
class TarHeader:
    """One logical tar entry, as Go's tar.Reader.Next() returns it."""

    typeflag: bytes
    name: bytes
    linkname: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int  # nanoseconds since the epoch
    atime: int | None = None
    ctime: int | None = None
    devmajor: int = 0
    devminor: int = 0
    pax: dict[bytes, bytes] | None = None  # PAX records of the entry, raw
    offset: int = 0  # where the entry's own header block starts in the tar
    old_gnu_sparse: bool = False

    @property
    def data_size(self) -> int:
        """Bytes of payload that follow the header in the stream."""
        return 0 if self.typeflag in HEADER_ONLY_TYPES else self.size


def parse_cstring(b: bytes) -> bytes:
    """A NUL-terminated field (Go's parseString): everything before the first NUL."""
    i = b.find(b"\x00")
    return b if i < 0 else b[:i]


_OCTAL_DIGITS = b"01234567"


def _parse_octal(b: bytes) -> int:
    b = parse_cstring(b.strip(b" \x00"))
    if not b:
        return 0
    if b.translate(None, _OCTAL_DIGITS):
        raise TarFormatError(f"invalid octal number {b!r}")
    value = int(b, 8)
    if value >= 1 << 64:
        raise TarFormatError(f"octal number {b!r} out of range")
    return value if value < 1 << 63 else value - (1 << 64)


def _parse_numeric(b: bytes) -> int:
    """Base-256 (first bit set, two's complement) or octal, as Go parses them."""
    if b and b[0] & 0x80:
        inv = 0xFF if b[0] & 0x40 else 0
        x = 0
        for i, c in enumerate(b):
            c ^= inv
            if i == 0:
                c &= 0x7F
            if x >> 56:
                raise TarFormatError("base-256 number overflows")
            x = (x << 8) | c
        if x >> 63:
            raise TarFormatError("base-256 number overflows")
        return ~x if inv else x
    return _parse_octal(b)


def _parse_int64(v: bytes) -> int:
    if not _INT_RE.match(v):
        raise TarFormatError(f"invalid PAX number {v!r}")
    n = int(v)
    if not -(1 << 63) <= n < 1 << 63:
        raise TarFormatError(f"PAX number {v!r} out of range")
    return n


def _parse_pax_time(v: bytes) -> int:
    secs, dot, frac = v.partition(b".")
    s = _parse_int64(secs)
    if not dot or not frac:
        return s * 1_000_000_000
    if not frac.isdigit():
        raise TarFormatError(f"invalid PAX time {v!r}")
    ns = int(frac[:9].ljust(9, b"0"))
    if secs.startswith(b"-"):
        ns = -ns
    return s * 1_000_000_000 + ns


def parse_pax_records(data: bytes) -> dict[bytes, bytes]:
    """PAX extended-header records, raw; GNU sparse 0.0 maps folded as Go does."""
    records: dict[bytes, bytes] = {}
    sparse: list[bytes] = []
    while data:
        sp = data.find(b" ")
        if sp < 0:
            raise TarFormatError("PAX record without length")
        try:
            n = int(data[:sp]) if data[:sp].isdigit() else -1
        except ValueError:
            n = -1
        if n < 5 or len(data) < n or data[n - 1 : n] != b"\n":
            raise TarFormatError("malformed PAX record")
        rec, data = data[sp + 1 : n - 1], data[n:]
        eq = rec.find(b"=")
        if eq < 0:
            raise TarFormatError("PAX record without '='")
        k, v = rec[:eq], rec[eq + 1 :]
        # Go's validPAXRecord: no NUL in the value of a name record, none in any other key.
        if not k or (b"\x00" in v if k in (b"path", b"linkpath", b"uname", b"gname") else b"\x00" in k):
            raise TarFormatError(f"invalid PAX record {k!r}")
        if k in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            sparse.append(v)
        else:
            records[k] = v
    if sparse:
        records[b"GNU.sparse.map"] = b",".join(sparse)
    return records


_HIGH = bytes(range(128, 256))


def _checksum_ok(blk: bytes) -> bool:
    stored = _parse_octal(blk[148:156])
    # The checksum field itself counts as eight spaces.
    unsigned = sum(blk) - sum(blk[148:156]) + 8 * 32
    high = len(blk) - len(blk.translate(None, _HIGH)) - (8 - len(blk[148:156].translate(None, _HIGH)))
    signed = unsigned - 256 * high
    return stored in (unsigned, signed)


def _ns(secs: int) -> int:
    return secs * 1_000_000_000


def parse_header_block(blk: bytes) -> TarHeader:
    """Decode one 512-byte header block (Go's readHeader)."""
    try:
        ok = _checksum_ok(blk)
    except TarFormatError:
        ok = False
    if not ok:
        raise TarFormatError("header checksum mismatch (not a tar, or corrupt)")
    magic, version, trailer = blk[257:263], blk[263:265], blk[508:512]
    if magic == MAGIC_USTAR and trailer == TRAILER_STAR:
        fmt = "star"
    elif magic == MAGIC_USTAR:
        fmt = "ustar"
    elif magic == MAGIC_GNU and version == VERSION_GNU:
        fmt = "gnu"
    else:
        fmt = "v7"
    h = TarHeader(
        typeflag=blk[156:157],
        name=parse_cstring(blk[0:100]),
        linkname=parse_cstring(blk[157:257]),
        size=_parse_numeric(blk[124:136]),
        mode=_parse_numeric(blk[100:108]),
        uid=_parse_numeric(blk[108:116]),
        gid=_parse_numeric(blk[116:124]),
        mtime=_ns(_parse_numeric(blk[136:148])),
    )
    if fmt == "v7":
        return h
    h.devmajor = _parse_numeric(blk[329:337])
    h.devminor = _parse_numeric(blk[337:345])
    prefix = b""
    if fmt == "ustar":
        prefix = parse_cstring(blk[345:500])
    elif fmt == "star":
        prefix = parse_cstring(blk[345:476])
        h.atime = _ns(_parse_numeric(blk[476:488]))
        h.ctime = _ns(_parse_numeric(blk[488:500]))
    else:  # GNU: atime/ctime live where USTAR has its prefix
        try:
            if blk[345] != 0:
                h.atime = _ns(_parse_numeric(blk[345:357]))
            if blk[357] != 0:
                h.ctime = _ns(_parse_numeric(blk[357:369]))
        except TarFormatError:
            # Archives from pre-1.8 Go writers put a USTAR prefix here.
            h.atime = h.ctime = None
            p = parse_cstring(blk[345:500])
            if all(0 < c < 0x80 for c in p):
                prefix = p
        h.old_gnu_sparse = h.typeflag == GNU_SPARSE
    if prefix:
        h.name = prefix + b"/" + h.name
    return h


def merge_pax(h: TarHeader, pax: dict[bytes, bytes]) -> None:
    """Apply PAX records to a header (Go's mergePAX); TarFormatError on a bad number or time."""
    for k, v in pax.items():
        if not v:
            continue  # an empty record keeps the header's value
        if k == b"path":
            h.name = v
        elif k == b"linkpath":
            h.linkname = v
        elif k == b"uid":
            h.uid = _parse_int64(v)
        elif k == b"gid":
            h.gid = _parse_int64(v)
        elif k == b"atime":
            h.atime = _parse_pax_time(v)
        elif k == b"mtime":
            h.mtime = _parse_pax_time(v)
        elif k == b"ctime":
            h.ctime = _parse_pax_time(v)
        elif k == b"size":
            h.size = _parse_int64(v)
    h.pax = pax


class ByteReader(Protocol):
    """What the readers of a layer need of a stream: read(n) and close()."""

    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class CountingReader:
    """Reads a stream exactly, hashing and counting every byte (the DiffID).

    Buffered: the source is read in blocks of BUF bytes (hashed as they come
    in), and the many small reads of tar headers and small files are served
    as slices of the block. Large reads go to the source directly.
    `offset` counts the bytes handed out.
    """

    BUF = 1 << 20

    def __init__(self, f: ByteReader, what: str, sha256=None) -> None:
        """`sha256`: a hash the source itself updates with every byte it yields (read ahead in
        another thread); then this reader does not hash again and `sha256` is that object."""
        self._f = f
        self.what = what
        self.offset = 0
        self._hashing = sha256 is None
        self.sha256 = hashlib.sha256() if sha256 is None else sha256
        self.tap: Callable[[bytes], None] | None = None  # sees every byte read
        self._in = 0  # bytes taken from the source
        self._buf = b""
        self._p = 0

    def _fill(self, want: int) -> bytes:
        """Up to `want` bytes from the source (b"" at its end), hashed."""
        try:
            b = self._f.read(want)
        except EOFError as e:
            raise BadInputError(f"{self.what}: truncated compressed stream ({e})") from None
        except OSError as e:  # gzip/isal and zstd report corruption as OSError subclasses
            raise BadInputError(f"{self.what}: corrupt compressed stream at tar offset {self._in}: {e}") from None
        except Exception as e:  # zstandard.ZstdError is not an OSError
            if type(e).__name__ == "ZstdError":
                raise BadInputError(f"{self.what}: corrupt zstd stream at tar offset {self._in}: {e}") from None
            raise
        if b:
            if self._hashing:
                self.sha256.update(b)
            self._in += len(b)
        return b

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at end of stream."""
        p = self._p
        end = p + n
        if end <= len(self._buf):  # the common case: a slice of the block
            data = self._buf[p:end]
            self._p = end
        else:
            parts = [self._buf[p:]] if p < len(self._buf) else []
            want = end - len(self._buf)
            self._buf, self._p = b"", 0
            while want > 0:
                b = self._fill(want if want >= self.BUF else self.BUF)
                if not b:
                    break
                if len(b) > want:
                    self._buf, self._p = b, want
                    b = b[:want]
                parts.append(b)
                want -= len(b)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        if data:
            self.offset += len(data)
            if self.tap is not None:
                self.tap(data)
        return data

    def peek(self, n: int) -> memoryview | None:
        """The next n bytes without consuming them, if the current block holds them all."""
        p = self._p
        if p + n > len(self._buf):
            return None
        return memoryview(self._buf)[p : p + n]

    def read_some(self, n: int) -> bytes:
        """Between 1 and n bytes (b"" only at end of stream), with as few copies as may be."""
        avail = len(self._buf) - self._p
        if avail > 0:
            return self.read(min(n, avail))  # what the block still holds
        if n < self.BUF:
            return self.read(n)
        data = self._fill(n)  # large: straight from the source
        if data:
            self.offset += len(data)
            if self.tap is not None:
                self.tap(data)
        return data


@dataclass
class TarStream:
    """Iterates entries of a tar stream with their raw bytes.

    `next()` returns (header, raw) where raw holds every byte consumed since
    the previous entry's payload: its padding, extension headers and the
    entry's own header block(s). The payload then comes from
    `read_payload()`. At the end, `next()` returns None and `trailer` holds
    the end-of-archive bytes; `read_trailing()` yields what follows them.
    """

    src: CountingReader
    _remaining: int = 0
    _pad: int = 0
    trailer: bytes = b""
    done: bool = False
    _raw: list[bytes] = field(default_factory=list)

    def _where(self) -> str:
        return f"{self.src.what}: tar offset {self.src.offset}"

    def _read_exact(self, n: int, what: str) -> bytes:
        b = self.src.read(n)
        if len(b) != n:
            raise BadInputError(f"{self._where()}: unexpected end of tar in {what} (truncated layer?)")
        return b

    def _read_special(self, size: int, what: str) -> bytes:
        if size > MAX_SPECIAL_FILE or size < 0:
            raise BadInputError(f"{self._where()}: {what} of {size} bytes is too large")
        data = self._read_exact(size, what)
        pad = -size % BLOCK
        self._raw.append(data + self._read_exact(pad, what))
        return data

    def next(self) -> TarHeader | None:
        if self.done:
            return None
        if self._remaining:
            raise RuntimeError("payload not fully read before next()")
        if _fast_header is not None:
            h = self._next_plain()
            if h is not None:
                return h
        self._raw = []
        if self._pad:
            self._raw.append(self._read_exact(self._pad, "padding"))
            self._pad = 0
        pax: dict[bytes, bytes] | None = None
        long_name = long_link = None
        while True:
            start = self.src.offset
            blk = self.src.read(BLOCK)
            if len(blk) < BLOCK:
                if not blk:
                    self._finish(blk)  # EOF without end-of-archive blocks: Go accepts it
                    return None
                raise BadInputError(f"{self._where()}: unexpected end of tar inside a header (truncated layer?)")
            if blk == ZERO_BLOCK:
                blk2 = self.src.read(BLOCK)
                if blk2 and blk2 != ZERO_BLOCK:
                    raise BadInputError(f"{self._where()}: zero block followed by a non-zero block")
                self._finish(blk + blk2)
                return None
            self._raw.append(blk)
            f = _fast_header(blk) if _fast_header is not None else None
            if f is not None:
                h = TarHeader(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7] * 1_000_000_000, None, None, f[8], f[9])
            else:
                try:
                    h = parse_header_block(blk)
                except TarFormatError as e:
                    raise BadInputError(f"{self.src.what}: tar header at offset {start}: {e}") from None
            h.offset = start
            if h.size < 0:
                raise BadInputError(f"{self.src.what}: tar header at offset {start}: negative size")
            t = h.typeflag
            try:
                if t in (XHEADER, XGLOBAL):
                    pax = parse_pax_records(self._read_special(h.size, "PAX header"))
                    if t == XGLOBAL:
                        merge_pax(h, pax)
                        return self._entry(h, 0)
                    continue
                if t in (GNU_LONGNAME, GNU_LONGLINK):
                    data = parse_cstring(self._read_special(h.size, "GNU long name"))
                    if t == GNU_LONGNAME:
                        long_name = data
                    else:
                        long_link = data
                    continue
                if pax:
                    merge_pax(h, pax)
            except TarFormatError as e:
                raise BadInputError(f"{self.src.what}: tar header at offset {start}: {e}") from None
            if long_name:
                h.name = long_name
            if long_link:
                h.linkname = long_link
            if t == REGA:
                h.typeflag = DIR if h.name.endswith(b"/") else REG
            if h.size < 0:
                raise BadInputError(f"{self.src.what}: tar header at offset {start}: negative size")
            if h.old_gnu_sparse and blk[482]:
                # Old GNU sparse maps continue in extension blocks.
                while True:
                    ext = self._read_exact(BLOCK, "GNU sparse map")
                    self._raw.append(ext)
                    if not ext[504]:
                        break
            return self._entry(h, h.data_size)

    def _next_plain(self) -> TarHeader | None:
        """The common entry, padding and one plain header block already in the reader's block; else None.

        The same result as the general loop below for such an entry; anything
        else (extension headers, end of archive, bad blocks, a header across
        two blocks of the reader) is left unread for that loop.
        """
        pad = self._pad
        view = self.src.peek(pad + BLOCK)
        if view is None:
            return None
        f = _fast_header(view[pad:])
        if f is None or f[0] not in _PLAIN_TYPES:
            return None
        self._raw = [self.src.read(pad + BLOCK)]
        self._pad = 0
        h = TarHeader(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7] * 1_000_000_000, None, None, f[8], f[9])
        h.offset = self.src.offset - BLOCK
        return self._entry(h, h.data_size)

    def _entry(self, h: TarHeader, data_size: int) -> TarHeader:
        self._remaining = data_size
        self._pad = -data_size % BLOCK
        return h

    def _finish(self, tail: bytes) -> None:
        self._raw.append(tail)
        self.trailer = b"".join(self._raw)
        self._raw = []
        self.done = True
        return None

    @property
    def raw(self) -> bytes:
        """Raw bytes consumed by the last next() before the payload."""
        return self._raw[0] if len(self._raw) == 1 else b"".join(self._raw)

    @property
    def payload_remaining(self) -> int:
        return self._remaining

    def read_payload(self, n: int) -> bytes:
        n = min(n, self._remaining)
        if n <= 0:
            return b""
        b = self.src.read(n)
        if len(b) != n:
            raise BadInputError(f"{self._where()}: unexpected end of tar inside file data (truncated layer?)")
        self._remaining -= n
        return b

    def read_payload_some(self, n: int) -> bytes:
        """Between 1 and n payload bytes (fewer than read_payload would give when that saves a copy)."""
        n = min(n, self._remaining)
        if n <= 0:
            return b""
        b = self.src.read_some(n)
        if not b:
            raise BadInputError(f"{self._where()}: unexpected end of tar inside file data (truncated layer?)")
        self._remaining -= len(b)
        return b

    def read_trailing(self, piece: int = 1 << 20):
        """Bytes after the end-of-archive blocks, in pieces of at most `piece`."""
        while True:
            b = self.src.read(piece)
            if not b:
                return
            yield b
