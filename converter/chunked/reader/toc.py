"""The TOC as the consumer reads it: typed entries, times, and the file/chunk grouping.

Entries are parsed one at a time from the JSON text into compact slotted
objects, so a TOC of a million entries costs a few hundred bytes per entry,
never a dict per entry on top of them.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import codecs
import datetime as _dt
import functools
import json
import re
import types
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Iterable, Iterator, Mapping

from converter.chunked.format import (
    CHUNK_TYPE_ZEROS,
    CHUNK_TYPES,
    DIGEST_RE,
    INT64_MAX,
    SHA256_EMPTY,
    TOC_TYPES,
    TYPE_CHUNK,
    TYPE_REG,
)
from converter.chunked.reader.access import bad
from converter.errors import BadInputError

_GO_ZERO_TIME = -62135596800  # 0001-01-01T00:00:00Z, Go's time.Time{}
_NO_XATTRS: Mapping[str, str] = types.MappingProxyType({})


_META_DEFAULTS = (0, None, "", 0, 0, None, None, 0, 0, ())
_DATA_DEFAULTS = (0, "", 0, 0, 0, 0, "", "")
_FIELDS = (
    "index",
    "type",
    "name",
    "linkname",
    "mode",
    "size",
    "uid",
    "gid",
    "modtime",
    "accesstime",
    "changetime",
    "devmajor",
    "devminor",
    "xattrs",
    "digest",
    "offset",
    "end_offset",
    "chunk_size",
    "chunk_offset",
    "chunk_digest",
    "chunk_type",
)
# Values that repeat across the entries of a layer (types, modes, owners,
# times, link names) are shared, so a TOC of a million entries costs little
# more than its names and digests.
_interned: dict[Any, Any] = {}


def _intern(v: Any) -> Any:
    if len(_interned) > 100_000:
        _interned.clear()
    return _interned.setdefault(v, v)


class TocEntry:
    """One TOC entry; absent fields are 0 / "" / None as in the consumer.

    Immutable and compact: the metadata that entries of a layer mostly
    share (mode, owner, times, link name, device numbers, xattrs) is one
    interned tuple; size, digest, payload range and chunk fields another,
    None for entries without payload (directories, links, empty files).
    """

    __slots__ = ("index", "type", "name", "_meta", "_data")

    index: int
    type: str
    name: str
    _meta: tuple[Any, ...] | None
    _data: tuple[Any, ...] | None

    def __init__(
        self,
        index: int,
        type: str,
        name: str,
        linkname: str = "",
        mode: int = 0,
        size: int = 0,
        uid: int = 0,
        gid: int = 0,
        modtime: tuple[int, int] | None = None,
        accesstime: tuple[int, int] | None = None,
        changetime: tuple[int, int] | None = None,
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: Mapping[str, str] | None = None,
        digest: str = "",
        offset: int = 0,
        end_offset: int = 0,
        chunk_size: int = 0,
        chunk_offset: int = 0,
        chunk_digest: str = "",
        chunk_type: str = "",
    ) -> None:
        put = object.__setattr__
        put(self, "index", index)
        put(self, "type", _intern(type))
        put(self, "name", name)
        meta = (
            mode,
            modtime,
            linkname,
            uid,
            gid,
            accesstime,
            changetime,
            devmajor,
            devminor,
            tuple((xattrs or {}).items()),
        )
        put(self, "_meta", None if meta == _META_DEFAULTS else _intern(meta))
        data = (size, digest, offset, end_offset, chunk_size, chunk_offset, chunk_digest, chunk_type)
        put(self, "_data", None if data == _DATA_DEFAULTS else data)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"TocEntry is immutable (cannot set {key})")

    def _m(self, i: int) -> Any:
        return _META_DEFAULTS[i] if self._meta is None else self._meta[i]

    def _d(self, i: int) -> Any:
        return _DATA_DEFAULTS[i] if self._data is None else self._data[i]

    mode = property(lambda self: self._m(0))
    modtime = property(lambda self: self._m(1))  # (unix seconds, nanoseconds)
    linkname = property(lambda self: self._m(2))
    uid = property(lambda self: self._m(3))
    gid = property(lambda self: self._m(4))
    accesstime = property(lambda self: self._m(5))
    changetime = property(lambda self: self._m(6))
    devmajor = property(lambda self: self._m(7))
    devminor = property(lambda self: self._m(8))
    xattrs = property(lambda self: dict(self._m(9)) if self._meta is not None and self._meta[9] else _NO_XATTRS)
    size = property(lambda self: self._d(0))
    digest = property(lambda self: self._d(1))
    offset = property(lambda self: self._d(2))
    end_offset = property(lambda self: self._d(3))
    chunk_size = property(lambda self: self._d(4))
    chunk_offset = property(lambda self: self._d(5))
    chunk_digest = property(lambda self: self._d(6))
    chunk_type = property(lambda self: self._d(7))

    def fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS}

    def replace(self, **changes: Any) -> TocEntry:
        return TocEntry(**{**self.fields(), **changes})

    def _key(self) -> tuple:
        return (self.index, self.type, self.name, self._meta, self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TocEntry) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "TocEntry(" + ", ".join(f"{k}={v!r}" for k, v in self.fields().items()) + ")"

    def where(self, layer: str) -> str:
        return f"{layer}: TOC entry {self.index} ({self.type} {self.name!r})"


_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


@functools.lru_cache(maxsize=4096)  # entries of a layer mostly share a few times: one tuple each
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
    try:
        base = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(seconds=t[0])
    except OverflowError:  # beyond year 9999 (crafted base-256 times): plain seconds
        return f"{t[0]}.{t[1]:09d}s after the epoch"
    return f"{base.year:04d}" + base.strftime("-%m-%dT%H:%M:%S") + (f".{t[1]:09d}" if t[1] else "") + "Z"


# JSON field (lower-cased) -> TocEntry attribute
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
_INT_FIELDS = (
    "mode",
    "size",
    "uid",
    "gid",
    "devmajor",
    "devminor",
    "offset",
    "end_offset",
    "chunk_size",
    "chunk_offset",
)
_STR_FIELDS = ("type", "name", "linkname", "digest", "chunk_digest", "chunk_type")
_TIME_FIELDS = ("modtime", "accesstime", "changetime")


def _has_dotdot(path: str) -> bool:
    return ".." in path.split("/")


def entry_from_json(index: int, raw: Any, where: str) -> TocEntry:
    """One raw TOC entry, checked and typed (BadInputError names the entry)."""
    if not isinstance(raw, dict):
        raise bad(where, f"TOC entry {index} is not a JSON object")
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
        vals["xattrs"] = dict(x) if x else _NO_XATTRS
    typ = vals.get("type", "")
    name = vals.get("name", "")
    if typ not in TOC_TYPES and typ != TYPE_CHUNK:
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


def _check_header(low: Mapping[str, Any], name: str) -> str | None:
    """Checks the TOC's top-level fields; returns its tarSplitDigest (or None)."""
    version = low.get("version")
    if version != 1 or isinstance(version, bool):
        raise bad(name, f"TOC version {version!r} is not 1 (not a zstd:chunked TOC)")
    tsd = low.get("tarsplitdigest")
    if tsd is not None and (not isinstance(tsd, str) or not DIGEST_RE.match(tsd)):
        raise bad(name, f"TOC tarSplitDigest {tsd!r} is not a sha256 digest")
    return tsd


