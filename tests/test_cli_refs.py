"""Image reference parsing (skopeo-style transports) and the image model's checks."""

from __future__ import annotations

import io
import json

import pytest

from converter.errors import BadInputError, UsageError
from converter.image.model import (
    DOCKER_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    VerifyingReader,
    canonical_json,
    descriptor_for,
    parse_manifest_or_index,
)
from converter.image.refs import parse_ref
from converter.progress import Progress

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "raw, expect",
    [
        ("oci:/a/b:v1", dict(transport="oci", path="/a/b", tag="v1")),
        ("oci:/a/b", dict(transport="oci", path="/a/b", tag=None)),
        ("./layout", dict(transport="oci", path="./layout", tag=None)),
        ("./layout:latest", dict(transport="oci", path="./layout", tag="latest")),
        ("oci:img:localhost/app:1", dict(transport="oci", path="img", tag="localhost/app:1")),
        ("oci-archive:x.tar:v2", dict(transport="oci-archive", path="x.tar", tag="v2")),
        ("docker-archive:x.tar", dict(transport="docker-archive", path="x.tar", tag=None)),
        ("docker-archive:x.tar:app:1", dict(transport="docker-archive", path="x.tar", tag="app:1")),
        ("docker-archive:x.tar:@1", dict(transport="docker-archive", path="x.tar", tag="@1")),
        ("docker://127.0.0.1:5000/a/b:t", dict(transport="docker", host="127.0.0.1:5000", repository="a/b", tag="t")),
        ("docker://localhost/app", dict(transport="docker", host="localhost", repository="app", tag="latest")),
        ("docker://alpine", dict(transport="docker", host="docker.io", repository="library/alpine", tag="latest")),
        ("docker://quay.io/x/y@" + D, dict(transport="docker", host="quay.io", repository="x/y", tag=None, digest=D)),
    ],
)
def test_references_parse_into_their_parts(raw, expect):
    ref = parse_ref(raw)
    for k, v in expect.items():
        assert getattr(ref, k) == v, (raw, k)
    assert str(ref) == raw


@pytest.mark.parametrize(
    "raw, message",
    [
        ("", "empty image reference"),
        ("oci:", "missing path"),
        ("oci:dir:", "empty tag"),
        ("dir:/x", "unknown transport 'dir'"),
        ("containers-storage:x", "unknown transport"),
        ("docker:/x", "docker://HOST"),
        ("docker://", "missing registry"),
        ("docker://host.io/UPPER:1", "invalid repository component 'UPPER'"),
        ("docker://host.io/a:bad tag", "invalid tag"),
        ("docker://host.io/a@sha256:123", "malformed digest"),
        ("docker-archive:x.tar:@one", "@INDEX"),
    ],
)
def test_bad_references_are_usage_errors(raw, message):
    with pytest.raises(UsageError, match=message):
        parse_ref(raw)


def test_verifying_reader_catches_truncation_excess_and_mismatch():
    data = b"hello world" * 1000
    d = descriptor_for("application/octet-stream", data)
    ok = VerifyingReader(io.BytesIO(data), d.digest, d.size, "blob x")
    assert ok.read() == data and ok.verified
    short = VerifyingReader(io.BytesIO(data[:-1]), d.digest, d.size, "blob x")
    with pytest.raises(BadInputError, match="blob x: blob is truncated"):
        short.read()
    long = VerifyingReader(io.BytesIO(data + b"!"), d.digest, d.size, "blob x")
    with pytest.raises(BadInputError, match="larger than"):
        long.read()
    wrong = VerifyingReader(io.BytesIO(data.upper()), d.digest, d.size, "blob x")
    with pytest.raises(BadInputError, match="digest mismatch"):
        wrong.read()
    # a consumer that stops early still gets the checks through finish()
    partial = VerifyingReader(io.BytesIO(data.upper()), d.digest, d.size, "blob x")
    partial.read(10)
    with pytest.raises(BadInputError, match="digest mismatch"):
        partial.finish()


def test_manifest_and_index_round_trip_canonically():
    cfg = Descriptor("application/vnd.oci.image.config.v1+json", D, 10)
    layer = Descriptor("application/vnd.oci.image.layer.v1.tar+zstd", D, 5, annotations={"b": "2", "a": "1"})
    m = Manifest(OCI_MANIFEST, cfg, (layer,), annotations={"z": "1"})
    data = m.to_bytes()
    assert list(json.loads(data)["layers"][0]["annotations"]) == ["a", "b"]  # sorted
    back = parse_manifest_or_index(data)
    assert isinstance(back, Manifest) and back.to_bytes() == data
    idx = Index(OCI_INDEX, (descriptor_for(OCI_MANIFEST, data),))
    assert parse_manifest_or_index(idx.to_bytes()).to_bytes() == idx.to_bytes()
    assert canonical_json({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"schemaVersion": 1, "fsLayers": []}, "schema 1"),
        ({"schemaVersion": 2, "mediaType": "application/x-odd"}, "unknown manifest media type"),
        ({"schemaVersion": 2, "mediaType": DOCKER_LIST}, "without a manifests list"),
        ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}, "without mediaType"),
        ({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
          "config": {"mediaType": "x", "digest": "sha256:../../x", "size": 1}, "layers": []}, "malformed digest"),
        ({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
          "config": {"mediaType": "x", "digest": D, "size": -1}, "layers": []}, "invalid size"),
    ],
)
def test_malformed_manifests_are_bad_input(doc, message):
    with pytest.raises(BadInputError, match=message):
        parse_manifest_or_index(json.dumps(doc).encode(), where="m")


def test_progress_on_a_terminal_draws_and_summarises():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    p = Progress(stream=stream)
    assert p.enabled
    p.layer_start("layer 1/1", 2048)
    p.advance(1024)
    p.layer_done(2048, 1024, True, None, 0.5)
    out = stream.getvalue()
    assert "layer 1/1:" in out and "2.0 KiB -> 1.0 KiB zstd:chunked in 0.5s\n" in out
    quiet = io.StringIO()
    q = Progress(stream=quiet)  # not a terminal
    q.layer_start("l", 1)
    q.layer_done(1, 1, True, None, 0.1)
    q.warning("careful")
    assert quiet.getvalue() == "zconv: warning: careful\n"
