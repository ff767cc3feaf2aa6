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
from converter.image.refs import parse_docker_reference, parse_ref
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
        ("containers-storage:", "missing image name"),
        ("containers-storage:[relative+/r]x", "absolute graph root"),
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


D512 = "sha512:" + "cd" * 64


# The distribution reference grammar (github.com/distribution/reference), as one table:
# (reference, (host, repository, tag, digest)) with default_tag="latest", as sources use it.
@pytest.mark.parametrize(
    "raw, parts",
    [
        ("docker://alpine", ("docker.io", "library/alpine", "latest", None)),
        ("alpine:3.19", ("docker.io", "library/alpine", "3.19", None)),
        ("docker://docker.io/alpine", ("docker.io", "library/alpine", "latest", None)),
        ("docker://index.docker.io/library/busybox:1", ("docker.io", "library/busybox", "1", None)),
        ("docker://registry-1.docker.io/org/app", ("docker.io", "org/app", "latest", None)),
        ("docker://user/app", ("docker.io", "user/app", "latest", None)),
        ("docker://localhost/app", ("localhost", "app", "latest", None)),
        ("docker://localhost:5000/a/b/c:v1", ("localhost:5000", "a/b/c", "v1", None)),
        ("docker://127.0.0.1:5000/team/app:1.2", ("127.0.0.1:5000", "team/app", "1.2", None)),
        ("docker://[::1]:5000/app:x", ("[::1]:5000", "app", "x", None)),
        ("docker://quay.io/x/y@" + D, ("quay.io", "x/y", None, D)),
        ("docker://quay.io/x/y@" + D512, ("quay.io", "x/y", None, D512)),
        ("docker://quay.io/x/y:t@" + D, ("quay.io", "x/y", "t", D)),
        ("docker://h.io/a__b/c-d/e.f/g--h:T_1.2-x", ("h.io", "a__b/c-d/e.f/g--h", "T_1.2-x", None)),
        ("docker://h.io/app:_under", ("h.io", "app", "_under", None)),
        ("docker://h.io/app:" + "t" * 128, ("h.io", "app", "t" * 128, None)),
        ("docker://my-reg.example.com:443/app", ("my-reg.example.com:443", "app", "latest", None)),
    ],
)
def test_docker_reference_grammar_valid(raw, parts):
    r = parse_docker_reference(raw, default_tag="latest")
    assert (r.host, r.repository, r.tag, r.digest) == parts
    # the same parser serves parse_ref's docker:// transport
    if raw.startswith("docker://"):
        ref = parse_ref(raw)
        assert (ref.host, ref.repository, ref.tag, ref.digest) == parts


@pytest.mark.parametrize(
    "raw, message",
    [
        ("docker://", "missing registry"),
        ("docker://h.io/UPPER", "invalid repository component 'UPPER'"),
        ("docker://h.io/app:.dot", "invalid tag"),
        ("docker://h.io/app:-dash", "invalid tag"),
        ("docker://h.io/app:" + "t" * 129, "invalid tag"),
        ("docker://h.io/app:caf\u00e9", "invalid tag"),  # \w is ASCII in the grammar
        ("docker://h.io/app:bad/tag", "invalid repository component|invalid tag"),
        ("docker://h.io/app:", "invalid tag"),
        ("docker://h.io/app@sha256:123", "malformed digest"),
        ("docker://h.io/app@sha256:" + "A" * 64, "malformed digest"),
        ("docker://h.io/app@md5:" + "a" * 32, "malformed digest"),
        ("docker://h.io/app@sha512:" + "a" * 64, "malformed digest"),
        ("docker://h.io/a//b", "invalid repository component ''"),
        ("docker://h.io/a-/b", "invalid repository component 'a-'"),
        ("docker://h.io/_a", "invalid repository component '_a'"),
        ("docker://h.io/a___b", "invalid repository component"),
        ("docker://-bad.io/app", "invalid registry host"),
        ("docker://h.io:port/app", "invalid registry host"),
        ("docker://h.io/" + "a" * 251, "longer than 255"),
    ],
)
def test_docker_reference_grammar_invalid(raw, message):
    with pytest.raises(UsageError, match=message):
        parse_docker_reference(raw)
    with pytest.raises(UsageError, match=message):
        parse_ref(raw)


def test_docker_reference_default_tag_is_the_callers():
    assert parse_docker_reference("docker://h.io/app").tag is None  # push takes the source's tag then
    assert parse_docker_reference("docker://h.io/app", default_tag="latest").tag == "latest"
    assert parse_docker_reference("docker://h.io/app@" + D, default_tag="latest").tag is None
    assert str(parse_docker_reference("docker://h.io/app:v1@" + D)) == f"h.io/app:v1@{D}"


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
        (
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": "sha256:../../x", "size": 1},
                "layers": [],
            },
            "malformed digest",
        ),
        (
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": D, "size": -1},
                "layers": [],
            },
            "invalid size",
        ),
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
