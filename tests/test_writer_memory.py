"""The writer's memory savings on many-entry layers write the same bytes.

The TOC compressed one-shot from a mapping of its spill file (pages dropped
while zstd reads), the tar-split spooled to disk, and the duplicate-name
check by hashes: each is forced here at small sizes and compared with the
pinned output. Peak memory itself is measured by bench/bench_memory.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tempfile

import pytest
import zstandard
from test_writer import GOLDEN, run

from converter.chunked import tarsplit as tarsplit_mod
from converter.chunked import writer as writer_mod
from converter.chunked.toc import NotRepresentable
from converter.errors import IncompatibleLayerError
from support import synth
from support.chunked_util import check_against_tar
from support.tarcases import all_cases, unrepresentable_cases


def _pinned() -> tuple[bytes, str]:
    if GOLDEN["zstd"] != ".".join(map(str, zstandard.ZSTD_VERSION)):
        pytest.skip(f"digests pinned with libzstd {GOLDEN['zstd']}, this is {zstandard.ZSTD_VERSION}")
    tar = synth.node_modules_bytes(3000)
    want = GOLDEN["cases"]["node-modules-3000"]
    if "sha256:" + hashlib.sha256(tar).hexdigest() != want["input"]:
        pytest.skip("this Python's tarfile writes other bytes than the pinned input")
    return tar, want["output"]


@pytest.mark.parametrize("threads", [1, 2])
def test_everything_on_disk_writes_the_pinned_bytes(threads, tmp_path, monkeypatch):
    """TOC spilled and mapped (its pages dropped every 0.1 ms), tar-split and names on disk: same layer."""
    tar, digest = _pinned()
    monkeypatch.setattr(writer_mod._TocWriter, "SPILL", 5000)
    monkeypatch.setattr(writer_mod, "DROP_EVERY", 0.0001)
    monkeypatch.setattr(tarsplit_mod.TarSplitWriter, "SPOOL", 1000)
    monkeypatch.setattr(tarsplit_mod.TarSplitWriter, "NAMES_FLUSH", 1000)
    res, blob, _ = run(tar, tmp_path, threads=threads)
    assert res.chunked and res.digest == digest
    check_against_tar(tar, blob, res.annotations)


def test_names_sharing_a_hash_are_not_duplicates(tmp_path, monkeypatch):
    """With every name's hash the same, the names are read back: same layers, duplicates still refused."""
    tar, digest = _pinned()
    cases = all_cases()
    plain = {name: run(data, tmp_path)[0] for name, data in cases.items()}
    monkeypatch.setattr(tarsplit_mod, "_name_hash", lambda name: 7)
    monkeypatch.setattr(tarsplit_mod.TarSplitWriter, "NAMES_FLUSH", 1000)
    assert run(tar, tmp_path)[0].digest == digest
    for name, data in cases.items():
        res = run(data, tmp_path)[0]
        assert (res.chunked, res.digest) == (plain[name].chunked, plain[name].digest), name
    dup, _ = unrepresentable_cases()["duplicate-path"]
    with pytest.raises(IncompatibleLayerError, match="appears twice"):
        run(dup, tmp_path, strict=True)


@pytest.mark.parametrize("collide", [False, True])
@pytest.mark.parametrize("flush", [64, 1 << 20])
def test_duplicate_check_sees_names_as_go_cleans_them(collide, flush, monkeypatch):
    """Plain and non-plain names, raw or to be cleaned, in the names file or in memory: one path each."""
    if collide:
        monkeypatch.setattr(tarsplit_mod, "_name_hash", lambda name: len(name) % 3)
    monkeypatch.setattr(tarsplit_mod.TarSplitWriter, "NAMES_FLUSH", flush)
    names = [f"dir/file{i}".encode() for i in range(50)] + ["dir/é".encode(), b"dir/\xff", b"./other//x"]
    for again in (b"dir/file3", b"./dir/file3", b"dir//file40/", "dir/./é".encode(), b"dir/\xff", b"other/x"):
        w = tarsplit_mod.TarSplitWriter(zstandard.ZstdCompressor())
        for n in names[:20] + [again] + names[20:]:
            w.file(n, 1, 0)
        with pytest.raises(NotRepresentable, match="appears twice"):
            w.finish()
    w = tarsplit_mod.TarSplitWriter(zstandard.ZstdCompressor())
    for n in names + [b"dir/file50", "dir/è".encode(), b"dir/\xfe"]:
        w.file(n, 1, 0)
    f, size, digest = w.finish()
    with f:
        data = f.read()
    assert len(data) == size and digest == "sha256:" + hashlib.sha256(data).hexdigest()
    lines = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 20).splitlines()
    assert len(lines) == len(names) + 3 and json.loads(lines[-1])["position"] == len(names) + 2


