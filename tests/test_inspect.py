"""`zconv inspect`: structure and TOC statistics checked against the tars they came from."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testdata"))
import make_sample as ms  # noqa: E402

from converter.chunked.format import MANIFEST_CHECKSUM_KEY  # noqa: E402
from converter.convert import convert_refs  # noqa: E402
from converter.errors import BadInputError  # noqa: E402
from converter.image.layout import LayoutSource, OciArchiveSource  # noqa: E402
from converter.image.model import Descriptor  # noqa: E402
from converter.imageread import read_layer_toc  # noqa: E402
from converter.inspect import format_text, inspect_source, toc_errors  # noqa: E402

SAMPLE = ROOT / "testdata" / "sample"


def tar_facts(tar: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
    regs = [m for m in members if m.isreg()]
    return {
        "entries": len(members),
        "regular_files": len(regs),
        "largest_file_bytes": max((m.size for m in regs), default=0),
        "files_with_data": sum(1 for m in regs if m.size > 0),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "out"
    convert_refs(f"oci:{SAMPLE}", f"oci:{out}")
    return out


def test_toc_statistics_match_the_layer_tars(converted):
    result = inspect_source(LayoutSource(str(converted)))
    (img,) = result["images"]
    assert img["tag"] == "v1" and img["kind"] == "manifest"
    tars = ms.sample_layers()
    for layer, tar in zip(img["layers"], tars):
        facts = tar_facts(tar)
        toc = layer["toc"]
        assert layer["chunked"] and layer["compression"] == "zstd"
        assert toc["entries"] == facts["entries"]
        assert toc["regular_files"] == facts["regular_files"]
        assert toc["largest_file_bytes"] == facts["largest_file_bytes"]
        assert toc["chunks"] >= facts["files_with_data"]
        assert toc["toc_bytes"] > 0
    # layer 2's data.bin has zero runs of 4096 and 2000 bytes (holes) and one of 1023 (data)
    assert img["layers"][1]["toc"]["zero_chunks"] == 2
    assert img["layers"][0]["toc"]["zero_chunks"] == 0
    text = format_text(result)
    assert "3 zstd:chunked" in text and "(2 zero)" in text


def test_inspect_reads_only_the_toc_range(converted):
    src = LayoutSource(str(converted))
    (img,) = inspect_source(src, with_toc=False)["images"]
    layer = img["layers"][1]
    calls = []
    original = src.read_blob_range

    def spy(desc, offset, length):
        calls.append((offset, length))
        return original(desc, offset, length)

    src.read_blob_range = spy  # type: ignore[method-assign]
    desc = Descriptor(layer["mediaType"], layer["digest"], layer["size"], annotations=layer["annotations"])
    toc, n = read_layer_toc(src, desc)
    assert toc["version"] == 1 and len(toc["entries"]) >= 5
    assert sum(length for _, length in calls) < layer["size"] // 10


def test_gzip_image_has_no_toc_and_multi_platform_index_is_shown(tmp_path):
    shared = ms.sample_layers()[0]
    amd = ms.make_image([shared], "amd64")
    arm = ms.make_image([shared], "arm64")
    index = ms.make_index([amd, arm])
    src = tmp_path / "src"
    ms.write_layout(str(src), [*amd.blobs(), *arm.blobs(), index], [("multi", index)])
    before = inspect_source(LayoutSource(str(src)))
    (img,) = before["images"]
    assert img["kind"] == "index"
    assert [m["platform"] for m in img["manifests"]] == ["linux/amd64", "linux/arm64"]
    assert all("toc" not in layer and not layer["chunked"] for m in img["manifests"] for layer in m["layers"])
    out = tmp_path / "out"
    convert_refs(f"oci:{src}", f"oci-archive:{out}.tar")
    after = inspect_source(OciArchiveSource(f"{out}.tar"))
    text = format_text(after)
    assert "- linux/amd64 [zstd]" in text and "- linux/arm64 [zstd]" in text
    assert all("toc" in layer for m in after["images"][0]["manifests"] for layer in m["layers"])


def test_tampered_toc_checksum_is_reported(tmp_path, converted):
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(converted, bad)
    idx = json.loads((bad / "index.json").read_text())
    mdigest = idx["manifests"][0]["digest"]
    manifest = json.loads((bad / "blobs" / "sha256" / mdigest.split(":")[1]).read_bytes())
    manifest["layers"][0]["annotations"][MANIFEST_CHECKSUM_KEY] = "sha256:" + "1" * 64
    data = ms.dumps(manifest)
    new = ms.sha256(data)
    (bad / "blobs" / "sha256" / new.split(":")[1]).write_bytes(data)
    idx["manifests"][0].update(digest=new, size=len(data))
    (bad / "index.json").write_text(json.dumps(idx))
    result = inspect_source(LayoutSource(str(bad)))
    errs = toc_errors(result)
    assert len(errs) == 1 and "checksum" in errs[0].lower()
    assert "TOC ERROR" in format_text(result)
    with pytest.raises(BadInputError):
        read_layer_toc(LayoutSource(str(bad)), Descriptor.from_dict(manifest["layers"][0]))


def test_inspect_docker_archive_synthesises_schema2_manifest(tmp_path):
    from converter.image.dockerarchive import DockerArchiveSource

    img = ms.make_image(ms.sample_layers(), docker=True)
    archive = tmp_path / "img.tar"
    ms.write_docker_archive(str(archive), [(img, ["app:1"])])
    result = inspect_source(DockerArchiveSource(str(archive)))
    (entry,) = result["images"]
    assert entry["tag"] == "1"
    assert entry["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert entry["config"]["digest"] == img.config.digest
    assert [layer["digest"] for layer in entry["layers"]] == [ms.sha256(t) for t in img.tars]
    assert [layer["compression"] for layer in entry["layers"]] == ["none"] * 3