def parse_toc(data: bytes, name: str = "layer") -> dict[str, Any]:
    """Parse TOC JSON bytes into a dict, checking it is a version-1 TOC.

    The result has "version", "entries" (list of raw dicts) and
    "tarSplitDigest" (or None). For comparing TOCs as JSON; readers that
    only need the entries use `parse_toc_entries`, which keeps far less.
    """
    try:
        doc = json.loads(data)
    except RecursionError:
        raise bad(name, "TOC JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(name, f"TOC is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(doc, dict):
        raise bad(name, "TOC JSON is not an object")
    low = {k.lower(): v for k, v in doc.items()}
    entries = low.get("entries")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise bad(name, "TOC entries is not a list")
    tsd = _check_header(low, name)
    return {"version": 1, "entries": entries, "tarSplitDigest": tsd}


def toc_entries(toc: Mapping[str, Any], name: str = "layer") -> list[TocEntry]:
    """Typed entries of a parsed TOC (field types and names checked)."""
    return [entry_from_json(i, e, name) for i, e in enumerate(toc.get("entries") or [])]


# ----------------------------------------------------- streaming TOC parser

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _Scanner:
    """Walks JSON text that arrives in pieces, value by value, keeping only what is not yet decoded."""

    def __init__(self, pieces: Iterable[str], name: str) -> None:
        self.pieces = iter(pieces)
        self.buf = ""
        self.pos = 0
        self.base = 0  # chars dropped before buf
        self.name = name

    def _fill(self, at_least: int = 1) -> bool:
        got = 0
        parts = [self.buf[self.pos :]]
        for piece in self.pieces:
            parts.append(piece)
            got += len(piece)
            if got >= at_least:
                break
        self.base += self.pos
        self.buf = "".join(parts)
        self.pos = 0
        return got > 0

    def at(self) -> int:
        return self.base + self.pos

    def skip(self) -> str:
        while True:
            m = _WS.match(self.buf, self.pos)
            self.pos = m.end() if m else self.pos
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, ch: str) -> None:
        if self.skip() != ch:
            raise bad(self.name, f"TOC is not valid JSON (expected {ch!r} at char {self.at()})")
        self.pos += 1

    def value(self) -> Any:
        self.skip()
        while True:
            try:
                v, end = _DECODER.raw_decode(self.buf, self.pos)
            except RecursionError:
                raise bad(self.name, "TOC JSON is nested too deeply") from None
            except ValueError as e:
                # Maybe cut at the end of what arrived so far: fetch as much
                # again (so a long value costs linear time) and retry.
                if self._fill(max(1, len(self.buf) - self.pos)):
                    continue
                raise bad(self.name, f"TOC is not valid JSON ({str(e)[:200]})") from None
            if end >= len(self.buf) and not isinstance(v, (dict, list, str)) and self._fill():
                continue  # a number or literal may go on in the next piece
            self.pos = end
            return v


