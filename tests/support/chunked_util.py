"""Independent checks of a zstd:chunked blob against the tar it came from.

Python's tarfile is the independent reader here: it shares no code with the
writer's tar parser, so agreement means both read the tar the same way.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile

import zstandard

from converter.chunked.format import MANIFEST_CHECKSUM_KEY, MANIFEST_POSITION_KEY, TARSPLIT_POSITION_KEY

TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}


def parse_blob(blob: bytes, annotations: dict) -> tuple[dict, list[dict]]:
    off, ln, uln, mtype = map(int, annotations[MANIFEST_POSITION_KEY].split(":"))
    assert mtype == 1
    ztoc = blob[off : off + ln]
    assert annotations[MANIFEST_CHECKSUM_KEY] == "sha256:" + hashlib.sha256(ztoc).hexdigest()
    toc = json.loads(zstandard.ZstdDecompressor().decompress(ztoc, max_output_size=uln))
    off, ln, uln = map(int, annotations[TARSPLIT_POSITION_KEY].split(":"))
    zts = blob[off : off + ln]
    assert toc["tarSplitDigest"] == "sha256:" + hashlib.sha256(zts).hexdigest()
    ts = zstandard.ZstdDecompressor().decompress(zts, max_output_size=uln)
    assert len(ts) == uln
    return toc, [json.loads(line) for line in ts.splitlines()]


def frame_range(blob: bytes, start: int, end: int) -> bytes:
    """Decompress blob[start:end] on its own, as a consumer fetching that range would."""
    data = blob[start:end]
    out = bytearray()
    while data:
        obj = zstandard.ZstdDecompressor().decompressobj()
        out += obj.decompress(data)
        assert obj.eof, "range ends inside a frame"
        data = obj.unused_data
    return bytes(out)


def _raw(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def check_against_tar(tar: bytes, blob: bytes, annotations: dict) -> dict:
    """Assert TOC and tar-split describe `tar` exactly; returns the TOC."""
    toc, lines = parse_blob(blob, annotations)
    entries = toc["entries"] or []
    mains = [e for e in entries if e["type"] != "chunk"]
    members = tarfile.open(fileobj=io.BytesIO(tar), mode="r:").getmembers()
    assert len(mains) == len(members)
    contents: dict[str, bytes] = {}
    tf = tarfile.open(fileobj=io.BytesIO(tar), mode="r:")
    i = 0
    while i < len(entries):
        e = entries[i]
        m = members[len(contents)]
        chunks = [e]
        i += 1
        while i < len(entries) and entries[i]["type"] == "chunk":
            assert entries[i]["name"] == e["name"]
            chunks.append(entries[i])
            i += 1
        assert e["name"].rstrip("/") == m.name.rstrip("/") or (e["name"] in ("./", ".") and m.name == ".")
        assert e["type"] == TYPES[m.type], (e, m.type)
        assert e.get("size", 0) == m.size
        assert e.get("mode", 0) == m.mode
        assert e.get("uid", 0) == m.uid and e.get("gid", 0) == m.gid
        assert e.get("linkName", "") == m.linkname
        assert int(float(m.pax_headers.get("mtime", m.mtime))) == int(m.mtime)
        if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            assert e.get("devMajor", 0) == m.devmajor and e.get("devMinor", 0) == m.devminor
        xattrs = {
            k[len("SCHILY.xattr.") :]: base64.b64encode(_raw(v)).decode()
            for k, v in m.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        }
        assert e.get("xattrs", {}) == xattrs
        data = tf.extractfile(m).read() if m.isreg() else b""
        contents[e["name"]] = data
        if m.isreg() and m.size:
            assert e["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
            assert frame_range(blob, e["offset"], e["endOffset"]) == data
            if len(chunks) > 1:
                pos = 0
                for c in chunks:
                    assert c.get("chunkOffset", 0) == pos
                    piece = data[pos : pos + c["chunkSize"]]
                    assert c["chunkDigest"] == "sha256:" + hashlib.sha256(piece).hexdigest()
                    if c.get("chunkType") == "zeros":
                        assert piece == bytes(len(piece)) and len(piece) >= 1024
                    pos += c["chunkSize"]
                assert pos == m.size
                # each chunk is a frame of its own
                for c, nxt in zip(chunks, chunks[1:] + [None]):
                    end = nxt["offset"] if nxt else e["endOffset"]
                    got = frame_range(blob, c["offset"], end)
                    assert got == data[c.get("chunkOffset", 0) : c.get("chunkOffset", 0) + c["chunkSize"]]
        else:
            assert "digest" not in e
    # Rebuild the tar from the tar-split and the payloads, as the consumer does.
    out = bytearray()
    for pos, line in enumerate(lines):
        assert line["position"] == pos
        if line["type"] == 2:
            out += base64.b64decode(line["payload"])
        else:
            assert line["type"] == 1
            size = line.get("size", 0)
            if size:
                data = contents[line["name"]]
                out += data
                if line["payload"] is not None:
                    crc = base64.b64decode(line["payload"])
                    assert len(crc) == 8
            else:
                assert line["payload"] is None
    assert hashlib.sha256(out).digest() == hashlib.sha256(tar).digest()
    return toc
