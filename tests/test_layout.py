"""OCI layout directories and oci-archive tars as sources and sinks."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testdata"))
import make_sample as ms  # noqa: E402

from converter.convert import convert_refs  # noqa: E402
from converter.errors import BadInputError, UsageError  # noqa: E402
from converter.image.layout import LayoutSink, LayoutSource, OciArchiveSink, OciArchiveSource  # noqa: E402
from converter.image.model import (  # noqa: E402
    OCI_MANIFEST,
    Descriptor,
    descriptor_for,
    parse_manifest_or_index,
)
from converter.image.refs import open_sink, open_source, parse_ref  # noqa: E402

SAMPLE = ROOT / "testdata" / "sample"


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def copy_image(src_ref: str, dst_ref: str) -> None:
    """Copy every blob unchanged through the source/sink interfaces."""
    with open_source(src_ref) as src, open_sink(dst_ref) as dst:
        for tag, desc in src.targets():
            data = src.get_manifest(desc)
            m = parse_manifest_or_index(data, desc.media_type)
            for b in (m.config, *m.layers):
                with src.open_blob(b) as r:
                    dst.put_blob(b, r)
                    r.finish()
            dst.put_manifest(desc, data)
            dst.tag(tag, desc)
        dst.commit()


def test_layout_round_trip_is_byte_identical(tmp_path):
    copy_image(f"oci:{SAMPLE}", f"oci:{tmp_path / 'copy'}")
    assert snapshot(tmp_path / "copy") == snapshot(SAMPLE)


def test_layout_source_tags_and_resolution():
    src = LayoutSource(str(SAMPLE))
    assert src.list_tags() == ["v1"]
    img = ms.sample_image()
    assert src.resolve("v1").digest == img.manifest.digest
    assert src.resolve("@" + img.manifest.digest).digest == img.manifest.digest
    with pytest.raises(BadInputError, match="no image tagged 'v2' .*tags here: v1"):
        src.resolve("v2")
    assert src.read_blob(Descriptor(img.config.media_type, img.config.digest, len(img.config.data))) == img.config.data
    layer = src.resolve("v1")
    assert src.read_blob_range(layer, 2, 10) == img.manifest.data[2:12]


def test_sink_leaves_nothing_before_commit_and_nothing_after_abort(tmp_path):
    out = tmp_path / "out"
    sink = LayoutSink(str(out), "t")
    data = b'{"x":1}'
    d = descriptor_for("application/octet-stream", data)
    sink.put_blob_bytes(d, data)
    assert not out.exists()
    sink.abort()
    assert os.listdir(tmp_path) == []


def test_sink_into_existing_layout_replaces_same_tag_only(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(SAMPLE, out)
    a = ms.make_image(ms.sample_layers()[:1])
    src = tmp_path / "src"
    ms.write_layout(str(src), a.blobs(), [("v1", a.manifest), ("other", a.manifest)])
    copy_image(f"oci:{src}:other", f"oci:{out}:other")
    copy_image(f"oci:{src}:v1", f"oci:{out}:v1")
    entries = json.loads((out / "index.json").read_text())["manifests"]
    assert [(e["annotations"]["org.opencontainers.image.ref.name"], e["digest"]) for e in entries] == [
        ("other", a.manifest.digest),
        ("v1", a.manifest.digest),
    ]
    # the old v1's blobs are still there (layouts are not garbage-collected)
    assert (out / "blobs" / "sha256" / ms.sample_image().manifest.digest.split(":")[1]).exists()


def test_sink_refuses_non_layout_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "something").write_text("x")
    with pytest.raises(UsageError, match="not an OCI layout"):
        LayoutSink(str(tmp_path / "d"))


def test_sink_verifies_streamed_blobs(tmp_path):
    sink = LayoutSink(str(tmp_path / "out"))
    d = descriptor_for("application/octet-stream", b"right")
    with pytest.raises(BadInputError, match="does not match"):
        sink.put_blob(d, io.BytesIO(b"wrong"))
    sink.abort()
    assert not (tmp_path / "out").exists()


def test_layout_rejects_malformed_digest_in_index(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src)
    idx = json.loads((src / "index.json").read_text())
    idx["manifests"][0]["digest"] = "sha256:../../etc/passwd"
    (src / "index.json").write_text(json.dumps(idx))
    with pytest.raises(BadInputError, match="malformed digest"):
        LayoutSource(str(src))


def test_index_json_not_json(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src)
    (src / "index.json").write_text("{nope")
    with pytest.raises(BadInputError, match="index.json: not valid JSON"):
        LayoutSource(str(src))


# ------------------------------------------------------------------ oci-archive


def gnu_tar_layout(layout: Path, out: Path, *extra: str) -> None:
    subprocess.run(["tar", "-C", str(layout), "-cf", str(out), *extra, "."], check=True)


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_oci_archive_from_gnu_tar_converts(tmp_path, fmt):
    archive = tmp_path / "img.tar"
    gnu_tar_layout(SAMPLE, archive, f"--format={fmt}")
    out = tmp_path / "out"
    report = convert_refs(f"oci-archive:{archive}:v1", f"oci:{out}")
    assert len(report.layers) == 3 and all(r.chunked for r in report.layers)
    direct = convert_refs(f"oci:{SAMPLE}", f"oci:{tmp_path / 'direct'}")
    assert [r.new_digest for r in report.layers] == [r.new_digest for r in direct.layers]


def test_oci_archive_from_python_tarfile_without_dot_prefix(tmp_path):
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tf:
        for p in sorted(SAMPLE.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(SAMPLE)), recursive=False)
    src = OciArchiveSource(str(archive))
    assert src.list_tags() == ["v1"]
    copy_image(f"oci-archive:{archive}", f"oci:{tmp_path / 'copy'}")
    assert snapshot(tmp_path / "copy") == snapshot(SAMPLE)


def test_oci_archive_sink_writes_a_tar_gnu_tar_reads(tmp_path):
    archive = tmp_path / "out.tar"
    convert_refs(f"oci:{SAMPLE}", f"oci-archive:{archive}")
    listing = subprocess.run(["tar", "-tf", str(archive)], check=True, capture_output=True, text=True).stdout.split()
    assert listing[:2] == ["oci-layout", "index.json"]
    assert len([n for n in listing if n.startswith("blobs/sha256/") and len(n) > 20]) == 5
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-C", str(unpacked), "-xf", str(archive)], check=True)
    convert_refs(f"oci:{SAMPLE}", f"oci:{tmp_path / 'dir'}")
    assert snapshot(unpacked) == snapshot(tmp_path / "dir")
    # archives are reproducible too
    first = archive.read_bytes()
    convert_refs(f"oci:{SAMPLE}", f"oci-archive:{archive}")
    assert archive.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_oci_archive_sink_failure_keeps_old_archive(tmp_path):
    archive = tmp_path / "out.tar"
    archive.write_bytes(b"previous contents")
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src)
    (src / "blobs" / "sha256" / ms.sample_image().layers[0].digest.split(":")[1]).write_bytes(b"garbage")
    with pytest.raises(BadInputError):
        convert_refs(f"oci:{src}", f"oci-archive:{archive}")
    assert archive.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tar", "src"]


def test_oci_archive_member_climbing_out_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        ti = tarfile.TarInfo("../index.json")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"{}"))
    with pytest.raises(BadInputError, match="climbs out"):
        OciArchiveSource(str(archive))


def test_compressed_or_truncated_archives(tmp_path):
    archive = tmp_path / "img.tar"
    gnu_tar_layout(SAMPLE, archive)
    gz = tmp_path / "img.tar.gz"
    subprocess.run(["gzip", "-k", str(archive)], check=True)
    with pytest.raises(BadInputError, match="compressed"):
        OciArchiveSource(str(gz))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BadInputError, match="truncated|not a valid tar|missing"):
        convert_refs(f"oci-archive:{cut}", f"oci:{tmp_path / 'o'}")
    assert not (tmp_path / "o").exists()


def test_oci_archive_sink_refuses_directory(tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        OciArchiveSink(str(tmp_path))


def test_podman_style_ref_names_match_by_tag(tmp_path):
    img = ms.sample_image()
    src = tmp_path / "src"
    ms.write_layout(str(src), img.blobs(), [("localhost/app:1", img.manifest)])
    s = open_source(parse_ref(f"oci:{src}:1"))
    assert s.targets()[0][1].digest == img.manifest.digest
    s2 = open_source(parse_ref(f"oci:{src}:localhost/app:1"))
    assert s2.targets()[0][1].digest == img.manifest.digest
    assert OCI_MANIFEST == img.manifest.media_type
