"""`zconv verify`: exit 0 only for consumable images; every failure named precisely."""

from __future__ import annotations

import base64
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from test_reader_builder import Built, build_chunked, make_tar, sample_files

from converter.chunked.format import MANIFEST_POSITION_KEY, TARSPLIT_POSITION_KEY
from converter.cli import main
from support.corpus import LAYER_ZSTD, LayerBlob, write_oci_image

SAMPLE = Path(__file__).resolve().parent.parent / "testdata" / "sample"


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _layout(tmp_path: Path, built: Built, diff_id: str | None = None, name: str = "img") -> str:
    blob = tmp_path / f"{name}.zst"
    blob.write_bytes(built.blob)
    write_oci_image(tmp_path / name, "v1", [LayerBlob(blob, LAYER_ZSTD, diff_id or built.diff_id, built.annotations)])
    return f"oci:{tmp_path / name}:v1"


def _problems(out: str) -> list[str]:
    rep = json.loads(out)
    return [p for img in rep["images"] for layer in img["layers"] for p in layer["problems"]] + [
        p for img in rep["images"] for p in img["problems"]
    ]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "sample-zstd"
    assert main(["convert", f"oci:{SAMPLE}", f"oci:{out}", "--quiet"]) == 0
    return out


def test_converted_sample_is_consumable(converted: Path, capsys) -> None:
    rc, out, _ = _run(capsys, "verify", f"oci:{converted}", "--json")
    assert rc == 0
    rep = json.loads(out)
    assert rep["ok"] and rep["full"]
    layers = [layer for img in rep["images"] for layer in img["layers"]]
    assert layers and all(layer["chunked"] for layer in layers)
    for layer in layers:
        assert "whole blob decompresses to a tar with the config's DiffID" in layer["checks"]
        assert "tar rebuilt from tar-split + payloads has the config's DiffID" in layer["checks"]
        assert layer["stats"]["payload_ranges"] > 0
    rc, text, _ = _run(capsys, "verify", f"oci:{converted}")
    assert rc == 0 and "verdict: OK" in text


def test_image_without_chunked_layers_passes_with_a_note(capsys) -> None:
    rc, out, _ = _run(capsys, "verify", f"oci:{SAMPLE}")
    assert rc == 0
    assert "no layer claims zstd:chunked" in out


def _entry(name: str, **fields):
    def mutate(toc: dict) -> None:
        for e in toc["entries"]:
            if e["name"] == name and e["type"] != "chunk":
                e.update(fields)

    return mutate


def test_wrong_payload_digest_names_entry_and_range(tmp_path: Path, capsys) -> None:
    b = build_chunked(make_tar(sample_files()), mutate_toc=_entry("etc/hostname", digest="sha256:" + "ab" * 32))
    rc, out, err = _run(capsys, "verify", _layout(tmp_path, b), "--json")
    assert rc == 6
    e = next(e for e in b.toc["entries"] if e["name"] == "etc/hostname")
    probs = _problems(out)
    assert any(
        f"TOC entry 1 ('etc/hostname') range {e['offset']}..{e['endOffset']}" in p and "does not match digest" in p
        for p in probs
    ), probs
    assert "zconv: error:" in err and "not consumable" in err


def test_zero_chunk_holding_data_is_caught(tmp_path: Path, capsys) -> None:
    def mark(toc: dict) -> None:
        chunk = next(e for e in toc["entries"] if e["type"] == "chunk" and e["name"] == "usr/bin/tool")
        chunk["chunkType"] = "zeros"

    b = build_chunked(make_tar(sample_files()), chunk_size=4096, mutate_toc=mark)
    rc, out, _ = _run(capsys, "verify", _layout(tmp_path, b), "--json")
    assert rc == 6
    assert any("chunk of type zeros holds non-zero bytes" in p for p in _problems(out))


def test_wrong_chunk_digest_is_caught(tmp_path: Path, capsys) -> None:
    def bad(toc: dict) -> None:
        chunk = [e for e in toc["entries"] if e["type"] == "chunk" and e["name"] == "usr/bin/tool"][1]
        chunk["chunkDigest"] = "sha256:" + "cd" * 32

    b = build_chunked(make_tar(sample_files()), chunk_size=4096, mutate_toc=bad)
    rc, out, _ = _run(capsys, "verify", _layout(tmp_path, b), "--json")
    assert rc == 6
    assert any("usr/bin/tool" in p and "does not match chunkDigest" in p for p in _problems(out))