def _toc_like(size: int) -> bytes:
    rng = random.Random(5)
    out = bytearray(b'{"version":1,"entries":[')
    i = 0
    while len(out) < size:
        out += b'{"type":"reg","name":"node_modules/pkg-%05d/lib/file%d.js","mode":420,"size":%d,' % (
            i // 12,
            i % 12,
            rng.randrange(100, 4000),
        )
        out += b'"digest":"sha256:%s","offset":%d,"endOffset":%d},' % (
            rng.randbytes(32).hex().encode(),
            i * 700,
            i * 700 + rng.randrange(60, 900),
        )
        i += 1
    out += b'{"type":"dir","name":"x"}]}'
    return bytes(out)


@pytest.mark.parametrize("level", [1, 3, 7, 12])
def test_toc_compressed_from_its_file_is_the_one_shot_frame(level, monkeypatch):
    """_compress_file (a mapping whose pages a thread drops) gives cctx.compress()'s bytes."""
    monkeypatch.setattr(writer_mod, "DROP_EVERY", 0.0001)
    data = _toc_like(12 << 20)
    cctx = zstandard.ZstdCompressor(level=level)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.write(b"bytes after the TOC are not compressed")
        f.flush()
        assert writer_mod._compress_file(cctx, f, len(data)) == cctx.compress(data)


def test_toc_over_the_limit_is_refused_before_it_is_compressed(tmp_path, monkeypatch):
    """The 150 MiB check is on the size finish() returns: no compression, plain zstd."""
    monkeypatch.setattr(writer_mod, "MAX_TOC_SIZE", 100_000)
    monkeypatch.setattr(writer_mod._TocWriter, "SPILL", 5000)

    def no(*a, **k):
        raise AssertionError("an over-limit TOC was compressed")

    monkeypatch.setattr(writer_mod._TocWriter, "compress", no)
    tar = synth.node_modules_bytes(1000, sizes=(100, 300))
    res, blob, _ = run(tar, tmp_path)
    assert not res.chunked and "exceeds the consumer's 150 MiB limit" in res.reason
    assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == tar
    assert io.BytesIO(blob).read(4) == b"\x28\xb5\x2f\xfd"


@pytest.mark.interop
@pytest.mark.slow
def test_consumer_pulls_partially_a_layer_of_150k_tiny_files(interop, registry, tmp_path):
    """The on-disk paths at their real sizes (TOC spilled and mapped, tar-split spooled, names file):
    the real consumer pulls the layer partially, with no fallback, to the tar's tree."""
    from test_interop import assert_partial_pull, assert_tree_equal, push_and_pull

    from converter.chunked.format import MANIFEST_POSITION_KEY, TARSPLIT_POSITION_KEY
    from support.corpus import write_oci_image
    from support.interop import read_oci_image, zconv_convert

    tar = synth.node_modules_tar(150_000, sizes=(100, 300))
    write_oci_image(tmp_path / "src", "v1", [tar])
    zconv_convert(f"oci:{tmp_path / 'src'}:v1", f"oci:{tmp_path / 'ours'}:v1")
    manifest, _ = read_oci_image(tmp_path / "ours", "v1")
    (desc,) = manifest["layers"]
    ann = desc.get("annotations", {})
    assert MANIFEST_POSITION_KEY in ann, f"written as plain zstd: {desc}"
    toc_size = int(ann[MANIFEST_POSITION_KEY].split(":")[2])
    tarsplit_z = int(ann[TARSPLIT_POSITION_KEY].split(":")[1])
    assert toc_size > writer_mod._TocWriter.SPILL and tarsplit_z > tarsplit_mod.TarSplitWriter.SPOOL
    res = push_and_pull(interop, registry, tmp_path / "ours", "v1", "tiny-files", tmp_path / "store")
    assert_partial_pull(res, manifest, "150k tiny files")
    assert_tree_equal(res, [tar], "150k tiny files")
