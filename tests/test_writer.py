"""The layer writer: byte-exact round trips, TOC/tar-split checks, fallbacks, bad input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from converter.chunked import writer as writer_mod
from converter.chunked.writer import convert_layer
from converter.errors import BadInputError, IncompatibleLayerError
from support import synth
from support.chunked_util import check_against_tar, parse_blob
from support.tarcases import all_cases, unrepresentable_cases

CASES = all_cases()
BAD = unrepresentable_cases()


def run(blob: bytes, tmp_path, **kw):
    out_path = tmp_path / "out.zst"
    with open(out_path, "wb") as out:
        res = convert_layer(lambda: io.BytesIO(blob), out, **kw)
    return res, out_path.read_bytes(), out_path


def zstd_cli_decompress(path) -> bytes:
    return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout


@pytest.mark.parametrize("name", sorted(CASES))
def test_edge_case_tar_round_trips_through_zstd_cli(name, tmp_path):
    tar = CASES[name]
    res, blob, path = run(gzip.compress(tar, mtime=0), tmp_path)
    assert res.chunked, res.reason
    assert zstd_cli_decompress(path) == tar
    assert res.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert res.digest == "sha256:" + hashlib.sha256(blob).hexdigest() and res.size == len(blob)
    check_against_tar(tar, blob, res.annotations)


def test_pax_xattrs_and_times_reach_the_toc(tmp_path):
    tar = CASES["python-pax-xattrs"]
    res, blob, _ = run(tar, tmp_path)
    toc, _ = parse_blob(blob, res.annotations)
    ping = toc["entries"][0]
    assert ping["name"] == "bin/ping"
    assert ping["xattrs"]["security.capability"] == "AQAAAgAgAAAAAAAAAAAAAAAAAAA="
    assert ping["accesstime"] == "2023-11-14T22:13:21.5Z"
    assert ping["changetime"] == "2023-11-14T22:13:22.123456789Z"
    assert ping["modtime"] == "2023-11-14T22:13:20.25Z"
    mains = [e for e in toc["entries"] if e["type"] != "chunk"]
    assert [len(e["name"]) for e in mains] == [8, 304]


def test_gnu_long_names_and_directories_keep_their_raw_form(tmp_path):
    tar = CASES["gnutar-gnu"]
    res, blob, _ = run(tar, tmp_path)
    names = [e["name"] for e in parse_blob(blob, res.annotations)[0]["entries"] if e["type"] != "chunk"]
    assert "./" in names and "./etc/" in names  # Go's reader keeps the trailing slash
    assert "./" + "d" * 90 + "/" + "e" * 90 + "/" + "f" * 120 in names
    links = {e["name"]: e.get("linkName") for e in parse_blob(blob, res.annotations)[0]["entries"]}
    assert links["./bin/longlink"] == "x" * 150


@pytest.mark.parametrize("compress", ["none", "gzip-multimember", "zstd-cli", "zstd-multiframe"])
def test_input_compression_is_detected_by_magic(compress, tmp_path):
    tar = CASES["python-pax"]
    if compress == "none":
        blob = tar
    elif compress == "gzip-multimember":
        blob = gzip.compress(tar[:10_000]) + gzip.compress(tar[10_000:])
    elif compress == "zstd-cli":
        blob = subprocess.run(["zstd", "-q", "-c", "-3"], input=tar, check=True, capture_output=True).stdout
    else:
        c = zstandard.ZstdCompressor()
        blob = c.compress(tar[:5000]) + c.compress(tar[5000:])
    res, out, _ = run(blob, tmp_path)
    assert res.input_compression == ("none" if compress == "none" else compress.split("-")[0])
    assert res.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    check_against_tar(tar, out, res.annotations)


def test_chunked_output_can_be_reencoded(tmp_path):
    tar = CASES["gnutar-posix"]
    res1, blob1, _ = run(tar, tmp_path)
    res2, blob2, _ = run(blob1, tmp_path)  # skippable frames are ignored on input
    assert res2.diff_id == res1.diff_id
    assert blob2 == blob1


def test_output_does_not_depend_on_thread_count(tmp_path):
    tar = CASES["gnutar-gnu"] + b""
    digests = {run(tar, tmp_path, threads=t)[0].digest for t in (1, 2, 3)}
    assert len(digests) == 1


def test_level_changes_output_but_not_content(tmp_path):
    tar = CASES["gnutar-gnu"]
    r1, b1, _ = run(tar, tmp_path, level=1)
    r9, b9, _ = run(tar, tmp_path, level=9)
    assert r1.digest != r9.digest and r1.diff_id == r9.diff_id
    check_against_tar(tar, b9, r9.annotations)


def test_large_chunks_are_streamed_as_frames(tmp_path, monkeypatch):
    # Shrink the streaming threshold so the streaming path runs on test-sized data.
    monkeypatch.setattr(writer_mod, "STREAM_FRAME", 50_000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (
            ("const", b"A" * 400_000),
            ("zeros", b"x" + bytes(300_000) + b"y"),
            ("rand", __import__("random").Random(3).randbytes(500_000)),
        ):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    tar = buf.getvalue()
    res, blob, path = run(tar, tmp_path)
    assert zstd_cli_decompress(path) == tar
    check_against_tar(tar, blob, res.annotations)


@pytest.mark.parametrize("name", sorted(BAD))
def test_unrepresentable_layers_fall_back_to_plain_zstd(name, tmp_path, caplog):
    tar, words = BAD[name]
    res, blob, path = run(tar, tmp_path)
    assert not res.chunked and words in res.reason
    assert res.annotations == {}
    assert zstd_cli_decompress(path) == tar
    assert res.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert any("plain zstd" in r.message for r in caplog.records)


def test_strict_refuses_unrepresentable_layer(tmp_path):
    tar, _ = BAD["duplicate-path"]
    with pytest.raises(IncompatibleLayerError, match="appears twice"):
        run(tar, tmp_path, strict=True, name="layer sha256:abc")


def _tar_with(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("ok")
        tf.addfile(ti, io.BytesIO(b""))
        ti = tarfile.TarInfo(name)
        ti.type = type_
        ti.linkname = linkname
        tf.addfile(ti, io.BytesIO(b""))
    return buf.getvalue()


def test_bad_inputs_raise_one_clear_error(tmp_path):
    tar = CASES["python-gnu"]
    gz = gzip.compress(tar)
    zs = zstandard.ZstdCompressor().compress(tar)
    corrupt = bytearray(tar)
    corrupt[600] ^= 0xFF  # inside the second header block
    hostile = _tar_with("../../etc/passwd")
    cases = {
        "truncated gzip": (gz[: len(gz) // 2], "truncated"),
        "truncated zstd": (zs[: len(zs) // 2], "truncated"),
        "corrupt gzip": (gz[:200] + bytes(100) + gz[300:], "corrupt"),
        "truncated tar": (tar[: len(tar) // 2 + 100], "unexpected end of tar"),
        "header checksum": (bytes(corrupt), "checksum"),
        "dotdot name": (hostile, "climbs out"),
        "dotdot hardlink": (_tar_with("x", tarfile.LNKTYPE, "a/../../b"), "outside the layer root"),
        "not a tar": (b"hello world, this is not a tar" * 40, "checksum"),
    }
    for what, (blob, words) in cases.items():
        with pytest.raises(BadInputError) as ei:
            run(blob, tmp_path, name="img:1 layer 2")
        msg = str(ei.value)
        assert words in msg and "img:1 layer 2" in msg and "\n" not in msg, (what, msg)


def test_hostile_entry_is_refused_even_after_a_fallback_reason(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"c": "g"}) as tf:
        tf.addfile(tarfile.TarInfo("../escape"), io.BytesIO(b""))
    with pytest.raises(BadInputError, match="climbs out"):
        run(buf.getvalue(), tmp_path)


GOLDEN = json.loads((Path(__file__).parent / "data" / "writer_golden.json").read_text())


def _golden_inputs() -> dict[str, bytes]:
    cases = {k: v for k, v in CASES.items() if k in GOLDEN["cases"]}
    cases["node-modules-3000"] = synth.node_modules_bytes(3000)
    cases["mixed"] = synth.mixed_tar()
    return cases


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_output_bytes_are_pinned(threads, tmp_path):
    """The writer's bytes are those of the writer before the speed work (same digests, any --threads)."""
    if GOLDEN["zstd"] != ".".join(map(str, zstandard.ZSTD_VERSION)):
        pytest.skip(f"digests pinned with libzstd {GOLDEN['zstd']}, this is {zstandard.ZSTD_VERSION}")
    inputs = _golden_inputs()
    assert set(inputs) == set(GOLDEN["cases"])
    for name, tar in sorted(inputs.items()):
        want = GOLDEN["cases"][name]
        if "sha256:" + hashlib.sha256(tar).hexdigest() != want["input"]:
            pytest.skip(f"{name}: this Python's tarfile writes other bytes than the pinned input")
        res, blob, _ = run(tar, tmp_path, threads=threads)
        assert res.digest == want["output"], name
        assert res.diff_id == want["input"]


