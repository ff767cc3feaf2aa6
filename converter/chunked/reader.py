"""Parse and validate a zstd:chunked blob, trusting nothing in it.

The reader works on random access to the blob: a seekable file, or a
callable `fetch_range(offset, length) -> bytes` (a registry range request),
plus the layer descriptor's annotations, which is all the consumer
(containers/storage) looks at before it decides on a partial pull.

Every failure raises BadInputError naming the layer and, where it applies,
the TOC entry or tar-split line and the offset. Sizes are checked before
anything is read or allocated, and every decompression is bounded, so a
hostile blob costs at most the declared limits in memory and time.

Two rules of the consumer shape this module:

* The TOC and the tar-split are found through the annotations only (the
  footer is not read by the consumer); `read_footer` exists so `verify` can
  check that the footer agrees.
* The TOC is trusted for files, the tar-split for the tar stream, and the
  consumer refuses layers where the two disagree. To check that, the tar
  headers kept in the tar-split are parsed here with the rules of Go's
  archive/tar (which the consumer uses), not Python's tarfile: tarfile strips
  the trailing slash of directory names and handles PAX and GNU fields
  differently, which would hide real mismatches.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import io
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Union

import zstandard

from converter.chunked.format import (
    FOOTER_FRAME_SIZE,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    LEGACY_PREFIX,
    MANIFEST_CHECKSUM_KEY,
    MANIFEST_POSITION_KEY,
    MANIFEST_TYPE_CRFS,
    MAX_TARSPLIT_SIZE,
    MAX_TOC_SIZE,
    SKIPPABLE_HEADER_SIZE,
    SKIPPABLE_MAGIC,
    TARSPLIT_POSITION_KEY,
    Footer,
)
from converter.chunked import tarstream
from converter.chunked.tarstream import HEADER_ONLY_TYPES
from converter.chunked.toc import TYPE_NAMES, XATTR_PREFIX, go_clean
from converter.errors import BadInputError

FetchRange = Callable[[int, int], bytes]
BlobSource = Union[BinaryIO, FetchRange, "BlobAccess"]

TOC_TYPES = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")
CHUNK_TYPE = "chunk"
CHUNK_TYPES = ("", "zeros")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
SHA256_EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()
INT64_MAX = (1 << 63) - 1
# Decompression works in pieces this large, so output is bounded to the
# limit plus one piece whatever a frame header claims.
_READ_PIECE = 1 << 20
# libzstd's default window limit (2^27); a frame asking for more is refused
# instead of making the decoder allocate it.
MAX_WINDOW_SIZE = 1 << 27

_GO_ZERO_TIME = -62135596800  # 0001-01-01T00:00:00Z, Go's time.Time{}


def _bad(where: str, what: str) -> BadInputError:
    return BadInputError(f"{where}: {what}")


# --------------------------------------------------------------- blob access


class BlobAccess:
    """Random access to a blob of known size; counts requests and bytes.

    `src` is a seekable binary file or a `fetch_range(offset, length)`
    callable. For a callable, `size` (the descriptor's) is required; for a
    file it defaults to the file's length.
    """

    def __init__(self, src: BinaryIO | FetchRange, size: int | None = None, name: str = "layer") -> None:
        self.name = name
        self.requests = 0
        self.bytes_read = 0
        if hasattr(src, "seek") and hasattr(src, "read"):
            f: BinaryIO = src  # type: ignore[assignment]
            if size is None:
                size = f.seek(0, io.SEEK_END)

            def fetch(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)

            self._fetch: FetchRange = fetch
        elif callable(src):
            if size is None:
                raise ValueError("BlobAccess: a fetch_range callable needs the blob size")
            self._fetch = src
        else:
            raise TypeError(f"BlobAccess: cannot read from {type(src).__name__}")
        if size < 0:
            raise BadInputError(f"{name}: negative blob size {size}")
        self.size = size

    def read_at(self, offset: int, length: int, what: str = "range") -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise _bad(
                self.name,
                f"{what} at offset {offset} length {length} lies outside the blob of {self.size} bytes",
            )
        if length == 0:
            return b""
        self.requests += 1
        data = self._fetch(offset, length)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("fetch_range must return bytes")
        data = bytes(data)
        self.bytes_read += len(data)
        if len(data) != length:
            raise _bad(self.name, f"{what} at offset {offset}: got {len(data)} of {length} bytes (blob truncated?)")
        return data


def as_access(src: BlobSource, size: int | None = None, name: str = "layer") -> BlobAccess:
    if isinstance(src, BlobAccess):
        return src
    return BlobAccess(src, size, name)


# --------------------------------------------------------------- annotations


@dataclass(frozen=True)
class Position:
    offset: int
    length: int
    uncompressed_length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class ChunkedAnnotations:
    checksum: str
    toc: Position
    tarsplit: Position | None
    manifest_type: int


def is_chunked(annotations: Mapping[str, str] | None) -> bool:
    """True when the descriptor claims zstd:chunked (what the consumer keys on)."""
    return bool(annotations) and MANIFEST_CHECKSUM_KEY in annotations  # type: ignore[operator]


def legacy_annotations(annotations: Mapping[str, str] | None) -> list[str]:
    return sorted(k for k in (annotations or {}) if k.startswith(LEGACY_PREFIX))


def _parse_ints(value: Any, fields: int, key: str, name: str) -> tuple[int, ...]:
    if not isinstance(value, str):
        raise _bad(name, f"annotation {key} is not a string")
    parts = value.split(":")
    # Plain decimal digits only: Python's int() would also take "+1", " 1", "1_0".
    if len(parts) != fields or not all(p and len(p) <= 20 and p.isascii() and p.isdigit() for p in parts):
        raise _bad(name, f"annotation {key}={value!r} is malformed (want {fields} decimal numbers separated by ':')")
    nums = tuple(int(p) for p in parts)
    if any(n > INT64_MAX for n in nums):
        raise _bad(name, f"annotation {key}={value!r} has a number beyond 2^63")
    return nums


def parse_annotations(
    annotations: Mapping[str, str] | None,
    blob_size: int | None = None,
    name: str = "layer",
    max_toc_size: int = MAX_TOC_SIZE,
    max_tarsplit_size: int = MAX_TARSPLIT_SIZE,
    require_tarsplit: bool = True,
) -> ChunkedAnnotations:
    """Parse and bound-check the three zstd:chunked annotations.

    Limits are checked before anything is read: the consumer refuses TOCs
    over 150 MiB (compressed or not), and we hold the tar-split to a bound
    too because we keep it in memory.
    """
    ann = annotations or {}
    required = (MANIFEST_CHECKSUM_KEY, MANIFEST_POSITION_KEY) + ((TARSPLIT_POSITION_KEY,) if require_tarsplit else ())
    for key in required:
        if key not in ann:
            raise _bad(name, f"annotation {key} is missing")
    checksum = ann[MANIFEST_CHECKSUM_KEY]
    if not isinstance(checksum, str) or not DIGEST_RE.match(checksum):
        raise _bad(name, f"annotation {MANIFEST_CHECKSUM_KEY}={checksum!r} is not a sha256 digest")
    off, ln, uln, mtype = _parse_ints(ann[MANIFEST_POSITION_KEY], 4, MANIFEST_POSITION_KEY, name)
    if mtype != MANIFEST_TYPE_CRFS:
        raise _bad(name, f"manifest type {mtype} in {MANIFEST_POSITION_KEY} is not {MANIFEST_TYPE_CRFS}")
    toc = Position(off, ln, uln)
    tarsplit: Position | None = None
    if TARSPLIT_POSITION_KEY in ann:
        ts_off, ts_ln, ts_uln = _parse_ints(ann[TARSPLIT_POSITION_KEY], 3, TARSPLIT_POSITION_KEY, name)
        tarsplit = Position(ts_off, ts_ln, ts_uln)
    if toc.length > max_toc_size or toc.uncompressed_length > max_toc_size:
        raise _bad(
            name,
            f"TOC of {toc.length} bytes compressed / {toc.uncompressed_length} uncompressed "
            f"exceeds the consumer's limit of {max_toc_size} bytes",
        )
    if tarsplit and (tarsplit.length > max_tarsplit_size or tarsplit.uncompressed_length > max_tarsplit_size):
        raise _bad(
            name,
            f"tar-split of {tarsplit.length} bytes compressed / {tarsplit.uncompressed_length} uncompressed "
            f"exceeds the limit of {max_tarsplit_size} bytes",
        )
    for what, pos in (("TOC", toc), ("tar-split", tarsplit)):
        if pos is None:
            continue
        if pos.length == 0:
            raise _bad(name, f"{what} position declares an empty frame")
        if pos.offset < SKIPPABLE_HEADER_SIZE:
            raise _bad(name, f"{what} offset {pos.offset} leaves no room for its skippable frame header")
        if blob_size is not None and pos.end > blob_size:
            raise _bad(
                name,
                f"{what} at offset {pos.offset} length {pos.length} ends past the blob's {blob_size} bytes",
            )
    if tarsplit and toc.offset < tarsplit.end and tarsplit.offset < toc.end:
        raise _bad(name, f"TOC ({toc.offset}+{toc.length}) and tar-split ({tarsplit.offset}+{tarsplit.length}) overlap")
    return ChunkedAnnotations(checksum, toc, tarsplit, mtype)


# ------------------------------------------------------------- decompression


def _dctx() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)


def decompress_bounded(data: bytes, max_output_size: int, what: str) -> bytes:
    """Decompress all frames in `data`; refuse more than `max_output_size` bytes of output.

    Output grows piece by piece, so a frame that expands enormously (or a
    frame header that lies about its content size) never allocates beyond
    the bound.
    """
    out = bytearray()
    try:
        reader = _dctx().stream_reader(io.BytesIO(data), read_across_frames=True, read_size=_READ_PIECE)
        while True:
            piece = reader.read(min(_READ_PIECE, max_output_size + 1 - len(out)))
            if not piece:
                break
            out += piece
            if len(out) > max_output_size:
                raise BadInputError(f"{what}: decompresses to more than {max_output_size} bytes")
    except zstandard.ZstdError as e:
        raise BadInputError(f"{what}: not valid zstd ({e})") from None
    return bytes(out)


def iter_decompressed(data: bytes, max_output_size: int, what: str, piece: int = _READ_PIECE) -> Iterator[bytes]:
    """Like decompress_bounded, in pieces (for large payloads that are hashed, not kept)."""
    total = 0
    try:
        reader = _dctx().stream_reader(io.BytesIO(data), read_across_frames=True, read_size=_READ_PIECE)
        while True:
            chunk = reader.read(min(piece, max_output_size + 1 - total))
            if not chunk:
                return
            total += len(chunk)
            if total > max_output_size:
                raise BadInputError(f"{what}: decompresses to more than {max_output_size} bytes")
            yield chunk
    except zstandard.ZstdError as e:
        raise BadInputError(f"{what}: not valid zstd ({e})") from None


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------- TOC and times


@dataclass(frozen=True)
class TocEntry:
    """One TOC entry; absent fields are 0 / "" / None as in the consumer."""

    index: int
    type: str
    name: str
    linkname: str = ""
    mode: int = 0
    size: int = 0
    uid: int = 0
    gid: int = 0
    modtime: tuple[int, int] | None = None  # (unix seconds, nanoseconds)
    accesstime: tuple[int, int] | None = None
    changetime: tuple[int, int] | None = None
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, str] = field(default_factory=dict)
    digest: str = ""
    offset: int = 0
    end_offset: int = 0
    chunk_size: int = 0
    chunk_offset: int = 0
    chunk_digest: str = ""
    chunk_type: str = ""

    def where(self, layer: str) -> str:
        return f"{layer}: TOC entry {self.index} ({self.type} {self.name!r})"


_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def parse_rfc3339(value: str) -> tuple[int, int]:
    """RFC 3339 time -> (unix seconds, nanoseconds); ValueError when malformed."""
    m = _RFC3339_RE.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 60):
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    if d > calendar.monthrange(y if y else 2000, mo)[1]:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    frac = m.group(7) or ""
    ns = int(frac.ljust(9, "0")) if frac else 0
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if m.group(9):
        tz = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        secs -= tz if m.group(9) == "+" else -tz
    return secs, ns


def normalize_time(t: tuple[int, int] | None) -> tuple[int, int] | None:
    """The consumer treats Go's zero time and the Unix epoch as absent."""
    if t is None or t == (0, 0) or t == (_GO_ZERO_TIME, 0):
        return None
    return t


def format_time(t: tuple[int, int] | None) -> str:
    if t is None:
        return "none"
    import datetime as _dt

    try:
        base = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(seconds=t[0])
    except OverflowError:  # beyond year 9999 (crafted base-256 times): plain seconds
        return f"{t[0]}.{t[1]:09d}s after the epoch"
    return f"{base.year:04d}" + base.strftime("-%m-%dT%H:%M:%S") + (f".{t[1]:09d}" if t[1] else "") + "Z"


_TOC_FIELDS = {
    "type": "type",
    "name": "name",
    "linkname": "linkname",
    "mode": "mode",
    "size": "size",
    "uid": "uid",
    "gid": "gid",
    "modtime": "modtime",
    "accesstime": "accesstime",
    "changetime": "changetime",
    "devmajor": "devmajor",
    "devminor": "devminor",
    "xattrs": "xattrs",
    "digest": "digest",
    "offset": "offset",
    "endoffset": "end_offset",
    "chunksize": "chunk_size",
    "chunkoffset": "chunk_offset",
    "chunkdigest": "chunk_digest",
    "chunktype": "chunk_type",
}
_INT_FIELDS = ("mode", "size", "uid", "gid", "devmajor", "devminor", "offset", "end_offset", "chunk_size", "chunk_offset")
_STR_FIELDS = ("type", "name", "linkname", "digest", "chunk_digest", "chunk_type")
_TIME_FIELDS = ("modtime", "accesstime", "changetime")


def _has_dotdot(path: str) -> bool:
    return ".." in path.split("/")


def _entry_from_json(index: int, raw: Any, where: str) -> TocEntry:
    if not isinstance(raw, dict):
        raise _bad(where, f"TOC entry {index} is not a JSON object")
    vals: dict[str, Any] = {}
    # Keys are matched case-insensitively and the last one wins, as in the
    # consumer's decoder (jsoniter with strings.ToLower on field names).
    for key, value in raw.items():
        attr = _TOC_FIELDS.get(key.lower())
        if attr is not None:
            vals[attr] = value
    label = f"{where}: TOC entry {index}"
    if "name" in vals and isinstance(vals["name"], str):
        label += f" ({vals['name']!r})"
    for attr in _STR_FIELDS:
        if attr in vals and not isinstance(vals[attr], str):
            raise BadInputError(f"{label}: field {attr} is not a string")
    for attr in _INT_FIELDS:
        if attr in vals:
            v = vals[attr]
            if not isinstance(v, int) or isinstance(v, bool):
                raise BadInputError(f"{label}: field {attr} is not an integer")
            if v < 0 or v > INT64_MAX:
                raise BadInputError(f"{label}: field {attr}={v} is out of range")
    for attr in _TIME_FIELDS:
        if attr in vals:
            v = vals[attr]
            if not isinstance(v, str):
                raise BadInputError(f"{label}: field {attr} is not a string")
            try:
                vals[attr] = parse_rfc3339(v)
            except ValueError as e:
                raise BadInputError(f"{label}: field {attr}: {e}") from None
    if "xattrs" in vals:
        x = vals["xattrs"]
        if x is None:
            x = {}
        if not isinstance(x, dict) or not all(isinstance(v, str) for v in x.values()):
            raise BadInputError(f"{label}: xattrs is not an object of strings")
        for k, v in x.items():
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise BadInputError(f"{label}: xattr {k!r} value is not base64") from None
        vals["xattrs"] = dict(x)
    typ = vals.get("type", "")
    name = vals.get("name", "")
    if typ not in TOC_TYPES and typ != CHUNK_TYPE:
        raise BadInputError(f"{label}: unknown entry type {typ!r}")
    if not name:
        raise BadInputError(f"{label}: entry without a name")
    if "\x00" in name or "\x00" in vals.get("linkname", ""):
        raise BadInputError(f"{label}: name contains a NUL byte")
    if _has_dotdot(name):
        raise BadInputError(f"{label}: name {name!r} contains '..' (escapes the layer root)")
    if typ == "hardlink" and _has_dotdot(vals.get("linkname", "")):
        raise BadInputError(f"{label}: hardlink target {vals.get('linkname')!r} contains '..'")
    for attr in ("digest", "chunk_digest"):
        if vals.get(attr) and not DIGEST_RE.match(vals[attr]):
            raise BadInputError(f"{label}: {attr} {vals[attr]!r} is not a sha256 digest")
    if vals.get("chunk_type", "") not in CHUNK_TYPES:
        raise BadInputError(f"{label}: unknown chunkType {vals['chunk_type']!r}")
    return TocEntry(index=index, **vals)


def parse_toc(data: bytes, name: str = "layer") -> dict[str, Any]:
    """Parse TOC JSON bytes into a dict, checking it is a version-1 TOC.

    The result has "version", "entries" (list of raw dicts) and
    "tarSplitDigest" (or None).
    """
    try:
        doc = json.loads(data)
    except RecursionError:
        raise _bad(name, "TOC JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(name, f"TOC is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(doc, dict):
        raise _bad(name, "TOC JSON is not an object")
    low = {k.lower(): v for k, v in doc.items()}
    version = low.get("version")
    if version != 1 or isinstance(version, bool):
        raise _bad(name, f"TOC version {version!r} is not 1 (not a zstd:chunked TOC)")
    entries = low.get("entries")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise _bad(name, "TOC entries is not a list")
    tsd = low.get("tarsplitdigest")
    if tsd is not None and (not isinstance(tsd, str) or not DIGEST_RE.match(tsd)):
        raise _bad(name, f"TOC tarSplitDigest {tsd!r} is not a sha256 digest")
    return {"version": 1, "entries": entries, "tarSplitDigest": tsd}


def toc_entries(toc: Mapping[str, Any], name: str = "layer") -> list[TocEntry]:
    """Typed entries of a parsed TOC (field types and names checked)."""
    return [_entry_from_json(i, e, name) for i, e in enumerate(toc.get("entries") or [])]


@dataclass(frozen=True)
class PayloadChunk:
    """One payload frame range: [offset, end) decompresses to `size` bytes at `chunk_offset` of the file."""

    offset: int
    end: int
    chunk_offset: int
    size: int
    digest: str  # chunk digest; for single-chunk files the file digest
    zeros: bool
    entry: TocEntry


@dataclass(frozen=True)
class TocFile:
    """A regular file with its payload chunks (empty for empty files)."""

    entry: TocEntry
    chunks: tuple[PayloadChunk, ...]


def group_files(entries: list[TocEntry], payload_end: int, name: str = "layer") -> list[TocFile]:
    """Group `reg` entries with their `chunk` entries and check the ranges.

    Checks that every range lies inside [1, payload_end) (before the TOC),
    that chunks tile the file exactly, that ranges of different frames do not
    overlap, and that no path appears twice (the consumer refuses that).
    Raises BadInputError on the first problem.
    """
    files: list[TocFile] = []
    seen: dict[str, int] = {}
    i = 0
    n = len(entries)
    while i < n:
        e = entries[i]
        if e.type == CHUNK_TYPE:
            raise BadInputError(f"{e.where(name)}: chunk entry without a preceding regular file")
        if e.name in seen:
            raise BadInputError(f"{e.where(name)}: path appears twice in the TOC (first at entry {seen[e.name]})")
        seen[e.name] = e.index
        if e.type != "reg":
            if e.digest or e.offset or e.end_offset or e.chunk_size or e.chunk_digest:
                raise BadInputError(f"{e.where(name)}: {e.type} entry carries payload fields")
            i += 1
            continue
        j = i + 1
        while j < n and entries[j].type == CHUNK_TYPE:
            if entries[j].name != e.name:
                raise BadInputError(f"{entries[j].where(name)}: chunk of {entries[j].name!r} follows file {e.name!r}")
            j += 1
        parts = entries[i:j]
        i = j
        if e.size == 0:
            if len(parts) > 1 or e.offset or e.end_offset or e.chunk_size:
                raise BadInputError(f"{e.where(name)}: empty file with payload ranges")
            if e.digest and e.digest != SHA256_EMPTY:
                raise BadInputError(f"{e.where(name)}: empty file with digest {e.digest} (not the empty digest)")
            files.append(TocFile(e, ()))
            continue
        if not e.digest:
            raise BadInputError(f"{e.where(name)}: file of {e.size} bytes without a digest")
        if e.offset <= 0 or e.end_offset <= e.offset:
            raise BadInputError(
                f"{e.where(name)}: payload range {e.offset}..{e.end_offset} is empty or missing"
            )
        if e.end_offset > payload_end:
            raise BadInputError(
                f"{e.where(name)}: payload ends at {e.end_offset}, past the frames' end at {payload_end}"
            )
        chunks: list[PayloadChunk] = []
        multi = len(parts) > 1 or e.chunk_size > 0
        if not multi:
            chunks.append(PayloadChunk(e.offset, e.end_offset, 0, e.size, e.digest, False, e))
        else:
            expect_off = 0
            for k, p in enumerate(parts):
                if p.chunk_size <= 0:
                    raise BadInputError(f"{p.where(name)}: chunk without a chunkSize")
                if p.chunk_offset != expect_off:
                    raise BadInputError(
                        f"{p.where(name)}: chunkOffset {p.chunk_offset}, expected {expect_off} (chunks must tile the file)"
                    )
                if not p.chunk_digest:
                    raise BadInputError(f"{p.where(name)}: chunk without a chunkDigest")
                start = p.offset
                end = parts[k + 1].offset if k + 1 < len(parts) else e.end_offset
                if start <= 0 or end <= start:
                    raise BadInputError(
                        f"{p.where(name)}: chunk range {start}..{end} is empty or out of order"
                    )
                if k > 0 and p.end_offset and p.end_offset != end:
                    raise BadInputError(
                        f"{p.where(name)}: chunk endOffset {p.end_offset} differs from the next frame's start {end}"
                    )
                expect_off += p.chunk_size
                if expect_off > e.size:
                    raise BadInputError(f"{p.where(name)}: chunks add up to more than the file's {e.size} bytes")
                chunks.append(PayloadChunk(start, end, p.chunk_offset, p.chunk_size, p.chunk_digest,
                                           p.chunk_type == "zeros", p))
            if parts[0].offset != e.offset:
                raise BadInputError(f"{e.where(name)}: first chunk offset differs from the file offset")
            if expect_off != e.size:
                raise BadInputError(
                    f"{e.where(name)}: chunks add up to {expect_off} bytes, the file has {e.size}"
                )
        files.append(TocFile(e, tuple(chunks)))
    # Frames of different files (or chunks) must not overlap: a blob where
    # they do is crafted, and would let one range stand for two contents.
    ranges = sorted((c.offset, c.end, c.entry) for f in files for c in f.chunks)
    for (a_off, a_end, a_e), (b_off, b_end, b_e) in zip(ranges, ranges[1:]):
        if b_off < a_end:
            raise BadInputError(
                f"{b_e.where(name)}: payload range {b_off}..{b_end} overlaps entry {a_e.index} "
                f"({a_e.name!r}) range {a_off}..{a_end}"
            )
    return files


# ----------------------------------------------------------------- tar-split


@dataclass(frozen=True)
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


def iter_tarsplit(data: bytes, name: str = "layer") -> Iterator[TarSplitEntry]:
    """Tar-split entries in order; checks types, positions, payload encoding, duplicate paths.

    Go's decoder reads a stream of JSON values; we do the same (values are
    normally one per line) so that we accept what the consumer accepts.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(name, f"tar-split is not UTF-8 JSON (byte {e.start})") from None
    dec = json.JSONDecoder()
    pos = 0
    n = len(text)
    expect_position = 0
    seen: set[str] = set()
    line = 0
    ws = re.compile(r"[ \t\n\r]*")
    while True:
        m = ws.match(text, pos)
        pos = m.end() if m else pos
        if pos >= n:
            return
        line += 1
        where = f"{name}: tar-split entry {line} (byte {pos})"
        try:
            obj, pos = dec.raw_decode(text, pos)
        except RecursionError:
            raise BadInputError(f"{where}: JSON nested too deeply") from None
        except ValueError as e:
            raise BadInputError(f"{where}: not valid JSON ({str(e)[:120]})") from None
        if not isinstance(obj, dict):
            raise BadInputError(f"{where}: not a JSON object")
        low = {k.lower(): v for k, v in obj.items()}
        typ = low.get("type")
        if typ not in (1, 2) or isinstance(typ, bool):
            raise BadInputError(f"{where}: unknown entry type {typ!r}")
        position = low.get("position", 0)
        if position != expect_position or isinstance(position, bool):
            raise BadInputError(f"{where}: position {position!r}, expected {expect_position}")
        expect_position += 1
        payload_v = low.get("payload")
        payload = None if payload_v is None else _b64(payload_v, f"{where}: payload")
        if typ == 2:
            if payload is None:
                payload = b""
            yield TarSplitEntry(2, position, payload, line=line)
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
        yield TarSplitEntry(1, position, payload, fname, size, line=line)


# ----------------------------------------------- tar headers (Go archive/tar)
#
# The header blocks kept in the tar-split are parsed by tarstream, the same
# code the writer reads layers with, so writer and reader cannot drift apart;
# this section only adapts tarstream's entries to the consumer's view.


@dataclass(frozen=True)
class TarHeader:
    typeflag: bytes
    name: str
    linkname: str
    mode: int
    size: int
    uid: int
    gid: int
    modtime: tuple[int, int] | None
    accesstime: tuple[int, int] | None
    changetime: tuple[int, int] | None
    devmajor: int
    devminor: int
    xattrs: Mapping[str, str]  # name -> base64 of raw value bytes, as the TOC stores them

    @property
    def has_data(self) -> bool:
        return self.typeflag not in HEADER_ONLY_TYPES

    @property
    def padding(self) -> int:
        return (-self.size) % 512 if self.has_data else 0

    @property
    def toc_type(self) -> str | None:
        return TYPE_NAMES.get(self.typeflag)


class _HeaderError(Exception):
    pass


def _secs_nsec(ns: int | None) -> tuple[int, int] | None:
    return None if ns is None else divmod(ns, 1_000_000_000)


def _from_tarstream(h: tarstream.TarHeader) -> TarHeader:
    """tarstream's header as the reader compares it: text names, (secs, nsec) times, base64 xattrs."""
    xattrs = {
        k[len(XATTR_PREFIX) :].decode("utf-8", "surrogateescape"): base64.b64encode(v).decode()
        for k, v in (h.pax or {}).items()
        if k.startswith(XATTR_PREFIX)
    }
    return TarHeader(
        typeflag=h.typeflag,
        name=h.name.decode("utf-8", "surrogateescape"),
        linkname=h.linkname.decode("utf-8", "surrogateescape"),
        mode=h.mode,
        size=h.size,
        uid=h.uid,
        gid=h.gid,
        modtime=_secs_nsec(h.mtime),
        accesstime=_secs_nsec(h.atime),
        changetime=_secs_nsec(h.ctime),
        devmajor=h.devmajor,
        devminor=h.devminor,
        xattrs=xattrs,
    )


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
    return _from_tarstream(h)


def iter_tarsplit_headers(entries: Iterable[TarSplitEntry], name: str = "layer") -> Iterator[tuple[TarHeader, TarSplitEntry]]:
    """(header, segment) for each tar entry, as the consumer's asm.IterateHeaders sees them.

    Each segment holds the previous entry's padding and then one entry's
    header(s); the padding is skipped by the size of the previous header.
    """
    pending = 0
    for ts in entries:
        if ts.type != 2:
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
        pending = hdr.padding
        yield hdr, ts


def expected_toc_fields(hdr: TarHeader) -> dict[str, Any]:
    """What minimal.NewFileMetadata(hdr) would put in the TOC (the fields the consumer compares)."""
    return {
        "type": hdr.toc_type,
        "name": hdr.name,
        "linkname": hdr.linkname,
        "mode": hdr.mode,
        "size": hdr.size,
        "uid": hdr.uid,
        "gid": hdr.gid,
        "modtime": normalize_time(hdr.modtime),
        "accesstime": normalize_time(hdr.accesstime),
        "changetime": normalize_time(hdr.changetime),
        "devmajor": hdr.devmajor,
        "devminor": hdr.devminor,
        "xattrs": dict(hdr.xattrs),
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


def check_toc_matches_tarsplit(entries: list[TocEntry], tarsplit: bytes, name: str = "layer") -> list[str]:
    """All the ways the TOC and the tar-split disagree (ensureTOCMatchesTarSplit, plus more detail).

    Returns a list of problems (empty when they match). Structural errors in
    the tar-split raise BadInputError.
    """
    problems: list[str] = []
    pending: dict[str, TocEntry] = {}
    for e in entries:
        if e.type == CHUNK_TYPE:
            continue
        if e.name in pending:
            problems.append(f"{e.where(name)}: duplicate path in the TOC")
        pending[e.name] = e
    ts_entries = list(iter_tarsplit(tarsplit, name))
    file_sizes: dict[str, int] = {}
    for ts in ts_entries:
        if ts.type == 1:
            file_sizes[ts.name_str] = ts.size
    for hdr, ts in iter_tarsplit_headers(ts_entries, name):
        where = f"{name}: tar-split entry {ts.line} ({hdr.name!r})"
        if hdr.toc_type is None:
            problems.append(f"{where}: tar type {hdr.typeflag!r} is not one the consumer accepts")
            continue
        e = pending.pop(hdr.name, None)
        if e is None:
            problems.append(f"{where}: entry is missing from the TOC")
            continue
        for d in compare_entry(e, hdr):
            problems.append(f"{e.where(name)}: TOC and tar-split disagree on {d}")
        fsize = file_sizes.get(hdr.name)
        if hdr.has_data and fsize is not None and fsize != hdr.size:
            problems.append(f"{where}: tar-split file size {fsize} != header size {hdr.size}")
    # The consumer rebuilds the tar by opening each tar-split file entry's
    # name in the extracted tree: a payload-carrying name that is not a
    # regular file of the TOC (with that size) fails the pull at the end.
    regs = {go_clean(e.name): e for e in entries if e.type == "reg"}
    for ts in ts_entries:
        if ts.type == 1 and ts.size > 0:
            e = regs.get(go_clean(ts.name_str))
            if e is None or e.size != ts.size:
                problems.append(
                    f"{name}: tar-split entry {ts.line} ({ts.name_str!r}, {ts.size} bytes) has no regular file "
                    "of that size in the TOC; the consumer cannot rebuild the tar"
                )
    for e in list(pending.values())[:20]:
        problems.append(f"{e.where(name)}: entry is missing from the tar-split")
    if len(pending) > 20:
        problems.append(f"{name}: ... and {len(pending) - 20} more TOC entries missing from the tar-split")
    return problems


def tar_size_from_tarsplit(tarsplit: bytes, name: str = "layer") -> int:
    """Uncompressed tar size from the tar-split alone (tarSizeFromTarSplit)."""
    total = 0
    for ts in iter_tarsplit(tarsplit, name):
        total += len(ts.payload or b"") if ts.type == 2 else ts.size
    return total


# ------------------------------------------------------------ reading a blob


def _read_frame(access: BlobAccess, pos: Position, what: str) -> bytes:
    """The compressed bytes at `pos`, checking the skippable frame header before them."""
    raw = access.read_at(pos.offset - SKIPPABLE_HEADER_SIZE, pos.length + SKIPPABLE_HEADER_SIZE, what)
    magic, ln = raw[:4], struct.unpack("<I", raw[4:8])[0]
    if magic != SKIPPABLE_MAGIC:
        raise _bad(access.name, f"{what} at offset {pos.offset} is not inside a zstd skippable frame")
    if ln != pos.length:
        raise _bad(
            access.name,
            f"{what} skippable frame at offset {pos.offset - 8} holds {ln} bytes, the annotation says {pos.length}",
        )
    return raw[SKIPPABLE_HEADER_SIZE:]


def read_toc_bytes(access: BlobAccess, ann: ChunkedAnnotations) -> tuple[bytes, bytes]:
    """(compressed, uncompressed) TOC, with the manifest-checksum and declared length checked."""
    compressed = _read_frame(access, ann.toc, "TOC")
    got = _sha256(compressed)
    if got != ann.checksum:
        raise _bad(
            access.name,
            f"TOC at offset {ann.toc.offset}: sha256 {got} does not match manifest-checksum {ann.checksum}",
        )
    data = decompress_bounded(compressed, ann.toc.uncompressed_length, f"{access.name}: TOC at offset {ann.toc.offset}")
    if len(data) != ann.toc.uncompressed_length:
        raise _bad(
            access.name,
            f"TOC at offset {ann.toc.offset} decompresses to {len(data)} bytes, the annotation says {ann.toc.uncompressed_length}",
        )
    return compressed, data


def read_toc(
    reader: BlobSource,
    annotations: Mapping[str, str],
    *,
    size: int | None = None,
    name: str = "layer",
) -> dict[str, Any]:
    """The layer's TOC as a dict ("version", "entries", "tarSplitDigest"), fully checked.

    `reader` is a seekable file, a fetch_range(offset, length) callable (then
    `size` is required), or a BlobAccess. Checks the annotations and limits,
    the manifest-checksum, bounded decompression, the JSON structure, every
    entry's fields, names, ranges and duplicates.
    """
    access = as_access(reader, size, name)
    ann = parse_annotations(annotations, access.size, access.name, require_tarsplit=False)
    _, data = read_toc_bytes(access, ann)
    toc = parse_toc(data, access.name)
    entries = toc_entries(toc, access.name)
    group_files(entries, payload_end_of(ann), access.name)
    return toc


def payload_end_of(ann: ChunkedAnnotations) -> int:
    """Payload frames all come before the TOC's and tar-split's skippable frames."""
    return min(ann.toc.offset, ann.tarsplit.offset if ann.tarsplit else ann.toc.offset) - SKIPPABLE_HEADER_SIZE


def read_tarsplit_bytes(access: BlobAccess, ann: ChunkedAnnotations, tarsplit_digest: str | None) -> tuple[bytes, bytes]:
    """(compressed, uncompressed) tar-split, checked against the TOC's tarSplitDigest."""
    if ann.tarsplit is None:
        raise _bad(access.name, "no tar-split position")
    if not tarsplit_digest:
        raise _bad(access.name, "TOC has no tarSplitDigest (the consumer cannot authenticate the tar-split and falls back to a full pull)")
    compressed = _read_frame(access, ann.tarsplit, "tar-split")
    got = _sha256(compressed)
    if got != tarsplit_digest:
        raise _bad(
            access.name,
            f"tar-split at offset {ann.tarsplit.offset}: sha256 {got} does not match the TOC's tarSplitDigest {tarsplit_digest}",
        )
    data = decompress_bounded(
        compressed, ann.tarsplit.uncompressed_length, f"{access.name}: tar-split at offset {ann.tarsplit.offset}"
    )
    if len(data) != ann.tarsplit.uncompressed_length:
        raise _bad(
            access.name,
            f"tar-split at offset {ann.tarsplit.offset} decompresses to {len(data)} bytes, "
            f"the annotation says {ann.tarsplit.uncompressed_length}",
        )
    return compressed, data


def read_footer(access: BlobAccess) -> Footer:
    if access.size < FOOTER_FRAME_SIZE:
        raise _bad(access.name, f"blob of {access.size} bytes is too small for a zstd:chunked footer")
    raw = access.read_at(access.size - FOOTER_FRAME_SIZE, FOOTER_FRAME_SIZE, "footer")
    if raw[:4] != SKIPPABLE_MAGIC or struct.unpack("<I", raw[4:8])[0] != FOOTER_SIZE:
        raise _bad(access.name, f"no 64-byte skippable footer frame at offset {access.size - FOOTER_FRAME_SIZE}")
    if raw[8 + 56 :] != FOOTER_MAGIC:
        raise _bad(access.name, f"footer at offset {access.size - FOOTER_SIZE} lacks the GNUlInUx magic")
    return Footer.unpack(raw[8:])


@dataclass
class ChunkedLayer:
    """Everything the metadata of one zstd:chunked layer holds, checked."""

    name: str
    access: BlobAccess
    annotations: ChunkedAnnotations
    toc_compressed: bytes
    toc: dict[str, Any]
    entries: list[TocEntry]
    files: list[TocFile]
    tarsplit_compressed: bytes
    tarsplit: bytes

    @property
    def toc_digest(self) -> str:
        return self.annotations.checksum


def load_layer(
    reader: BlobSource,
    annotations: Mapping[str, str],
    *,
    size: int | None = None,
    name: str = "layer",
    check_match: bool = True,
) -> ChunkedLayer:
    """Read and check a layer's TOC and tar-split; raise BadInputError on the first problem.

    With check_match (default), also requires that TOC and tar-split
    describe the same entries, as the consumer does.
    """
    access = as_access(reader, size, name)
    ann = parse_annotations(annotations, access.size, access.name)
    toc_c, toc_raw = read_toc_bytes(access, ann)
    toc = parse_toc(toc_raw, access.name)
    entries = toc_entries(toc, access.name)
    files = group_files(entries, payload_end_of(ann), access.name)
    ts_c, ts = read_tarsplit_bytes(access, ann, toc.get("tarSplitDigest"))
    if check_match:
        problems = check_toc_matches_tarsplit(entries, ts, access.name)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BadInputError(problems[0] + more)
    return ChunkedLayer(access.name, access, ann, toc_c, toc, entries, files, ts_c, ts)


def read_chunk(access: BlobAccess, chunk: PayloadChunk, max_output: int | None = None) -> bytes:
    """Decompress one payload range on its own; must give exactly chunk.size bytes."""
    e = chunk.entry
    what = f"{access.name}: TOC entry {e.index} ({e.name!r}) range {chunk.offset}..{chunk.end}"
    data = access.read_at(chunk.offset, chunk.end - chunk.offset, what)
    out = decompress_bounded(data, chunk.size if max_output is None else max_output, what)
    if len(out) != chunk.size:
        raise BadInputError(f"{what}: decompresses to {len(out)} bytes, expected {chunk.size}")
    return out