def test_wrong_crc_in_tarsplit_is_caught(tmp_path: Path, capsys) -> None:
    def bad(lines: list) -> None:
        for d in lines:
            if d["type"] == 1 and d["name"] == "etc/hostname":
                d["payload"] = base64.b64encode(bytes(8)).decode()

    b = build_chunked(make_tar(sample_files()), mutate_tarsplit=bad)
    rc, out, _ = _run(capsys, "verify", _layout(tmp_path, b), "--json")
    assert rc == 6
    assert any("'etc/hostname'" in p and "crc64" in p for p in _problems(out))


def test_diff_id_mismatch_is_caught(tmp_path: Path, capsys) -> None:
    b = build_chunked(make_tar(sample_files()))
    rc, out, _ = _run(capsys, "verify", _layout(tmp_path, b, diff_id="sha256:" + "0" * 64), "--json")
    assert rc == 6
    probs = _problems(out)
    assert any("blob decompresses to" in p and "the config's DiffID is sha256:000" in p for p in probs), probs
    assert any("tar rebuilt from tar-split" in p for p in probs)


def test_toc_tarsplit_disagreement_lists_every_field(tmp_path: Path, capsys) -> None:
    b = build_chunked(make_tar(sample_files()), mutate_toc=_entry("usr/bin/link", linkName="elsewhere", gid=5))
    rc, out, _ = _run(capsys, "verify", _layout(tmp_path, b), "--json")
    assert rc == 6
    probs = _problems(out)
    assert any("linkname: TOC 'elsewhere' != tar 'tool'" in p for p in probs), probs
    assert any("gid: TOC 5 != tar 0" in p for p in probs), probs


def test_footer_disagreeing_with_annotations_is_caught(tmp_path: Path, capsys) -> None:
    b = build_chunked(make_tar(sample_files()))
    blob = bytearray(b.blob)
    blob[-64 + 8] ^= 0x01  # TOC length in the footer
    b.blob = bytes(blob)
    rc, out, _ = _run(capsys, "verify", _layout(tmp_path, b), "--json")
    assert rc == 6
    assert any("footer at offset" in p and "TOC length" in p for p in _problems(out))


def test_media_type_must_be_zstd(tmp_path: Path, capsys) -> None:
    b = build_chunked(make_tar(sample_files()))
    blob = tmp_path / "l.zst"
    blob.write_bytes(b.blob)
    write_oci_image(
        tmp_path / "img",
        "v1",
        [LayerBlob(blob, "application/vnd.oci.image.layer.v1.tar+gzip", b.diff_id, b.annotations)],
    )
    rc, out, _ = _run(capsys, "verify", f"oci:{tmp_path / 'img'}:v1", "--json")
    assert rc == 6
    assert any("media type" in p for p in _problems(out))


def test_registry_metadata_by_range_then_full(converted: Path, registry, tmp_path: Path, capsys) -> None:
    dest = f"docker://{registry.ref('zconv-verify', 'v1')}"
    assert main(["push", f"oci:{converted}", dest, "--tls-verify", "false"]) == 0
    capsys.readouterr()
    rc, out, _ = _run(capsys, "verify", dest, "--tls-verify", "false", "--json")
    assert rc == 0, out
    rep = json.loads(out)
    assert not rep["full"]
    assert "answered correctly" in rep["range_requests"]
    for layer in rep["images"][0]["layers"]:
        # annotations' TOC and tar-split frames plus the footer: three small reads
        assert layer["stats"]["reads"] == 3
        assert "whole blob decompresses to a tar with the config's DiffID" not in layer["checks"]
    rc, out, _ = _run(capsys, "verify", dest, "--tls-verify", "false", "--full", "--json")
    assert rc == 0, out
    rep = json.loads(out)
    assert rep["full"]
    assert all(
        "whole blob decompresses to a tar with the config's DiffID" in layer["checks"]
        for layer in rep["images"][0]["layers"]
    )


