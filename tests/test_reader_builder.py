"""A tiny, test-only zstd:chunked builder, and tests that pin it to the real `zstd`.

The reader, verify and the fuzz tests need blobs they can take apart and
corrupt field by field (crafted TOCs, tar-splits, positions). This builder
writes the format the plain way (fixed-size chunks instead of the rollsum,
no speed tricks); the production writer is converter/chunked/writer.py and
is tested elsewhere. Blobs from both are read by the same reader.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import zstandard
from fastcrc import crc64

from converter.chunked.format import Footer, skippable_frame
from converter.chunked.reader import expected_toc_fields, format_time, normalize_time, parse_tar_header


@dataclass
class Built:
    blob: bytes
    annotations: dict[str, str]
    diff_id: str
    tar: bytes
    toc: dict[str, Any]
    tarsplit: bytes  # uncompressed


def _rfc3339(t: tuple[int, int] | None) -> str | None:
    t = normalize_time(t)
    return None if t is None else format_time(t)


def _zstd(data: bytes, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def build_chunked(
    tar_bytes: bytes,
    chunk_size: int = 0,
    zero_runs: bool = True,
    mutate_toc: Callable[[dict[str, Any]], None] | None = None,
    mutate_tarsplit: Callable[[list[dict[str, Any]]], None] | None = None,
    toc_bytes: bytes | None = None,
) -> Built:
    """Convert an uncompressed tar to a zstd:chunked blob.

    chunk_size > 0 cuts payloads into chunks of that size (plus whole-chunk
    zero runs marked `zeros` when zero_runs). The mutate_* hooks edit the TOC
    dict / tar-split lines before they are serialized, so tests can craft
    inconsistent layers whose checksums are still right.
    """
    out = io.BytesIO()
    entries: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    header_buf = bytearray()

    def flush_headers() -> None:
        if header_buf:
            out.write(_zstd(bytes(header_buf)))
            header_buf.clear()

    def add_line(d: dict[str, Any]) -> None:
        d["position"] = len(lines)
        lines.append(d)

    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
        members = tf.getmembers()
    prev_end = 0
    for m in members:
        seg = tar_bytes[prev_end : m.offset_data]
        # The segment starts with the previous file's padding.
        parsed = parse_tar_header(seg[m.offset - prev_end :])
        assert parsed is not None
        hdr = SimpleNamespace(**expected_toc_fields(parsed))  # the header as the TOC states it
        header_buf += seg
        add_line({"type": 2, "payload": base64.b64encode(seg).decode()})
        size = m.size if m.isreg() else 0
        payload = tar_bytes[m.offset_data : m.offset_data + size]
        e: dict[str, Any] = {"type": hdr.type, "name": hdr.name}
        if hdr.linkname:
            e["linkName"] = hdr.linkname
        for k, v in (("mode", hdr.mode), ("size", hdr.size), ("uid", hdr.uid), ("gid", hdr.gid)):
            if v:
                e[k] = v
        for k, t in (("modtime", hdr.modtime), ("accesstime", hdr.accesstime), ("changetime", hdr.changetime)):
            s = _rfc3339(t)
            if s:
                e[k] = s
        if hdr.devmajor:
            e["devMajor"] = hdr.devmajor
        if hdr.devminor:
            e["devMinor"] = hdr.devminor
        if hdr.xattrs:
            e["xattrs"] = dict(hdr.xattrs)
        extra: list[dict[str, Any]] = []
        if payload:
            flush_headers()
            e["digest"] = "sha256:" + hashlib.sha256(payload).hexdigest()
            pieces = _split(payload, chunk_size, zero_runs)
            start = out.tell()
            e["offset"] = start
            for i, (coff, piece, zeros) in enumerate(pieces):
                frame_start = out.tell()
                out.write(_zstd(piece))
                if len(pieces) > 1:
                    c = e if i == 0 else {"type": "chunk", "name": hdr.name, "offset": frame_start}
                    if i > 0 and coff:
                        c["chunkOffset"] = coff
                    c["chunkSize"] = len(piece)
                    c["chunkDigest"] = "sha256:" + hashlib.sha256(piece).hexdigest()
                    if zeros:
                        c["chunkType"] = "zeros"
                    if i > 0:
                        extra.append(c)
            e["endOffset"] = out.tell()
        entries.append(e)
        entries.extend(extra)
        line: dict[str, Any] = {"type": 1, "name": hdr.name}
        if size:
            line["size"] = size
            line["payload"] = base64.b64encode(crc64.go_iso(payload).to_bytes(8, "big")).decode()
        else:
            line["payload"] = None
        add_line(line)
        prev_end = m.offset_data + size
    trailer = tar_bytes[prev_end:]
    header_buf += trailer
    for i in range(0, len(trailer), 1 << 20):
        add_line({"type": 2, "payload": base64.b64encode(trailer[i : i + (1 << 20)]).decode()})
    flush_headers()

    if mutate_tarsplit:
        mutate_tarsplit(lines)
    ts_raw = b"".join(json.dumps(d, separators=(",", ":")).encode() + b"\n" for d in lines)
    ts_c = _zstd(ts_raw)
    toc = {"version": 1, "entries": entries, "tarSplitDigest": "sha256:" + hashlib.sha256(ts_c).hexdigest()}
    if mutate_toc:
        mutate_toc(toc)
    toc_raw = toc_bytes if toc_bytes is not None else json.dumps(toc, separators=(",", ":")).encode()
    toc_c = _zstd(toc_raw)
    toc_off = out.tell() + 8
    out.write(skippable_frame(toc_c))
    ts_off = out.tell() + 8
    out.write(skippable_frame(ts_c))
    footer = Footer(toc_off, len(toc_c), len(toc_raw), ts_off, len(ts_c), len(ts_raw))
    out.write(skippable_frame(footer.pack()))
    ann = footer.annotations("sha256:" + hashlib.sha256(toc_c).hexdigest())
    return Built(out.getvalue(), ann, "sha256:" + hashlib.sha256(tar_bytes).hexdigest(), tar_bytes, toc, ts_raw)


def _split(payload: bytes, chunk_size: int, zero_runs: bool) -> list[tuple[int, bytes, bool]]:
    if chunk_size <= 0 or len(payload) <= chunk_size:
        return [(0, payload, False)]
    out = []
    for off in range(0, len(payload), chunk_size):
        piece = payload[off : off + chunk_size]
        out.append((off, piece, zero_runs and piece == bytes(len(piece))))
    return out


def make_tar(files: list[tuple[str, Any]], fmt: int = tarfile.PAX_FORMAT, trailing: bytes = b"") -> bytes:
    """files: (name, bytes) for regular files, (name, None) for dirs, (name, ("sym"|"link", target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, content in files:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            ti.uid = ti.gid = 0
            if content is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            elif isinstance(content, tuple):
                ti.type = tarfile.SYMTYPE if content[0] == "sym" else tarfile.LNKTYPE
                ti.linkname = content[1]
                tf.addfile(ti)
            else:
                ti.mode = 0o644
                ti.size = len(content)
                tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue() + trailing


def sample_files(seed: int = 1) -> list[tuple[str, Any]]:
    rnd = __import__("random").Random(seed)
    return [
        ("etc/", None),
        ("etc/hostname", b"zconv\n"),
        ("etc/empty", b""),
        ("usr/bin/tool", bytes(rnd.getrandbits(8) for _ in range(20000))),
        ("usr/share/zeros", bytes(9000) + b"tail" + bytes(5000)),
        ("usr/share/" + "long" * 40 + "/name.txt", b"long name\n" * 100),
        ("usr/bin/link", ("sym", "tool")),
        ("usr/bin/hard", ("link", "usr/bin/tool")),
    ]


# ----------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def zstd_cli() -> str:
    path = shutil.which("zstd")
    if not path:
        pytest.fail("the zstd command is required (installed by .ci/sysdeps)")
    return path


def test_builder_blob_decompresses_to_the_input_tar_with_zstd_cli(zstd_cli: str) -> None:
    tar_bytes = make_tar(sample_files(), trailing=bytes(2048))
    b = build_chunked(tar_bytes, chunk_size=4096)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "blob.zst")
        with open(p, "wb") as f:
            f.write(b.blob)
        out = subprocess.run([zstd_cli, "-d", "-c", p], check=True, capture_output=True).stdout
    assert out == tar_bytes
    assert "sha256:" + hashlib.sha256(out).hexdigest() == b.diff_id


def test_builder_marks_multi_chunk_files_and_zero_chunks() -> None:
    b = build_chunked(make_tar(sample_files()), chunk_size=4096)
    chunks = [e for e in b.toc["entries"] if e["type"] == "chunk"]
    assert any(e.get("chunkType") == "zeros" for e in chunks)
    tool = next(e for e in b.toc["entries"] if e["name"] == "usr/bin/tool")
    assert tool["chunkSize"] == 4096 and tool["size"] == 20000
