"""TOC entries and their JSON, as the reference writer produces them.

Field names and order follow containers/storage's minimal.FileMetadata; the
JSON is encoded the way Go's encoding/json does (compact, HTML characters
escaped), so TOCs written here and by podman/skopeo compare field by field.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import json
import re

from converter.chunked.format import TYPE_CHUNK, TYPE_NAMES, XATTR_PREFIX  # noqa: F401  (TYPE_CHUNK re-exported)
from converter.chunked.tarstream import (
    TarHeader,
)

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class NotRepresentable(Exception):
    """The layer cannot be expressed as zstd:chunked; the message says why."""


def go_clean(path: str) -> str:
    """Go's filepath.Clean on a slash path (tar-split's duplicate check uses it)."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    s = "/".join(out)
    if rooted:
        return "/" + s
    return s or "."


def climbs_out(path: bytes) -> bool:
    """True when `path`, taken relative to the layer root, leaves it via `..`."""
    depth = 0
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


@functools.lru_cache(maxsize=4096)
def rfc3339(ns: int) -> str:
    """Go's time.Time JSON form (RFC 3339 with trimmed nanoseconds), in UTC."""
    secs, frac = divmod(ns, 1_000_000_000)
    try:
        t = _EPOCH + _dt.timedelta(seconds=secs)
    except OverflowError:
        raise NotRepresentable(f"timestamp {secs} is outside years 1-9999") from None
    s = t.strftime("%Y-%m-%dT%H:%M:%S")
    if len(s) != 19:  # years below 1000 are not zero-padded by every strftime
        s = f"{t.year:04d}" + s[s.index("-") :]
    if frac:
        s += "." + f"{frac:09d}".rstrip("0")
    return s + "Z"


def _text(b: bytes, what: str, name: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        # Go's JSON encoder would replace the bytes with U+FFFD and the
        # consumer would then find TOC and tar-split disagreeing.
        raise NotRepresentable(f"{what} {name!r} is not valid UTF-8") from None


def entry_for(h: TarHeader) -> dict:
    """The TOC entry of a tar header, before digests and offsets are known."""
    typ = TYPE_NAMES.get(h.typeflag)
    name = _text(h.name, "file name", h.name)
    if typ is None:
        kind = {b"g": "PAX global header", b"S": "GNU sparse file", b"7": "contiguous file"}.get(
            h.typeflag, f"entry type {h.typeflag!r}"
        )
        raise NotRepresentable(f"{kind} at {name!r}")
    if h.pax and any(k.startswith(b"GNU.sparse.") for k in h.pax):
        raise NotRepresentable(f"sparse file {name!r}")
    e: dict = {"type": typ, "name": name}
    if h.linkname:
        e["linkName"] = _text(h.linkname, "link target", h.name)
    if h.mode:
        e["mode"] = h.mode
    if h.size:
        e["size"] = h.size
    if h.uid:
        e["uid"] = h.uid
    if h.gid:
        e["gid"] = h.gid
    e["modtime"] = rfc3339(h.mtime)
    if h.atime is not None:
        e["accesstime"] = rfc3339(h.atime)
    if h.ctime is not None:
        e["changetime"] = rfc3339(h.ctime)
    if h.devmajor:
        e["devMajor"] = h.devmajor
    if h.devminor:
        e["devMinor"] = h.devminor
    if h.pax:
        xattrs = {}
        for k, v in h.pax.items():
            if k.startswith(XATTR_PREFIX):
                xattrs[_text(k[len(XATTR_PREFIX) :], "xattr name", h.name)] = base64.b64encode(v).decode()
        if xattrs:
            e["xattrs"] = dict(sorted(xattrs.items()))
    return e


# Fields of a TOC entry in the order Go marshals them.
FIELD_ORDER = (
    "type",
    "name",
    "linkName",
    "mode",
    "size",
    "uid",
    "gid",
    "modtime",
    "accesstime",
    "changetime",
    "devMajor",
    "devMinor",
    "xattrs",
    "digest",
    "offset",
    "endOffset",
    "chunkSize",
    "chunkOffset",
    "chunkDigest",
    "chunkType",
)


def go_json(obj) -> bytes:
    """Compact JSON with Go's escaping of <, >, &, U+2028 and U+2029."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    s = (
        s.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return s.encode("utf-8")


# Bytes that JSON-encode as themselves under go_json: printable ASCII except " \\ < > &.
_PLAIN = re.compile(rb"[ !#-%\'-;=?-\[\]-~]*\Z")
_TYPE_JSON = {k: go_json(v) for k, v in TYPE_NAMES.items()}


def json_str(b: bytes, what: str, name: bytes) -> bytes:
    """A tar string field as a Go JSON string (NotRepresentable unless UTF-8)."""
    if _PLAIN.match(b):
        return b'"' + b + b'"'
    return go_json(_text(b, what, name))


def encode_head(h: TarHeader) -> tuple[bytes, bytes]:
    """The TOC entry of a header as Go JSON up to its last header field (no closing brace), and its name as JSON.

    Byte for byte `go_json(entry_for(h))[:-1]`; entries with PAX records take
    that road, the common ones are formatted directly.
    """
    typ = _TYPE_JSON.get(h.typeflag)
    if typ is None or h.pax:
        e = entry_for(h)
        return go_json(e)[:-1], go_json(e["name"])
    name = json_str(h.name, "file name", h.name)
    parts = [b'{"type":', typ, b',"name":', name]
    if h.linkname:
        parts.append(b',"linkName":' + json_str(h.linkname, "link target", h.name))
    if h.mode:
        parts.append(b',"mode":%d' % h.mode)
    if h.size:
        parts.append(b',"size":%d' % h.size)
    if h.uid:
        parts.append(b',"uid":%d' % h.uid)
    if h.gid:
        parts.append(b',"gid":%d' % h.gid)
    parts.append(b',"modtime":"%s"' % rfc3339(h.mtime).encode())
    if h.atime is not None:
        parts.append(b',"accesstime":"%s"' % rfc3339(h.atime).encode())
    if h.ctime is not None:
        parts.append(b',"changetime":"%s"' % rfc3339(h.ctime).encode())
    if h.devmajor:
        parts.append(b',"devMajor":%d' % h.devmajor)
    if h.devminor:
        parts.append(b',"devMinor":%d' % h.devminor)
    return b"".join(parts), name


TOC_HEAD = b'{"version":1,"entries":['


def toc_tail(tarsplit_digest: str) -> bytes:
    """What closes a TOC whose (one or more) entries were written after TOC_HEAD."""
    return b'],"tarSplitDigest":' + go_json(tarsplit_digest) + b"}"


def toc_json(entries: list[dict], tarsplit_digest: str) -> bytes:
    ordered = [{k: e[k] for k in FIELD_ORDER if k in e} for e in entries]
    return go_json({"version": 1, "entries": ordered or None, "tarSplitDigest": tarsplit_digest})
