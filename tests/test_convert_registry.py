"""convert and inspect with a real registry (Debian's docker-registry on 127.0.0.1) at either end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testdata"))
import make_sample as ms  # noqa: E402

from converter.convert import ConvertOptions, convert_refs  # noqa: E402
from converter.errors import BadInputError  # noqa: E402
from converter.image.model import Index, parse_manifest_or_index  # noqa: E402
from converter.image.refs import open_sink, open_source  # noqa: E402
from converter.inspect import inspect_source  # noqa: E402

SAMPLE = ROOT / "testdata" / "sample"


def copy_image(src_ref: str, dst_ref: str) -> None:
    """Upload an image (or index) unchanged through the source/sink interfaces (no conversion)."""
    with open_source(src_ref) as src, open_sink(dst_ref) as dst:

        def copy(desc):
            data = src.get_manifest(desc)
            m = parse_manifest_or_index(data, desc.media_type)
            if isinstance(m, Index):
                for child in m.manifests:
                    copy(child)
            else:
                for b in (m.config, *m.layers):
                    if not dst.has_blob(b):
                        with src.open_blob(b) as r:
                            dst.put_blob(b, r)
                            r.finish()
            dst.put_manifest(desc, data)

        for _tag, desc in src.targets():
            copy(desc)
            dst.tag(dst.reference_tag, desc)
        dst.commit()


def remote_digest(ref: str) -> str:
    with open_source(ref) as src:
        return src.targets()[0][1].digest


def test_layout_to_registry_and_back_gives_the_same_image(tmp_path, registry):
    local = convert_refs(f"oci:{SAMPLE}:v1", f"oci:{tmp_path / 'local'}")
    pushed = convert_refs(f"oci:{SAMPLE}:v1", f"docker://{registry.host}/sample:v1-zstd")
    assert pushed.images[0].digest == local.images[0].digest
    assert pushed.range_check is not None and pushed.range_check["ok"], pushed.range_check
    # inspect reads the TOCs from the registry with range requests
    with open_source(f"docker://{registry.host}/sample:v1-zstd") as src:
        result = inspect_source(src)
    layers = result["images"][0]["layers"]
    assert [layer["digest"] for layer in layers] == [r.new_digest for r in local.layers]
    assert all(layer["chunked"] and layer["toc"]["regular_files"] > 0 for layer in layers)
    assert result["range_check"]["ok"]
    # and back down: already chunked, so copied as is
    back = convert_refs(f"docker://{registry.host}/sample:v1-zstd", f"oci:{tmp_path / 'back'}:v1")
    assert all(r.action == "kept" for r in back.layers)
    assert back.images[0].digest == local.images[0].digest


def test_registry_to_registry_multi_platform(tmp_path, registry):
    shared = ms.sample_layers()[0]
    amd = ms.make_image([shared, ms.sample_layers()[2]], "amd64", docker=True)
    arm = ms.make_image([shared], "arm64", docker=True)
    index = ms.make_index([amd, arm], docker=True)
    src = tmp_path / "src"
    ms.write_layout(str(src), [*amd.blobs(), *arm.blobs(), index], [("multi", index)])
    copy_image(f"oci:{src}:multi", f"docker://{registry.host}/multi:gzip")
    assert remote_digest(f"docker://{registry.host}/multi:gzip") == index.digest

    report = convert_refs(f"docker://{registry.host}/multi:gzip", f"docker://{registry.host}/multi:zstd")
    local = convert_refs(f"oci:{src}:multi", f"oci:{tmp_path / 'local'}")
    assert report.images[0].digest == local.images[0].digest == remote_digest(f"docker://{registry.host}/multi:zstd")
    assert [r.action for r in report.layers] == ["converted", "converted", "reused"]


def test_failed_conversion_does_not_move_the_registry_tag(tmp_path, registry):
    convert_refs(f"oci:{SAMPLE}:v1", f"docker://{registry.host}/keep:v1")
    before = remote_digest(f"docker://{registry.host}/keep:v1")
    bad = tmp_path / "bad"
    shutil.copytree(SAMPLE, bad)
    layer = bad / "blobs" / "sha256" / ms.sample_image().layers[2].digest.split(":")[1]
    layer.write_bytes(layer.read_bytes()[:-10])
    with pytest.raises(BadInputError, match="layer 3/3"):
        # without the cache: its memo would rightly skip reading a layer the registry already holds
        convert_refs(f"oci:{bad}:v1", f"docker://{registry.host}/keep:v1", ConvertOptions(cache=False))
    assert remote_digest(f"docker://{registry.host}/keep:v1") == before


def test_cli_convert_json_to_registry(registry):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "converter.cli",
            "convert",
            "--json",
            f"oci:{SAMPLE}:v1",
            f"docker://{registry.host}/cli:zstd",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["range_check"]["ok"] and len(rep["layers"]) == 3
    i = subprocess.run(
        [sys.executable, "-m", "converter.cli", "inspect", f"docker://{registry.host}/cli:zstd"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert i.returncode == 0, i.stderr
    assert "TOC:" in i.stdout and "HTTP Range requests: ok" in i.stdout


def test_dual_to_registry_publishes_both_instances(registry):
    from converter.convert import ConvertOptions

    report = convert_refs(f"oci:{SAMPLE}:v1", f"docker://{registry.host}/dual:v1", ConvertOptions(dual=True))
    assert report.images[0].media_type == "application/vnd.oci.image.index.v1+json"
    with open_source(f"docker://{registry.host}/dual:v1") as src:
        ((_, top),) = src.targets()
        index = parse_manifest_or_index(src.get_manifest(top), top.media_type)
        assert isinstance(index, Index)
        orig, zstd = index.manifests
        assert orig.digest == ms.sample_image().manifest.digest
        assert zstd.annotations["io.github.containers.compression.zstd"] == "true"
        # the original gzip instance is complete on the registry
        for layer in ms.sample_image().layers:
            desc = next(x for x in parse_manifest_or_index(src.get_manifest(orig)).layers if x.digest == layer.digest)
            assert src.read_blob(desc) == layer.data