def _iter_raw_entries(sc: _Scanner) -> Iterator[Any]:
    sc.expect("[")
    if sc.skip() == "]":
        sc.pos += 1
        return
    while True:
        yield sc.value()
        c = sc.skip()
        if c == "]":
            sc.pos += 1
            return
        if c != ",":
            raise bad(sc.name, f"TOC is not valid JSON (expected ',' or ']' at char {sc.at()})")
        sc.pos += 1


def toc_text(data: bytes, name: str = "layer") -> str:
    """The TOC's JSON text (UTF-8, as the consumer's decoder requires)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(name, f"TOC is not valid JSON ({str(e)[:200]})") from None


def _text_pieces(pieces: Iterable[bytes], name: str) -> Iterator[str]:
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        for piece in pieces:
            yield dec.decode(piece)
        yield dec.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise bad(name, f"TOC is not valid JSON ({str(e)[:200]})") from None


def parse_toc_entries(data: bytes | str | Iterable[bytes], name: str = "layer") -> tuple[list[TocEntry], str | None]:
    """(typed entries, tarSplitDigest) of TOC JSON, parsed entry by entry.

    `data` is the JSON (bytes or text) or an iterable of byte pieces (the
    TOC as it is decompressed), so neither the text nor a dict per entry is
    ever held whole. Accepts what `parse_toc` + `toc_entries` accept and
    refuses the same inputs. Duplicate top-level keys: the last wins, as in
    `json.loads`.
    """
    if isinstance(data, str):
        pieces: Iterable[str] = (data,)
    elif isinstance(data, (bytes, bytearray)):
        pieces = (toc_text(data, name),)
    else:
        pieces = _text_pieces(data, name)
    del data
    sc = _Scanner(pieces, name)
    if sc.skip() != "{":
        # Not an object: let the ordinary parser name the problem.
        sc.value()
        raise bad(name, "TOC JSON is not an object")
    sc.pos += 1
    low: dict[str, Any] = {}
    entries: list[TocEntry] = []
    entries_seen = False
    if sc.skip() == "}":
        sc.pos += 1
    else:
        while True:
            key = sc.value()
            if not isinstance(key, str):
                raise bad(name, f"TOC is not valid JSON (object key expected at char {sc.at()})")
            sc.expect(":")
            lk = key.lower()
            if lk == "entries" and sc.skip() == "[":
                entries = []
                entries_seen = True
                for i, raw in enumerate(_iter_raw_entries(sc)):
                    entries.append(entry_from_json(i, raw, name))
                low.pop("entries", None)
            else:
                v = sc.value()
                if lk == "entries":
                    entries, entries_seen = [], False
                low[lk] = v
            c = sc.skip()
            sc.pos += 1
            if c == "}":
                break
            if c != ",":
                raise bad(name, f"TOC is not valid JSON (expected ',' or '}}' at char {sc.at() - 1})")
    if sc.skip():
        raise bad(name, f"TOC is not valid JSON (extra data at char {sc.at()})")
    if not entries_seen and low.get("entries") is not None:
        raise bad(name, "TOC entries is not a list")
    return entries, _check_header(low, name)


# ------------------------------------------------------- files and chunks


@dataclass(frozen=True, slots=True)
class PayloadChunk:
    """One payload frame range: [offset, end) decompresses to `size` bytes at `chunk_offset` of the file."""

    offset: int
    end: int
    chunk_offset: int
    size: int
    digest: str  # chunk digest; for single-chunk files the file digest
    zeros: bool
    entry: TocEntry


@dataclass(frozen=True, slots=True)
class TocFile:
    """A regular file with payload, and its payload chunks."""

    entry: TocEntry
    chunks: tuple[PayloadChunk, ...]


def group_files(entries: list[TocEntry], payload_end: int, name: str = "layer") -> list[TocFile]:
    """Group `reg` entries with their `chunk` entries and check the ranges.

    Checks that every range lies inside [1, payload_end) (before the TOC),
    that chunks tile the file exactly, that ranges of different frames do not
    overlap, and that no path appears twice (the consumer refuses that).
    Raises BadInputError on the first problem. Returns the files that have
    payload (empty files have no ranges to read).
    """
    files: list[TocFile] = []
    # Paths that appear more than once, found by sorting (cheaper than a set of every name).
    by_name = sorted((e for e in entries if e.type != TYPE_CHUNK), key=attrgetter("name"))
    dups = {a.name for a, b in zip(by_name, by_name[1:]) if a.name == b.name}
    del by_name
    seen: set[str] = set()
    i = 0
    n = len(entries)
    while i < n:
        e = entries[i]
        if e.type == TYPE_CHUNK:
            raise BadInputError(f"{e.where(name)}: chunk entry without a preceding regular file")
        if e.name in dups:
            if e.name in seen:
                first = next(x.index for x in entries if x.name == e.name)
                raise BadInputError(f"{e.where(name)}: path appears twice in the TOC (first at entry {first})")
            seen.add(e.name)
        if e.type != TYPE_REG:
            if e.digest or e.offset or e.end_offset or e.chunk_size or e.chunk_digest:
                raise BadInputError(f"{e.where(name)}: {e.type} entry carries payload fields")
            i += 1
            continue
        j = i + 1
        while j < n and entries[j].type == TYPE_CHUNK:
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
            continue
        if not e.digest:
            raise BadInputError(f"{e.where(name)}: file of {e.size} bytes without a digest")
        if e.offset <= 0 or e.end_offset <= e.offset:
            raise BadInputError(f"{e.where(name)}: payload range {e.offset}..{e.end_offset} is empty or missing")
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
                    raise BadInputError(f"{p.where(name)}: chunk range {start}..{end} is empty or out of order")
                if k > 0 and p.end_offset and p.end_offset != end:
                    raise BadInputError(
                        f"{p.where(name)}: chunk endOffset {p.end_offset} differs from the next frame's start {end}"
                    )
                expect_off += p.chunk_size
                if expect_off > e.size:
                    raise BadInputError(f"{p.where(name)}: chunks add up to more than the file's {e.size} bytes")
                chunks.append(
                    PayloadChunk(
                        start, end, p.chunk_offset, p.chunk_size, p.chunk_digest, p.chunk_type == CHUNK_TYPE_ZEROS, p
                    )
                )
            if parts[0].offset != e.offset:
                raise BadInputError(f"{e.where(name)}: first chunk offset differs from the file offset")
            if expect_off != e.size:
                raise BadInputError(f"{e.where(name)}: chunks add up to {expect_off} bytes, the file has {e.size}")
        files.append(TocFile(e, tuple(chunks)))
    del seen
    # Frames of different files (or chunks) must not overlap: a blob where
    # they do is crafted, and would let one range stand for two contents.
    ranges = sorted(((c.offset, c.end, c.entry) for f in files for c in f.chunks), key=lambda r: (r[0], r[1]))
    for (a_off, a_end, a_e), (b_off, b_end, b_e) in zip(ranges, ranges[1:]):
        if b_off < a_end:
            raise BadInputError(
                f"{b_e.where(name)}: payload range {b_off}..{b_end} overlaps entry {a_e.index} "
                f"({a_e.name!r}) range {a_off}..{a_end}"
            )
    return files
