"""The tar-split as the consumer reads it, streamed, and its agreement with the TOC.

The tar-split is read value by value from a file (the decoded tar-split
goes to a temporary file, as containers/storage does in
readZstdChunkedManifest), so its size costs disk bounded by its declared
length, not memory.

The tar headers kept in the tar-split are parsed by tarstream, the same code
the writer reads layers with (Go archive/tar semantics, which the consumer
uses; Python's tarfile strips the trailing slash of directory names and
handles PAX and GNU fields differently, which would hide real mismatches).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import heapq
import io
import json
import re
from dataclasses import dataclass
from operator import attrgetter
from typing import IO, Any, Iterable, Iterator, Union

from converter.chunked import tarstream
from converter.chunked.format import INT64_MAX, TYPE_CHUNK, TYPE_NAMES, TYPE_REG, XATTR_PREFIX
from converter.chunked.reader.access import bad
from converter.chunked.reader.toc import TocEntry, format_time, normalize_time
from converter.chunked.tarstream import HEADER_ONLY_TYPES, TarHeader
from converter.chunked.toc import go_clean
from converter.errors import BadInputError

# The decoded tar-split: bytes, or a binary file read from its start.
TarSplitSource = Union[bytes, bytearray, IO[bytes]]

# tar-split entry types (vbatts/tar-split storage.FileType, storage.SegmentType)
FILE_TYPE = 1
SEGMENT_TYPE = 2

_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class TarSplitEntry:
    type: int  # 1 file, 2 segment
    position: int
    payload: bytes | None
    name: bytes = b""
    size: int = 0
    line: int = 0

    @property
    def name_str(self) -> str:
        return self.name.decode("utf-8", "surrogateescape")


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BadInputError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInputError(f"{what} is not valid base64") from None


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _iter_json_values(src: TarSplitSource, name: str) -> Iterator[tuple[Any, int, int]]:
    """(value, 1-based value number, char offset) for each JSON value in the stream, like Go's json.Decoder.

    Reads the source in pieces and keeps only the values not yet decoded.
    """
    if isinstance(src, (bytes, bytearray)):
        f: IO[bytes] = io.BytesIO(src)
    else:
        f = src
        f.seek(0)
    dec = codecs.getincrementaldecoder("utf-8")()
    buf = ""
    pos = 0  # in buf
    base = 0  # chars consumed before buf
    eof = False
    line = 0
    want = _READ

    def more(n: int) -> bool:
        nonlocal buf, pos, base, eof
        raw = f.read(n)
        try:
            text = dec.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise bad(name, f"tar-split is not UTF-8 JSON (byte {base + pos + e.start})") from None
        if not raw:
            eof = True
        base += pos
        buf = buf[pos:] + text
        pos = 0
        return bool(raw)

    more(want)
    while True:
        m = _WS.match(buf, pos)
        pos = m.end() if m else pos
        if pos >= len(buf):
            if eof or not more(want):
                if pos >= len(buf):
                    return
            continue
        where_pos = base + pos
        try:
            obj, end = _DECODER.raw_decode(buf, pos)
        except RecursionError:
            raise BadInputError(
                f"{name}: tar-split entry {line + 1} (byte {where_pos}): JSON nested too deeply"
            ) from None
        except ValueError as e:
            if not eof:
                # Possibly a value cut by the end of the piece read: read more (doubling,
                # so a long value costs linear time) and try again.
                want = max(_READ, 2 * (len(buf) - pos))
                more(want)
                continue
            raise BadInputError(
                f"{name}: tar-split entry {line + 1} (byte {where_pos}): not valid JSON ({str(e)[:120]})"
            ) from None
        if end >= len(buf) and not eof and not isinstance(obj, (dict, list, str)):
            # A number or literal may continue in the next piece.
            more(_READ)
            continue
        want = _READ
        line += 1
        pos = end
        yield obj, line, where_pos


def iter_tarsplit(src: TarSplitSource, name: str = "layer") -> Iterator[TarSplitEntry]:
    """Tar-split entries in order; checks types, positions, payload encoding, duplicate paths.

    `src` is the decoded tar-split (bytes, or a binary file read from its
    start). Go's decoder reads a stream of JSON values; we do the same
    (values are normally one per line) so that we accept what the consumer
    accepts.
    """
    expect_position = 0
    seen: set[str] = set()
    for obj, line, at in _iter_json_values(src, name):
        where = f"{name}: tar-split entry {line} (byte {at})"
        if not isinstance(obj, dict):
            raise BadInputError(f"{where}: not a JSON object")
        low = {k.lower(): v for k, v in obj.items()}
        typ = low.get("type")
        if typ not in (FILE_TYPE, SEGMENT_TYPE) or isinstance(typ, bool):
            raise BadInputError(f"{where}: unknown entry type {typ!r}")
        position = low.get("position", 0)
        if position != expect_position or isinstance(position, bool):
            raise BadInputError(f"{where}: position {position!r}, expected {expect_position}")
        expect_position += 1
        payload_v = low.get("payload")
        payload = None if payload_v is None else _b64(payload_v, f"{where}: payload")
        if typ == SEGMENT_TYPE:
            if payload is None:
                payload = b""
            yield TarSplitEntry(SEGMENT_TYPE, position, payload, line=line)
            continue
        size = low.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > INT64_MAX:
            raise BadInputError(f"{where}: invalid size {size!r}")
        raw = low.get("name_raw")
        if raw is not None and raw != "":
            fname = _b64(raw, f"{where}: name_raw")
        else:
            nm = low.get("name", "")
            if not isinstance(nm, str):
                raise BadInputError(f"{where}: name is not a string")
            fname = nm.encode("utf-8", "surrogateescape")
        if payload is not None and len(payload) != 8:
            raise BadInputError(f"{where}: crc64 payload is {len(payload)} bytes, not 8")
        if size > 0 and payload is None:
            raise BadInputError(f"{where}: file of {size} bytes without a crc64")
        clean = go_clean(fname.decode("utf-8", "surrogateescape"))
        if clean in seen:
            raise BadInputError(f"{where}: path {clean!r} appears twice (the consumer refuses duplicate paths)")
        seen.add(clean)
        yield TarSplitEntry(FILE_TYPE, position, payload, fname, size, line=line)


def tar_size_from_tarsplit(tarsplit: TarSplitSource, name: str = "layer") -> int:
    """Uncompressed tar size from the tar-split alone (tarSizeFromTarSplit)."""
    total = 0
    for ts in iter_tarsplit(tarsplit, name):
        total += len(ts.payload or b"") if ts.type == SEGMENT_TYPE else ts.size
    return total


# ----------------------------------------------- tar headers (Go archive/tar)


class _HeaderError(Exception):
    pass


def has_data(h: TarHeader) -> bool:
    return h.typeflag not in HEADER_ONLY_TYPES


def padding(h: TarHeader) -> int:
    return (-h.size) % 512 if has_data(h) else 0


def toc_type(h: TarHeader) -> str | None:
    """The TOC type the consumer gives this tar entry; None for types it does not accept."""
    return TYPE_NAMES.get(h.typeflag)


def parse_tar_header(buf: bytes) -> TarHeader | None:
    """The next tar entry's header from `buf` (extension headers included), the way Go's tar reader sees it.

    Returns None at the end-of-archive marker or when `buf` is empty.
    Raises _HeaderError when Go would fail, and for what the consumer
    refuses in a header (PAX global headers, GNU sparse records).
    """
    stream = tarstream.TarStream(tarstream.CountingReader(io.BytesIO(buf), "tar-split segment"))
    try:
        h = stream.next()
    except BadInputError as e:
        raise _HeaderError(str(e)) from None
    if h is None:
        return None
    if h.pax and any(k.startswith(b"GNU.sparse.") for k in h.pax):
        raise _HeaderError("GNU sparse PAX records (sparse files are not supported)")
    if h.typeflag == tarstream.XGLOBAL:
        raise _HeaderError("PAX global header (type 'g') is not a file the consumer accepts")
    return h


def iter_tarsplit_headers(
    entries: Iterable[TarSplitEntry], name: str = "layer"
) -> Iterator[tuple[TarHeader, TarSplitEntry]]:
    """(header, segment) for each tar entry, as the consumer's asm.IterateHeaders sees them.

    Each segment holds the previous entry's padding and then one entry's
    header(s); the padding is skipped by the size of the previous header.
    """
    pending = 0
    for ts in entries:
        if ts.type != SEGMENT_TYPE:
            continue
        payload = ts.payload or b""
        if len(payload) < pending:
            raise BadInputError(
                f"{name}: tar-split entry {ts.line}: expected {pending} bytes of padding, segment has {len(payload)}"
            )
        payload = payload[pending:]
        pending = 0
        try:
            hdr = parse_tar_header(payload)
        except _HeaderError as e:
            raise BadInputError(f"{name}: tar-split entry {ts.line}: bad tar header ({e})") from None
        if hdr is None:
            continue
        pending = padding(hdr)
        yield hdr, ts


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _secs_nsec(ns: int | None) -> tuple[int, int] | None:
    return None if ns is None else divmod(ns, 1_000_000_000)


def expected_toc_fields(hdr: TarHeader) -> dict[str, Any]:
    """What minimal.NewFileMetadata(hdr) would put in the TOC (the fields the consumer compares).

    Names are text, times (seconds, nanoseconds), xattr values base64, as
    the TOC stores them.
    """
    xattrs = {
        _text(k[len(XATTR_PREFIX) :]): base64.b64encode(v).decode()
        for k, v in (hdr.pax or {}).items()
        if k.startswith(XATTR_PREFIX)
    }
    return {
        "type": toc_type(hdr),
        "name": _text(hdr.name),
        "linkname": _text(hdr.linkname),
        "mode": hdr.mode,
        "size": hdr.size,
        "uid": hdr.uid,
        "gid": hdr.gid,
        "modtime": normalize_time(_secs_nsec(hdr.mtime)),
        "accesstime": normalize_time(_secs_nsec(hdr.atime)),
        "changetime": normalize_time(_secs_nsec(hdr.ctime)),
        "devmajor": hdr.devmajor,
        "devminor": hdr.devminor,
        "xattrs": xattrs,
    }


def compare_entry(e: TocEntry, hdr: TarHeader) -> list[str]:
    """Differences between a TOC entry and a tar header, as ensureFileMetadataAttributesMatch checks them."""
    exp = expected_toc_fields(hdr)
    got = {
        "type": e.type,
        "name": e.name,
        "linkname": e.linkname,
        "mode": e.mode,
        "size": e.size,
        "uid": e.uid,
        "gid": e.gid,
        "modtime": normalize_time(e.modtime),
        "accesstime": normalize_time(e.accesstime),
        "changetime": normalize_time(e.changetime),
        "devmajor": e.devmajor,
        "devminor": e.devminor,
        "xattrs": dict(e.xattrs),
    }
    diffs = []
    for k, v in exp.items():
        if got[k] != v:
            if k.endswith("time"):
                diffs.append(f"{k}: TOC {format_time(got[k])} != tar {format_time(v)}")
            elif k == "mode":
                diffs.append(f"mode: TOC {got[k]:o} != tar {v:o}")
            else:
                diffs.append(f"{k}: TOC {got[k]!r} != tar {v!r}")
    return diffs


def _clean(name: str) -> str:
    """go_clean, keeping the string itself when it is already clean (most are: no copy per entry)."""
    c = go_clean(name)
    return name if c == name else c


class _Pending:
    """The TOC's entries by path, each taken at most once (ensureTOCMatchesTarSplit's pendingFiles map).

    Kept as a list sorted by name and a bitmap instead of a dict: a fifth of
    the memory for a TOC of a million entries. As in a map filled in TOC
    order, a path listed twice stands for its last entry, and what is left
    comes out in the order the paths first appear.
    """

    def __init__(self, entries: list[TocEntry]) -> None:
        self.entries = entries  # TOC order
        by_name = sorted(entries, key=_NAME)  # stable: equal names stay in TOC order
        self.dups = {a.name for a, b in zip(by_name, by_name[1:]) if a.name == b.name}
        if self.dups:
            # keep the last entry of each path, as a map assignment would
            by_name = [e for i, e in enumerate(by_name) if i + 1 == len(by_name) or by_name[i + 1].name != e.name]
        self.by_name = by_name
        self.taken = bytearray(len(by_name))

    def duplicates(self) -> Iterator[TocEntry]:
        """Every entry whose path an earlier entry already has, in TOC order."""
        seen: set[str] = set()
        for e in self.entries:
            if e.name in self.dups:
                if e.name in seen:
                    yield e
                seen.add(e.name)

    def pop(self, path: str) -> TocEntry | None:
        i = bisect.bisect_left(self.by_name, path, key=_NAME)
        if i < len(self.by_name) and self.by_name[i].name == path and not self.taken[i]:
            self.taken[i] = 1
            return self.by_name[i]
        return None

    def left(self, n: int) -> tuple[int, list[TocEntry]]:
        """(how many entries were never taken, the first `n` of them in order of first appearance)."""
        count = len(self.taken) - sum(self.taken)
        first_at: dict[str, int] = {}
        for e in self.entries:
            if e.name in self.dups and e.name not in first_at:
                first_at[e.name] = e.index
        rest = (e for i, e in enumerate(self.by_name) if not self.taken[i])
        return count, heapq.nsmallest(n, rest, key=lambda e: first_at.get(e.name, e.index))


_NAME = attrgetter("name")


def check_toc_matches_tarsplit(entries: list[TocEntry], tarsplit: TarSplitSource, name: str = "layer") -> list[str]:
    """All the ways the TOC and the tar-split disagree (ensureTOCMatchesTarSplit, plus more detail).

    Returns a list of problems (empty when they match). Structural errors in
    the tar-split raise BadInputError. Reads the tar-split twice, streaming.
    """
    problems: list[str] = []
    pending = _Pending([e for e in entries if e.type != TYPE_CHUNK])
    for e in pending.duplicates():
        problems.append(f"{e.where(name)}: duplicate path in the TOC")
    # First pass: the file entries' sizes; and, as the consumer rebuilds the
    # tar by opening each tar-split file entry's name in the extracted tree, a
    # payload-carrying name that is not a regular file of the TOC (with that
    # size) fails the pull at the end.
    regs = {_clean(e.name): e for e in entries if e.type == TYPE_REG and e.size > 0}
    file_sizes: dict[str, int] = {}
    no_file: list[str] = []
    for ts in iter_tarsplit(tarsplit, name):
        if ts.type != FILE_TYPE:
            continue
        file_sizes[ts.name_str] = ts.size
        if ts.size > 0:
            reg = regs.get(_clean(ts.name_str))
            if reg is None or reg.size != ts.size:
                no_file.append(
                    f"{name}: tar-split entry {ts.line} ({ts.name_str!r}, {ts.size} bytes) has no regular file "
                    "of that size in the TOC; the consumer cannot rebuild the tar"
                )
    del regs
    for hdr, ts in iter_tarsplit_headers(iter_tarsplit(tarsplit, name), name):
        hname = _text(hdr.name)
        where = f"{name}: tar-split entry {ts.line} ({hname!r})"
        if toc_type(hdr) is None:
            problems.append(f"{where}: tar type {hdr.typeflag!r} is not one the consumer accepts")
            continue
        entry = pending.pop(hname)
        if entry is None:
            problems.append(f"{where}: entry is missing from the TOC")
            continue
        for d in compare_entry(entry, hdr):
            problems.append(f"{entry.where(name)}: TOC and tar-split disagree on {d}")
        fsize = file_sizes.get(hname)
        if has_data(hdr) and fsize is not None and fsize != hdr.size:
            problems.append(f"{where}: tar-split file size {fsize} != header size {hdr.size}")
    problems.extend(no_file)
    left, first = pending.left(20)
    for e in first:
        problems.append(f"{e.where(name)}: entry is missing from the tar-split")
    if left > 20:
        problems.append(f"{name}: ... and {left - 20} more TOC entries missing from the tar-split")
    return problems