def test_toc_spilled_to_a_temporary_file_is_the_same(tmp_path, monkeypatch):
    """A TOC kept on disk during the conversion (many small files) gives the same bytes."""
    monkeypatch.setattr(writer_mod._TocWriter, "SPILL", 5000)
    if GOLDEN["zstd"] != ".".join(map(str, zstandard.ZSTD_VERSION)):
        pytest.skip(f"digests pinned with libzstd {GOLDEN['zstd']}, this is {zstandard.ZSTD_VERSION}")
    tar = synth.node_modules_bytes(3000)
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == GOLDEN["cases"]["node-modules-3000"]["input"]
    res, blob, _ = run(tar, tmp_path, threads=2)
    assert res.digest == GOLDEN["cases"]["node-modules-3000"]["output"]
    check_against_tar(tar, blob, res.annotations)


def test_native_header_path_reads_entries_as_the_general_parser(monkeypatch):
    """TarStream's native fast path (plain headers) sees every entry, raw byte and offset as parse_header_block does."""
    import dataclasses

    from converter.chunked import tarstream

    if tarstream._fast_header is None:
        pytest.fail("the native module was not built (is a C compiler installed?)")

    def entries(data: bytes) -> list:
        t = tarstream.TarStream(tarstream.CountingReader(io.BytesIO(data), "x"))
        out = []
        while (h := t.next()) is not None:
            out.append((dataclasses.astuple(h), t.raw, t.read_payload(t.payload_remaining), t.src.offset))
        return [out, t.trailer, t.src.offset]

    tars = [*CASES.values(), synth.node_modules_bytes(500)]
    fast = [entries(d) for d in tars]
    monkeypatch.setattr(tarstream, "_fast_header", None)
    assert [entries(d) for d in tars] == fast


@pytest.mark.parametrize(
    ("trailing", "refused"),
    [
        (b"", False),
        (bytes(512), False),  # one zero block, then the end: Reader.Next says io.EOF
        (bytes(1024), False),
        (bytes(1024) + b"anything at all", False),  # two zero blocks: whatever follows is never read
        (bytes(4096) + b"garbage\n", False),  # tarcases' gnutar-trailing-bytes, pulled by the consumer
        (bytes(100), True),  # short block: io.ErrUnexpectedEOF
        (bytes(700), True),
        (b"x" + bytes(1023), True),  # not a zero block where a header would be
        (bytes(512) + b"x" + bytes(511), True),  # zero block then a non-zero one: ErrHeader
    ],
)
def test_trailing_segment_as_the_consumer_reads_it(trailing, refused):
    """Mirrors tar-split asm.IterateHeaders -> archive/tar Reader.Next on the last tar-split segment."""
    from converter.chunked.tarsplit import trailing_segment_problem

    assert (trailing_segment_problem(trailing[:1024], len(trailing)) is not None) == refused
