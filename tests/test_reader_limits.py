"""The consumer's limits, no more and no fewer, in the reader, verify and the writer.

Each test names the containers/storage code it mirrors (pkg/chunked at
commit 83cf574, August 2025; file and constant or function).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard
from test_reader_builder import build_chunked, make_tar, sample_files

from converter.chunked import writer as writer_mod
from converter.chunked.format import (
    MANIFEST_POSITION_KEY,
    MAX_TOC_SIZE,
    TARSPLIT_POSITION_KEY,
    Footer,
    parse_annotations,
    skippable_frame,
)
from converter.chunked.reader import (
    _HeaderError,
    decompress_to_file,
    load_layer,
    parse_tar_header,
)
from converter.chunked.writer import convert_layer
from converter.errors import BadInputError, IncompatibleLayerError
from support.corpus import LAYER_ZSTD, LayerBlob, write_oci_image

REPO = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "a" * 64


def _ann(toc: str, tarsplit: str | None = None) -> dict[str, str]:
    a = {"io.github.containers.zstd-chunked.manifest-checksum": DIGEST, MANIFEST_POSITION_KEY: toc}
    if tarsplit is not None:
        a[TARSPLIT_POSITION_KEY] = tarsplit
    return a


def test_toc_limit_is_150_mib_compressed_and_uncompressed() -> None:
    """Mirrors readZstdChunkedManifest in pkg/chunked/compression_linux.go: maxTocSize = (1<<20)*150,
    `manifestChunk.Length > maxTocSize` and `manifestLengthUncompressed > maxTocSize` fall back
    to a full pull; exactly 150 MiB is accepted."""
    assert MAX_TOC_SIZE == (1 << 20) * 150
    ok = parse_annotations(_ann(f"100:{MAX_TOC_SIZE}:{MAX_TOC_SIZE}:1"), require_tarsplit=False)
    assert ok.toc.length == ok.toc.uncompressed_length == MAX_TOC_SIZE
    for pos in (f"100:{MAX_TOC_SIZE + 1}:1000:1", f"100:1000:{MAX_TOC_SIZE + 1}:1"):
        with pytest.raises(BadInputError, match="exceeds the consumer's limit of 157286400 bytes"):
            parse_annotations(_ann(pos), require_tarsplit=False)


def test_tarsplit_has_no_size_limit() -> None:
    """Mirrors readZstdChunkedManifest in pkg/chunked/compression_linux.go: the tar-split chunk is
    read whatever its length (readBlob(tarSplitChunk.Length)) and decoded into a temporary file
    (openTmpFile + decodeAndValidateBlobToStream) with no size check; the uncompressed length
    in the annotation is parsed and never compared with a limit."""
    big, huge = 400 << 20, 64 << 30
    a = parse_annotations(_ann("100:1000:5000:1", f"2000:{big}:{huge}"), blob_size=2000 + big)
    assert a.tarsplit is not None and a.tarsplit.length == big and a.tarsplit.uncompressed_length == huge
    # What remains is the blob: a tar-split must lie inside it (getBlobAt would fail otherwise).
    with pytest.raises(BadInputError, match="ends past the blob"):
        parse_annotations(_ann("100:1000:5000:1", f"2000:{big}:{huge}"), blob_size=1999 + big)


def test_tarsplit_is_never_decoded_beyond_its_declared_length() -> None:
    """The consumer decodes the tar-split to a temporary file (decodeAndValidateBlobToStream in
    pkg/chunked/compression_linux.go); we do too, and write at most the declared uncompressed
    length, whatever the frame expands to."""
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    sink = io.BytesIO()
    with pytest.raises(BadInputError, match="decompresses to more than 1048576 bytes"):
        decompress_to_file(bomb, sink, 1 << 20, "tar-split")
    assert len(sink.getvalue()) <= 1 << 20
    b = build_chunked(make_tar(sample_files()))
    off, ln, uln = b.annotations[TARSPLIT_POSITION_KEY].split(":")
    ann = dict(b.annotations)
    ann[TARSPLIT_POSITION_KEY] = f"{off}:{ln}:{int(uln) - 1}"
    with pytest.raises(BadInputError, match=f"tar-split at offset {off}: decompresses to more than {int(uln) - 1}"):
        load_layer(io.BytesIO(b.blob), ann)


def _pax_tar(comment_len: int, name: str = "f") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = 3, 1_700_000_000, 0o644
        ti.pax_headers = {"comment": "c" * comment_len}
        tf.addfile(ti, io.BytesIO(b"abc"))
    return buf.getvalue()


def test_pax_header_limit_is_go_archive_tar_max_special_file_size() -> None:
    """Mirrors the consumer's tar reader (vendor/github.com/vbatts/tar-split/archive/tar,
    format.go maxSpecialFileSize = 1 << 20, enforced by readSpecialFile in reader.go, which
    asm.IterateHeaders in ensureTOCMatchesTarSplit uses): a PAX header of more than 1 MiB is
    an error; one just under it is a valid header whose records are not xattrs."""
    h = parse_tar_header(_pax_tar((1 << 20) - 100))
    assert h is not None and h.name == b"f" and h.size == 3
    with pytest.raises(_HeaderError, match="PAX header"):
        parse_tar_header(_pax_tar(1 << 20))


def test_writer_falls_back_only_past_the_toc_limit(tmp_path, monkeypatch, caplog) -> None:
    """The writer refuses only what readZstdChunkedManifest (pkg/chunked/compression_linux.go,
    maxTocSize) refuses: a TOC larger than the limit is written as plain zstd with a warning,
    and under --strict is an IncompatibleLayerError (exit 3); a TOC of exactly the limit is
    written as zstd:chunked. The limit is lowered here so the test stays small."""
    tar = make_tar(sample_files())

    def run(**kw):
        with open(tmp_path / "out.zst", "wb") as out:
            return convert_layer(lambda: io.BytesIO(tar), out, **kw)

    full = run()
    assert full.chunked
    toc_len = int(full.annotations[MANIFEST_POSITION_KEY].split(":")[2])
    monkeypatch.setattr(writer_mod, "MAX_TOC_SIZE", toc_len)
    assert run().chunked
    monkeypatch.setattr(writer_mod, "MAX_TOC_SIZE", toc_len - 1)
    res = run()
    assert not res.chunked and "150 MiB limit" in res.reason and res.annotations == {}
    assert any("plain zstd" in r.message for r in caplog.records)
    with pytest.raises(IncompatibleLayerError) as ei:
        run(strict=True, name="layer x")
    assert ei.value.exit_code == 3 and "150 MiB limit" in str(ei.value)


# ------------------------------------------------------------------ memory


def crafted_toc_blob(n: int) -> tuple[bytes, dict[str, str]]:
    """A blob of a few MB whose TOC declares `n` entries (empty files) and whose tar-split
    holds one header: small on the wire, as large as a TOC may be once decompressed."""
    ts = json.dumps({"type": 2, "payload": base64.b64encode(bytes(1024)).decode(), "position": 0}).encode() + b"\n"
    ts_z = zstandard.ZstdCompressor().compress(ts)
    ents = ",".join(
        f'{{"type":"reg","name":"dir/file{i:07d}","mode":420,"modtime":"2024-01-01T00:00:00Z"}}' for i in range(n)
    )
    toc = f'{{"version":1,"entries":[{ents}],"tarSplitDigest":"sha256:{hashlib.sha256(ts_z).hexdigest()}"}}'.encode()
    toc_z = zstandard.ZstdCompressor(level=9).compress(toc)
    blob = bytearray(zstandard.ZstdCompressor().compress(b""))
    toc_off = len(blob) + 8
    blob += skippable_frame(toc_z)
    ts_off = len(blob) + 8
    blob += skippable_frame(ts_z)
    footer = Footer(toc_off, len(toc_z), len(toc), ts_off, len(ts_z), len(ts))
    blob += skippable_frame(footer.pack())
    return bytes(blob), footer.annotations("sha256:" + hashlib.sha256(toc_z).hexdigest())


# Peak RSS of the interpreter's own memory (VmHWM). getrusage's ru_maxrss is not used: on Linux
# it keeps the high-water mark of the process image replaced by exec, i.e. of pytest itself.
_MEASURE = (
    "import sys\n"
    "from converter.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "print('MAXRSS', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def peak_rss_mb(*args: str) -> tuple[int, float, str]:
    """(exit code, peak RSS in MB, output) of `zconv ARGS` in a fresh interpreter."""
    p = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, timeout=600, cwd=REPO)
    line = [x for x in p.stderr.splitlines() if x.startswith("MAXRSS ")]
    assert line, p.stderr[-2000:]
    return p.returncode, int(line[-1].split()[1]) / 1024, p.stdout + p.stderr


@pytest.mark.slow
def test_inspect_and_verify_of_a_million_entry_toc_stay_under_300_mb(tmp_path) -> None:
    """A small blob declaring a TOC of a million entries (84 MB of JSON, within maxTocSize of
    pkg/chunked/compression_linux.go, so the consumer reads it) costs inspect and verify
    memory in proportion to the entries, not a dict per entry: under 300 MB peak RSS."""
    blob, ann = crafted_toc_blob(1_000_000)
    assert len(blob) < 8 << 20
    (tmp_path / "l.zst").write_bytes(blob)
    write_oci_image(tmp_path / "img", "v1", [LayerBlob(tmp_path / "l.zst", LAYER_ZSTD, "sha256:" + "0" * 64, ann)])
    ref = f"oci:{tmp_path / 'img'}:v1"
    rc, rss, out = peak_rss_mb("inspect", ref, "--json")
    assert rc == 0, out[-2000:]
    assert '"toc_entries": 1000000' in out
    print(f"inspect of a 1M-entry TOC: peak RSS {rss:.0f} MB")
    assert rss < 300, f"inspect peaked at {rss:.0f} MB"
    rc, rss, out = peak_rss_mb("verify", ref, "--json")
    assert rc == 6, out[-2000:]  # the tar-split does not describe the entries: not consumable
    assert "entry is missing from the tar-split" in out and '"entries": 1000000' in out
    print(f"verify of a 1M-entry TOC: peak RSS {rss:.0f} MB")
    assert rss < 300, f"verify peaked at {rss:.0f} MB"
