"""Image -> image conversion over OCI layouts: structure, content, reproducibility, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testdata"))
import make_sample as ms  # noqa: E402

from converter.chunked.format import (  # noqa: E402
    CHUNKED_ANNOTATIONS,
    INDEX_ZSTD_ANNOTATION,
    MANIFEST_CHECKSUM_KEY,
)
from converter.convert import ConvertOptions, convert_refs  # noqa: E402
from converter.errors import BadInputError, IncompatibleLayerError, UsageError  # noqa: E402

OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
SAMPLE = ROOT / "testdata" / "sample"


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def index_json(layout: Path) -> dict:
    return json.loads((layout / "index.json").read_text())


def top(layout: Path, tag: str | None = None) -> dict:
    for m in index_json(layout)["manifests"]:
        if tag is None or m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    raise AssertionError(f"no tag {tag}")


def doc(layout: Path, digest: str) -> dict:
    return json.loads(blob(layout, digest))


def zstd_d(data: bytes) -> bytes:
    """Decompress with the real zstd command, as consumers' decoders would."""
    return subprocess.run(["zstd", "-dc"], input=data, stdout=subprocess.PIPE, check=True).stdout


def tree_snapshot(path: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


def check_converted_manifest(layout: Path, manifest: dict, tars: list[bytes]) -> None:
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert len(manifest["layers"]) == len(tars)
    for layer, tar in zip(manifest["layers"], tars):
        assert layer["mediaType"] == OCI_ZSTD
        for key in CHUNKED_ANNOTATIONS:
            assert key in layer["annotations"]
        data = blob(layout, layer["digest"])
        assert len(data) == layer["size"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        assert zstd_d(data) == tar


# ------------------------------------------------------------------ the sample


def test_sample_converts_to_zstd_chunked_with_config_unchanged(tmp_path):
    out = tmp_path / "out"
    report = convert_refs(f"oci:{SAMPLE}", f"oci:{out}")
    img = ms.sample_image()
    entry = top(out, "v1")
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest = doc(out, entry["digest"])
    # config byte for byte: DiffIDs and image ID unchanged
    assert manifest["config"]["digest"] == img.config.digest
    assert blob(out, manifest["config"]["digest"]) == img.config.data
    check_converted_manifest(out, manifest, img.tars)
    assert [r.diff_id for r in report.layers] == [ms.sha256(t) for t in img.tars]
    assert all(r.chunked and r.reason is None and r.action == "converted" for r in report.layers)
    assert (out / "oci-layout").read_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    # no staging leftovers next to or inside the destination
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [p for p in out.rglob(".*")]


def test_same_input_gives_same_digests_whatever_the_thread_count(tmp_path):
    convert_refs(f"oci:{SAMPLE}", f"oci:{tmp_path / 'a'}", ConvertOptions(threads=1))
    convert_refs(f"oci:{SAMPLE}", f"oci:{tmp_path / 'b'}", ConvertOptions(threads=4))
    assert tree_snapshot(tmp_path / "a") == tree_snapshot(tmp_path / "b")


def test_level_changes_output_but_not_content(tmp_path):
    r1 = convert_refs(f"oci:{SAMPLE}", f"oci:{tmp_path / 'a'}", ConvertOptions(level=1))
    r19 = convert_refs(f"oci:{SAMPLE}", f"oci:{tmp_path / 'b'}", ConvertOptions(level=19))
    assert [r.new_digest for r in r1.layers] != [r.new_digest for r in r19.layers]
    assert [r.diff_id for r in r1.layers] == [r.diff_id for r in r19.layers]


def test_destination_tag_renames_and_keeps_other_entries(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(SAMPLE, out)
    convert_refs(f"oci:{out}:v1", f"oci:{out}:v1-zstd")
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index_json(out)["manifests"]]
    assert names == ["v1", "v1-zstd"]
    assert top(out, "v1")["digest"] == ms.sample_image().manifest.digest
    layers = doc(out, top(out, "v1-zstd")["digest"])["layers"]
    assert all(layer["mediaType"] == OCI_ZSTD for layer in layers)


def test_already_chunked_layers_are_copied_unless_forced(tmp_path):
    convert_refs(f"oci:{SAMPLE}", f"oci:{tmp_path / 'once'}")
    again = convert_refs(f"oci:{tmp_path / 'once'}", f"oci:{tmp_path / 'twice'}")
    assert all(r.action == "kept" and r.new_digest == r.old_digest for r in again.layers)
    assert top(tmp_path / "once")["digest"] == top(tmp_path / "twice")["digest"]
    forced = convert_refs(f"oci:{tmp_path / 'once'}", f"oci:{tmp_path / 'forced'}", ConvertOptions(force=True))
    assert all(r.action == "converted" for r in forced.layers)
    # re-encoding a zstd:chunked layer gives the same bytes as encoding the gzip one
    assert [r.new_digest for r in forced.layers] == [r.old_digest for r in forced.layers]


# ------------------------------------------------------------------ multi-image inputs


def _two_platforms(tmp_path: Path, docker: bool) -> tuple[Path, list[ms.Image]]:
    shared = ms.sample_layers()[0]
    amd = ms.make_image([shared, ms.make_tar([ms.Entry("amd64.txt", data=b"x86\n" * 100)])], "amd64", docker)
    arm = ms.make_image(
        [shared, ms.make_tar([ms.Entry("arm64.txt", data=b"arm\n" * 100)])], "arm64", docker, variant="v8"
    )
    index = ms.make_index([amd, arm], docker)
    src = tmp_path / "src"
    ms.write_layout(str(src), [*amd.blobs(), *arm.blobs(), index], [("multi", index)])
    return src, [amd, arm]


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-list"])
def test_every_platform_converted_and_shared_layer_converted_once(tmp_path, docker):
    src, images = _two_platforms(tmp_path, docker)
    out = tmp_path / "out"
    report = convert_refs(f"oci:{src}", f"oci:{out}")
    entry = top(out, "multi")
    assert entry["mediaType"] == "application/vnd.oci.image.index.v1+json"
    index = doc(out, entry["digest"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    for m, img in zip(index["manifests"], images):
        assert m["annotations"][INDEX_ZSTD_ANNOTATION] == "true"
        manifest = doc(out, m["digest"])
        check_converted_manifest(out, manifest, img.tars)
        # Docker configs keep their bytes, under the OCI media type
        assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        assert blob(out, manifest["config"]["digest"]) == img.config.data
    actions = [r.action for r in report.layers]
    assert actions == ["converted", "converted", "reused", "converted"]


def test_docker_schema2_manifest_becomes_oci(tmp_path):
    img = ms.make_image(ms.sample_layers(), docker=True)
    src = tmp_path / "src"
    ms.write_layout(str(src), img.blobs(), [("d", img.manifest)])
    out = tmp_path / "out"
    convert_refs(f"oci:{src}", f"oci:{out}")
    entry = top(out, "d")
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest = doc(out, entry["digest"])
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    check_converted_manifest(out, manifest, img.tars)


def test_without_tag_every_tag_and_untagged_entry_is_converted(tmp_path):
    a = ms.make_image(ms.sample_layers()[:1])
    b = ms.make_image(ms.sample_layers()[1:])
    src = tmp_path / "src"
    ms.write_layout(str(src), [*a.blobs(), *b.blobs()], [("a", a.manifest), ("b", b.manifest), (None, b.manifest)])
    out = tmp_path / "out"
    report = convert_refs(f"oci:{src}", f"oci:{out}")
    assert [i.tag for i in report.images] == ["a", "b", None]
    entries = index_json(out)["manifests"]
    assert [e.get("annotations", {}).get("org.opencontainers.image.ref.name") for e in entries] == ["a", "b", None]
    assert entries[1]["digest"] == entries[2]["digest"]
    # naming one destination tag for several source images is ambiguous
    with pytest.raises(UsageError, match="names one tag"):
        convert_refs(f"oci:{src}", f"oci:{tmp_path / 'x'}:one")
    assert not (tmp_path / "x").exists()


def test_uncompressed_layers_convert(tmp_path):
    img = ms.make_image(ms.sample_layers(), compress=False)
    src = tmp_path / "src"
    ms.write_layout(str(src), img.blobs(), [("plain", img.manifest)])
    convert_refs(f"oci:{src}", f"oci:{tmp_path / 'out'}")
    check_converted_manifest(tmp_path / "out", doc(tmp_path / "out", top(tmp_path / "out")["digest"]), img.tars)


# ------------------------------------------------------------------ --dual


def test_dual_single_manifest_gets_index_with_both_instances(tmp_path):
    out = tmp_path / "out"
    convert_refs(f"oci:{SAMPLE}", f"oci:{out}", ConvertOptions(dual=True))
    entry = top(out, "v1")
    assert entry["mediaType"] == "application/vnd.oci.image.index.v1+json"
    index = doc(out, entry["digest"])
    orig, zstd = index["manifests"]
    img = ms.sample_image()
    assert orig["digest"] == img.manifest.digest
    assert INDEX_ZSTD_ANNOTATION not in orig.get("annotations", {})
    assert zstd["annotations"][INDEX_ZSTD_ANNOTATION] == "true"
    assert orig["platform"] == zstd["platform"] == {"architecture": "amd64", "os": "linux"}
    # the original instance is complete: its gzip blobs were copied unchanged
    for layer in img.layers:
        assert blob(out, layer.digest) == layer.data
    check_converted_manifest(out, doc(out, zstd["digest"]), img.tars)


def test_dual_index_lists_originals_then_zstd_instances(tmp_path):
    src, images = _two_platforms(tmp_path, docker=False)
    out = tmp_path / "out"
    convert_refs(f"oci:{src}", f"oci:{out}", ConvertOptions(dual=True))
    index = doc(out, top(out, "multi")["digest"])
    ms_ = index["manifests"]
    assert [m["digest"] for m in ms_[:2]] == [i.manifest.digest for i in images]
    assert all(INDEX_ZSTD_ANNOTATION not in m.get("annotations", {}) for m in ms_[:2])
    assert all(m["annotations"][INDEX_ZSTD_ANNOTATION] == "true" for m in ms_[2:])
    assert [m["platform"]["architecture"] for m in ms_] == ["amd64", "arm64", "amd64", "arm64"]


# ------------------------------------------------------------------ incompatible layers


def _dup_path_image(tmp_path: Path) -> Path:
    tar = ms.make_tar([ms.Entry("etc", "dir"), ms.Entry("etc/a", data=b"1"), ms.Entry("etc/a", data=b"2")])
    img = ms.make_image([tar])
    src = tmp_path / "dup"
    ms.write_layout(str(src), img.blobs(), [("dup", img.manifest)])
    return src


def test_layer_with_duplicate_paths_becomes_plain_zstd_with_reason(tmp_path):
    src = _dup_path_image(tmp_path)
    out = tmp_path / "out"
    report = convert_refs(f"oci:{src}", f"oci:{out}")
    (rep,) = report.layers
    assert not rep.chunked and rep.reason
    layer = doc(out, top(out)["digest"])["layers"][0]
    assert layer["mediaType"] == OCI_ZSTD
    assert MANIFEST_CHECKSUM_KEY not in layer.get("annotations", {})
    assert ms.sha256(zstd_d(blob(out, layer["digest"]))) == rep.diff_id


def test_strict_refuses_incompatible_layer_and_leaves_destination_alone(tmp_path):
    src = _dup_path_image(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(IncompatibleLayerError, match="layer 1/1"):
        convert_refs(f"oci:{src}", f"oci:{out}", ConvertOptions(strict=True))
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["dup"]


# ------------------------------------------------------------------ bad input


def _existing_destination(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    dst = tmp_path / "dst"
    shutil.copytree(SAMPLE, dst)
    return dst, tree_snapshot(dst)


def _broken_copy(tmp_path: Path) -> tuple[Path, ms.Image]:
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src)
    return src, ms.sample_image()


def _assert_fails_cleanly(tmp_path, src_ref, exc, pattern):
    dst, before = _existing_destination(tmp_path)
    with pytest.raises(exc, match=pattern) as info:
        convert_refs(src_ref, f"oci:{dst}:new")
    assert "\n" not in str(info.value)
    assert tree_snapshot(dst) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    return str(info.value)


def test_missing_index_json(tmp_path):
    src, _ = _broken_copy(tmp_path)
    (src / "index.json").unlink()
    msg = _assert_fails_cleanly(tmp_path, f"oci:{src}", BadInputError, "index.json is missing")
    assert str(src) in msg


def test_blob_digest_mismatch_names_image_and_layer(tmp_path):
    src, img = _broken_copy(tmp_path)
    p = src / "blobs" / "sha256" / img.layers[1].digest.split(":")[1]
    data = bytearray(p.read_bytes())
    data[-20] ^= 0xFF  # in the gzip trailer's neighbourhood: still a readable stream for a while
    p.write_bytes(bytes(data))
    msg = _assert_fails_cleanly(tmp_path, f"oci:{src}:v1", BadInputError, "layer 2/3")
    assert f"oci:{src}:v1" in msg and img.layers[1].digest[:19] in msg


def test_truncated_blob(tmp_path):
    src, img = _broken_copy(tmp_path)
    p = src / "blobs" / "sha256" / img.layers[0].digest.split(":")[1]
    p.write_bytes(p.read_bytes()[:1000])
    _assert_fails_cleanly(tmp_path, f"oci:{src}:v1", BadInputError, r"layer 1/3 .*(truncated|EOF|ended)")


def test_truncated_gzip_with_matching_descriptor(tmp_path):
    # The descriptor is honest about the cut blob, so only the decoder can notice.
    tars = ms.sample_layers()
    cut = ms.gzip_bytes(tars[1])[:5000]
    config = ms.make_config(tars[1:2])
    layer = ms.Blob(ms.OCI_LAYER_GZIP, cut)
    manifest = ms.Blob(
        ms.OCI_MANIFEST,
        ms.dumps(
            {
                "schemaVersion": 2,
                "mediaType": ms.OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ),
    )
    src = tmp_path / "src"
    ms.write_layout(str(src), [manifest, config, layer], [("cut", manifest)])
    _assert_fails_cleanly(tmp_path, f"oci:{src}", BadInputError, "layer 1/1")


def test_unknown_layer_media_type(tmp_path):
    tars = ms.sample_layers()[:1]
    config = ms.make_config(tars)
    layer = ms.Blob("application/x-something-else", ms.gzip_bytes(tars[0]))
    manifest = ms.Blob(
        ms.OCI_MANIFEST,
        ms.dumps(
            {
                "schemaVersion": 2,
                "mediaType": ms.OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ),
    )
    src = tmp_path / "src"
    ms.write_layout(str(src), [manifest, config, layer], [("odd", manifest)])
    _assert_fails_cleanly(
        tmp_path, f"oci:{src}", BadInputError, "unknown layer media type 'application/x-something-else'"
    )


def test_unknown_top_level_media_type(tmp_path):
    src = tmp_path / "src"
    thing = ms.Blob("application/vnd.example.thing+json", b"{}")
    ms.write_layout(str(src), [thing], [("t", thing)])
    _assert_fails_cleanly(tmp_path, f"oci:{src}", BadInputError, "unknown media type")


def test_missing_blob(tmp_path):
    src, img = _broken_copy(tmp_path)
    (src / "blobs" / "sha256" / img.layers[2].digest.split(":")[1]).unlink()
    _assert_fails_cleanly(tmp_path, f"oci:{src}", BadInputError, r"layer 3/3 .*missing")


def test_diff_id_mismatch_with_config(tmp_path):
    tars = ms.sample_layers()
    config = ms.make_config([tars[1], tars[0]])  # diff_ids in the wrong order
    layers = [ms.Blob(ms.OCI_LAYER_GZIP, ms.gzip_bytes(t)) for t in tars[:2]]
    manifest = ms.Blob(
        ms.OCI_MANIFEST,
        ms.dumps(
            {
                "schemaVersion": 2,
                "mediaType": ms.OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [x.descriptor() for x in layers],
            }
        ),
    )
    src = tmp_path / "src"
    ms.write_layout(str(src), [manifest, config, *layers], [("swap", manifest)])
    _assert_fails_cleanly(tmp_path, f"oci:{src}", BadInputError, "diff_id")


def test_tar_with_dotdot_entry(tmp_path):
    tar = ms.make_tar([ms.Entry("../escape", data=b"x")])
    img = ms.make_image([tar])
    src = tmp_path / "src"
    ms.write_layout(str(src), img.blobs(), [("evil", img.manifest)])
    _assert_fails_cleanly(tmp_path, f"oci:{src}", BadInputError, r"layer 1/1 .*\.\.")


def test_tar_header_checksum_error(tmp_path):
    tar = bytearray(ms.sample_layers()[2])
    tar[148:156] = b"0000000\x00"  # wrong checksum of the first header
    img = ms.make_image([bytes(tar)])
    src = tmp_path / "src"
    ms.write_layout(str(src), img.blobs(), [("badsum", img.manifest)])
    _assert_fails_cleanly(tmp_path, f"oci:{src}", BadInputError, "layer 1/1")


def test_gzip_multi_member_layer(tmp_path):
    tar = ms.sample_layers()[1]
    half = len(tar) // 2
    data = gzip.compress(tar[:half], mtime=0) + gzip.compress(tar[half:], mtime=0)
    config = ms.make_config([tar])
    layer = ms.Blob(ms.OCI_LAYER_GZIP, data)
    manifest = ms.Blob(
        ms.OCI_MANIFEST,
        ms.dumps(
            {
                "schemaVersion": 2,
                "mediaType": ms.OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ),
    )
    src = tmp_path / "src"
    ms.write_layout(str(src), [manifest, config, layer], [("mm", manifest)])
    out = tmp_path / "out"
    convert_refs(f"oci:{src}", f"oci:{out}")
    check_converted_manifest(out, doc(out, top(out)["digest"]), [tar])