@pytest.mark.interop
def test_reference_writer_output_passes_verify(interop, tmp_path: Path, capsys) -> None:
    """Blobs written by containers/storage's own compressor pass every check (verify is not too strict)."""
    from support import tarcases

    layers = []
    for name, tar in sorted(tarcases.all_cases().items()):
        tar_path = tmp_path / f"{name}.tar"
        tar_path.write_bytes(tar)
        out = tmp_path / f"{name}.zst"
        res = interop.compress(tar_path, out)
        import hashlib

        layers.append(LayerBlob(out, LAYER_ZSTD, "sha256:" + hashlib.sha256(tar).hexdigest(), res["annotations"]))
    write_oci_image(tmp_path / "ref", "v1", layers)
    rc, out, _ = _run(capsys, "verify", f"oci:{tmp_path / 'ref'}:v1", "--json")
    assert rc == 0, _problems(out)
    rep = json.loads(out)
    assert len(rep["images"][0]["layers"]) == len(layers)
    shutil.rmtree(tmp_path / "ref")


# ------------------------------------------------ a tar-split over 150 MiB


def _tar_with_big_tarsplit(path: Path, entries: int, comment: int) -> None:
    """Small files, each with a long PAX `comment` record: the record is kept in the tar-split
    (it is part of the header) but not in the TOC (it is not an xattr), so the tar-split grows
    past 150 MiB while the TOC stays tiny. Each header stays under Go's 1 MiB PAX limit."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(entries):
            data = f"file {i}\n".encode() * 20
            ti = tarfile.TarInfo(f"data/f{i:04d}")
            ti.size, ti.mtime, ti.mode = len(data), 1_700_000_000, 0o644
            ti.pax_headers = {"comment": chr(ord("a") + i % 26) * comment}
            tf.addfile(ti, io.BytesIO(data))


@pytest.mark.interop
@pytest.mark.slow
def test_consumer_pulls_partially_a_layer_whose_tarsplit_is_over_150_mib(interop, registry, tmp_path: Path) -> None:
    """containers/storage has no tar-split size limit (readZstdChunkedManifest in
    pkg/chunked/compression_linux.go decodes it to a temporary file): our writer must write
    such a layer as zstd:chunked, verify must call it consumable, and the real consumer
    pulls it partially with no fallback."""
    from test_interop import assert_partial_pull, assert_tree_equal, push_and_pull
    from test_reader_limits import peak_rss_mb

    from support.interop import read_oci_image, zconv_convert

    tar = tmp_path / "big-tarsplit.tar"
    _tar_with_big_tarsplit(tar, entries=125, comment=1_000_000)
    write_oci_image(tmp_path / "src", "v1", [tar])
    zconv_convert(f"oci:{tmp_path / 'src'}:v1", f"oci:{tmp_path / 'ours'}:v1")
    manifest, _ = read_oci_image(tmp_path / "ours", "v1")
    (desc,) = manifest["layers"]
    ann = desc.get("annotations", {})
    assert TARSPLIT_POSITION_KEY in ann, f"written as plain zstd: {desc}"
    ts_uncompressed = int(ann[TARSPLIT_POSITION_KEY].split(":")[2])
    toc_uncompressed = int(ann[MANIFEST_POSITION_KEY].split(":")[2])
    assert ts_uncompressed > 150 << 20 and toc_uncompressed < 1 << 20, (ts_uncompressed, toc_uncompressed)

    rc, rss, out = peak_rss_mb("verify", f"oci:{tmp_path / 'ours'}:v1", "--json")
    assert rc == 0, out[-3000:]
    rep = json.loads(out[: out.rindex("MAXRSS")])
    (layer,) = rep["images"][0]["layers"]
    assert layer["ok"] and layer["full"] and layer["stats"]["tarsplit_uncompressed"] == ts_uncompressed
    print(f"verify of a layer with a {ts_uncompressed >> 20} MiB tar-split: peak RSS {rss:.0f} MB")
    assert rss < 300, f"verify held the tar-split in memory? peak RSS {rss:.0f} MB"

    res = push_and_pull(interop, registry, tmp_path / "ours", "v1", "big-tarsplit", tmp_path / "store")
    assert_partial_pull(res, manifest, "big tar-split")
    assert_tree_equal(res, [tar], "big tar-split")
