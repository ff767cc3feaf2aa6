"""--reuse-from through the real registry, and the memo's blob locations (mounts into other repositories)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from test_cache import _text, convert, files_v1, files_v2, image, tree

from converter.cache import ENCODER_ANNOTATION
from converter.cache.reuse import GAP
from converter.chunked.writer import encoder_identity
from converter.convert import ConvertOptions, convert_refs
from converter.image.registry import DockerSource, multipart
from support.faultproxy import FaultProxy

pytestmark = pytest.mark.interop


@pytest.fixture
def ranged(monkeypatch):
    """Count the ranged reads of registry sources: one entry (offset, length) per range, one
    per read_blob_range call and one per range of a read_blob_ranges call (see `ranged.calls`);
    any whole-blob read of one fails the test."""

    class Ranges(list):
        calls = 0  # read_blob_range + read_blob_ranges calls

    calls = Ranges()
    orig = DockerSource.read_blob_range
    orig_many = DockerSource.read_blob_ranges

    def read_blob_range(self, desc, offset, length):
        calls.append((offset, length))
        calls.calls += 1
        return orig(self, desc, offset, length)

    def read_blob_ranges(self, desc, ranges):
        calls.extend(ranges)
        calls.calls += 1
        return orig_many(self, desc, ranges)

    def open_blob(self, desc):
        raise AssertionError(f"whole blob {desc.digest} read from {self.description}")

    monkeypatch.setattr(DockerSource, "read_blob_range", read_blob_range)
    monkeypatch.setattr(DockerSource, "read_blob_ranges", read_blob_ranges)
    monkeypatch.setattr(DockerSource, "open_blob", open_blob)
    return calls


def test_reuse_from_previous_tag_in_the_registry(tmp_path, registry, ranged):
    f1 = files_v1(seed=21)
    f2 = files_v2(f1)
    s1, s2 = image(tmp_path / "s1", f1), image(tmp_path / "s2", f2)
    convert_refs(f"oci:{s1}", f"docker://{registry.host}/reuse:v1", ConvertOptions(cache=False))
    v1_ref = f"docker://{registry.host}/reuse:v1"
    cold = convert(s2, tmp_path / "cold", None)
    reused = convert(s2, tmp_path / "reused", None, reuse_from=(v1_ref,))
    assert tree(tmp_path / "reused") == tree(tmp_path / "cold")
    fr = reused["frames"]
    assert fr["cache"] is None
    assert fr["reuse"]["frames"] > 0 and fr["compressed"]["frames"] > 0
    # every frame asked for came from v1 or was compressed; most bytes came from v1
    alone = convert(s2, tmp_path / "alone", tmp_path / "empty-cache")["frames"]
    assert fr["reuse"]["frames"] + fr["compressed"]["frames"] == alone["compressed"]["frames"]
    assert fr["reuse"]["bytes"] > 4 * fr["compressed"]["bytes"]
    # frames came with a few coalesced ranges (TOC reads included), not one per chunk
    assert 1 < len(ranged) < fr["reuse"]["frames"] / 4
    layer = cold["layers"][0]
    assert sum(n for _, n in ranged) < layer["new_size"] * 1.2
    assert fr["reuse"]["rejected"] == 0 and 0 < fr["reuse"]["requests"] <= fr["reuse"]["ranges"] < len(ranged)
    # the layers we write name their encoder, which is what makes them reusable
    m = json.loads((tmp_path / "cold" / "blobs/sha256" / cold["images"][0]["digest"][7:]).read_bytes())
    assert m["layers"][0]["annotations"][ENCODER_ANNOTATION] == encoder_identity(7)


def test_reuse_fetches_many_ranges_per_multirange_get(tmp_path, registry, ranged, monkeypatch):
    """Frames far apart in v1 are separate ranges; they come in a few multipart/byteranges GETs."""
    rng = random.Random(28)
    f1 = {}
    for i in range(40):
        f1[f"usr/share/doc/{i:03d}a.txt"] = _text(rng, 12_000)
        f1[f"usr/share/doc/{i:03d}b.pad"] = rng.randbytes(GAP + 4096)  # incompressible: v1's frames lie apart
    f2 = {name: data for name, data in f1.items() if name.endswith(".txt")}
    s1, s2 = image(tmp_path / "s1", f1), image(tmp_path / "s2", f2)
    convert_refs(f"oci:{s1}", f"docker://{registry.host}/multi:v1", ConvertOptions(cache=False))
    answers: list[int] = []
    orig = multipart.read_multipart

    def read_multipart(read, boundary, asked):
        parts = orig(read, boundary, asked)
        answers.append(len(parts))
        return parts

    monkeypatch.setattr(multipart, "read_multipart", read_multipart)
    cold = convert(s2, tmp_path / "cold", None)
    with FaultProxy(upstream_port=registry.port) as proxy:
        reused = convert(s2, tmp_path / "reused", None, reuse_from=(f"docker://{proxy.host}/multi:v1",))
        gets = proxy.requests("GET", "/blobs/")
    assert tree(tmp_path / "reused") == tree(tmp_path / "cold")
    fr = reused["frames"]["reuse"]
    assert fr["frames"] >= 40 and fr["rejected"] == 0 and reused["frames"]["compressed"]["bytes"] < fr["bytes"] / 4
    # one GET per request (the TOC reads are the rest); far fewer requests than ranges
    assert fr["ranges"] >= 40 and fr["requests"] * 10 <= fr["ranges"]
    assert len(gets) == ranged.calls and all(status == 206 for _, _, status in gets)
    # the registry answered them multipart/byteranges, one part per range
    assert len(answers) == fr["requests"] and sum(answers) == fr["ranges"]
    # only the frames and the TOC were fetched, not the pads between them
    assert sum(n for _, n in ranged) < cold["layers"][0]["new_size"] * 1.2 < 40 * GAP


def test_reuse_ignores_frames_of_another_encoder_and_bad_frames(tmp_path, registry, ranged):
    f1 = files_v1(seed=22, n=20)
    s1 = image(tmp_path / "s1", f1)
    # level 3 frames are other bytes: never taken for a level 7 conversion
    convert_refs(f"oci:{s1}", f"docker://{registry.host}/other:v1", ConvertOptions(cache=False, level=3))
    cold = convert(s1, tmp_path / "cold", None)
    r = convert(s1, tmp_path / "r", None, reuse_from=(f"docker://{registry.host}/other:v1",))
    assert tree(tmp_path / "r") == tree(tmp_path / "cold")
    assert r["frames"]["reuse"]["frames"] == 0 and r["frames"]["compressed"]["frames"] > 0
    # a layout whose layer has damaged frames: those are compressed again, the output does not change
    lay = tmp_path / "lay"
    convert(s1, lay, None)
    layer = lay / "blobs/sha256" / cold["layers"][0]["new_digest"][7:]
    data = bytearray(layer.read_bytes())
    for off in range(200, len(data) // 2, len(data) // 10):
        data[off] ^= 0x01
    layer.write_bytes(bytes(data))
    r2 = convert(s1, tmp_path / "r2", None, reuse_from=(f"oci:{lay}",))
    assert tree(tmp_path / "r2") == tree(tmp_path / "cold")
    assert r2["frames"]["reuse"]["frames"] > 0 and r2["frames"]["compressed"]["frames"] > 0
    assert r2["frames"]["reuse"]["rejected"] > 0


def test_reuse_then_cache_fills_for_the_next_run(tmp_path, registry):
    f1 = files_v1(seed=23, n=20)
    s1 = image(tmp_path / "s1", f1)
    convert_refs(f"oci:{s1}", f"docker://{registry.host}/fill:v1", ConvertOptions(cache=False))
    cache = tmp_path / "cache"
    r = convert(s1, tmp_path / "a", cache, reuse_from=(f"docker://{registry.host}/fill:v1",))
    assert r["frames"]["reuse"]["frames"] > 0
    w = convert(s1, tmp_path / "b", cache)
    # reused frames were stored in the cache with the ones compressed (tar headers): all hits now
    assert w["frames"]["compressed"]["frames"] == 0
    assert w["frames"]["cache"]["frames"] == r["frames"]["reuse"]["frames"] + r["frames"]["compressed"]["frames"]
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_memo_mounts_a_converted_layer_into_another_repository(tmp_path, registry):
    src = image(tmp_path / "src", files_v1(seed=24, n=10))
    cache = tmp_path / "cache"
    opts = ConvertOptions(cache_dir=str(cache))
    first = convert_refs(f"oci:{src}", f"docker://{registry.host}/memo-a:v1", opts)
    # the source layer would now fail if read: the second conversion must not read it
    manifest = json.loads((src / "index.json").read_text())["manifests"][0]
    mdoc = json.loads((src / "blobs/sha256" / manifest["digest"][7:]).read_bytes())
    layer = src / "blobs/sha256" / mdoc["layers"][0]["digest"][7:]
    layer.write_bytes(b"\x1f\x8b" + b"\0" * (layer.stat().st_size - 2))
    second = convert_refs(f"oci:{src}", f"docker://{registry.host}/memo-b:v1", opts)
    assert [r.action for r in second.layers] == ["mounted"]
    assert second.images[0].digest == first.images[0].digest
    with DockerSource(f"docker://{registry.host}/memo-b:v1") as s:  # the blob is really there
        desc = [d for d in s.targets()][0][1]
        assert desc.digest == first.images[0].digest


def test_push_to_a_second_repository_mounts_instead_of_uploading(tmp_path, registry):
    src = image(tmp_path / "src", files_v1(seed=25, n=10))
    out = tmp_path / "out"
    convert(src, out, None)

    def push(repo: str) -> dict:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "converter.cli",
                "push",
                "--json",
                "--tls-verify=false",
                f"oci:{out}:v1",
                f"docker://{registry.host}/{repo}:v1",
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    a = push("push-a")
    assert a["blobs"]["uploaded"] == 2 and a["blobs"]["mounted"] == 0
    b = push("push-b")
    assert b["blobs"]["mounted"] == 2 and b["blobs"]["uploaded"] == 0 and b["bytesUploaded"] == 0
    assert b["digest"] == a["digest"]


def test_reuse_from_a_missing_tag_warns_and_converts(tmp_path, registry, caplog):
    src = image(tmp_path / "src", files_v1(seed=26, n=5, big=0))
    cold = convert(src, tmp_path / "cold", None)
    r = convert(src, tmp_path / "r", None, reuse_from=(f"docker://{registry.host}/never-pushed:v0",))
    assert tree(tmp_path / "r") == tree(tmp_path / "cold")
    assert r["frames"]["reuse"]["frames"] == 0 and cold["images"] == r["images"]
    assert "never-pushed" in caplog.text and "not usable" in caplog.text
