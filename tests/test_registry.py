"""The registry client against Debian's real docker-registry (no mocks).

A fault-injecting proxy of our own (tests/support/faultproxy.py) sits in
front of the registry where a test needs to see or break requests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from converter.errors import AuthError, BadInputError, RegistryError, UsageError
from converter.image import auth as authmod
from converter.image.model import MAX_MANIFEST_SIZE, OCI_MANIFEST, Descriptor, sha256_digest
from converter.image.registry import (
    DockerSink,
    DockerSource,
    RegistryClient,
    RetryPolicy,
    parse_reference,
)
from support.faultproxy import Fault, FaultProxy
from support.registry import RegistryServer

FAST = RetryPolicy(retries=4, delay=0.02, max_delay=0.2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Remembered upload sessions go to a per-test cache, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _blob(tmp_path: Path, size: int, seed: int = 0) -> tuple[Path, bytes, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = bytes(b ^ (i * 131 & 0xFF) for i, b in enumerate(data[:size]))
    p = tmp_path / f"blob-{seed}-{size}"
    p.write_bytes(data)
    return p, data, sha256_digest(data)


def _read_all(stream) -> bytes:
    parts = []
    while True:
        b = stream.read(1 << 20)
        if not b:
            return b"".join(parts)
        parts.append(b)


# ---------------------------------------------------------------- references


def test_reference_parsing_follows_docker_rules():
    r = parse_reference("docker://127.0.0.1:5000/team/app:1.2")
    assert (r.host, r.repository, r.tag, r.digest) == ("127.0.0.1:5000", "team/app", "1.2", None)
    assert parse_reference("alpine").name == "docker.io/library/alpine"
    assert parse_reference("docker://localhost/x@sha256:" + "a" * 64).digest == "sha256:" + "a" * 64
    assert parse_reference("quay.io/org/app").api_host == "quay.io"
    assert parse_reference("docker.io/library/busybox:1").api_host == "registry-1.docker.io"
    for bad in ("docker://h.io/UPPER:1", "docker://h.io/app:bad/tag", "docker://h.io/app@sha256:123", "docker://"):
        with pytest.raises(UsageError):
            parse_reference(bad)


# ---------------------------------------------------------------- blobs


def test_small_blob_upload_skip_and_verified_download(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 100_000)
    with RegistryClient(registry.host, retry=FAST) as c:
        assert c.push_blob("t/small", digest, len(data), lambda: open(path, "rb")) == "uploaded"
        # the registry already has it: HEAD says so and nothing is sent again
        assert c.push_blob("t/small", digest, len(data), lambda: open(path, "rb")) == "skipped"
        assert c.stats.uploaded == 1 and c.stats.skipped == 1
        with c.open_blob("t/small", digest, len(data)) as s:
            assert _read_all(s) == data


def test_download_with_corrupted_content_is_refused(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 5000, seed=7)
    with RegistryClient(registry.host, retry=FAST) as c:
        c.push_blob("t/wrong", digest, len(data), lambda: open(path, "rb"))
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("corrupt", method="GET", path=r"/blobs/sha256:"))
        with RegistryClient(proxy.host, retry=FAST) as c:
            with pytest.raises(BadInputError, match=r"t/wrong@sha256:\w+: downloaded content has digest"):
                with c.open_blob("t/wrong", digest, len(data)) as s:
                    _read_all(s)


def test_upload_refused_when_content_does_not_match_digest(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 3000, seed=3)
    wrong = "sha256:" + "0" * 64
    with RegistryClient(registry.host, retry=FAST) as c:
        with pytest.raises(BadInputError, match="does not match its digest"):
            c.push_blob("t/mismatch", wrong, len(data), lambda: open(path, "rb"))


def test_chunked_upload_resumes_from_upload_status_after_503(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 5 * 1024 * 1024 + 17, seed=1)
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("status", method="PATCH", status=503, after=1, times=2))
        with RegistryClient(proxy.host, retry=FAST, chunk_size=1 << 20) as c:
            assert c.push_blob("t/resume", digest, len(data), lambda: open(path, "rb")) == "uploaded"
            assert c.stats.resumed == 2
        patches = proxy.requests("PATCH")
        # 6 chunks + 2 refused attempts; no chunk was sent twice after being accepted
        assert [o for _, _, o in patches].count(202) == 6
        assert [o for _, _, o in patches].count(503) == 2
        assert len(proxy.requests("GET", r"/blobs/uploads/")) == 2  # the upload-status queries
        assert len(proxy.requests("POST", r"/blobs/uploads/")) == 1  # never restarted
    with RegistryClient(registry.host) as c:
        with c.open_blob("t/resume", digest, len(data)) as s:
            assert hashlib.sha256(_read_all(s)).hexdigest() == digest.split(":")[1]


def test_chunked_upload_restarts_when_a_chunk_died_half_way(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 3 * 1024 * 1024, seed=2)
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("drop_mid", method="PATCH", after=1, times=1))
        with RegistryClient(proxy.host, retry=FAST, chunk_size=1 << 20) as c:
            assert c.push_blob("t/restart", digest, len(data), lambda: open(path, "rb")) == "uploaded"
        # the registry holds bytes its session state does not know: it refuses the session, we start over
        assert len(proxy.requests("POST", r"/blobs/uploads/")) == 2
    with RegistryClient(registry.host) as c:
        assert c.blob_size("t/restart", digest) == len(data)


def test_lost_answer_to_final_put_is_detected_with_head(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 200_000, seed=4)
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("drop_response", method="PUT", path=r"/blobs/uploads/"))
        with RegistryClient(proxy.host, retry=FAST) as c:
            assert c.push_blob("t/lostput", digest, len(data), lambda: open(path, "rb")) == "uploaded"
        # the blob arrived with the first PUT; the retry found it with HEAD instead of uploading again
        assert len(proxy.requests("PUT", r"/blobs/uploads/")) == 1
        assert proxy.requests("HEAD", r"/blobs/")[-1][2] == 200


def test_download_resumes_with_range_after_a_cut(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 2 * 1024 * 1024, seed=5)
    with RegistryClient(registry.host) as c:
        c.push_blob("t/cut", digest, len(data), lambda: open(path, "rb"))
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("cut_response", method="GET", path=r"/blobs/sha256:"))
        with RegistryClient(proxy.host, retry=FAST) as c:
            with c.open_blob("t/cut", digest, len(data)) as s:
                assert _read_all(s) == data
        gets = proxy.requests("GET", r"/blobs/sha256:")
        assert [o for _, _, o in gets] == ["cut_response", 206]


def test_cross_repository_mount_sends_no_blob_data(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 300_000, seed=6)
    with RegistryClient(registry.host) as c:
        c.push_blob("t/mount-src", digest, len(data), lambda: open(path, "rb"))
    with FaultProxy(registry.port) as proxy:
        with RegistryClient(proxy.host, retry=FAST) as c:
            got = c.push_blob("t/mount-dst", digest, len(data), lambda: open(path, "rb"), mount_from=["t/mount-src"])
        assert got == "mounted"
        posts = proxy.requests("POST")
        assert len(posts) == 1 and posts[0][2] == 201
        assert proxy.requests("PATCH") == [] and proxy.requests("PUT") == []
    with RegistryClient(registry.host) as c:
        assert c.blob_size("t/mount-dst", digest) == len(data)


def test_range_requests_check_on_real_registry(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 1_000_000, seed=9)
    with RegistryClient(registry.host) as c:
        c.push_blob("t/range", digest, len(data), lambda: open(path, "rb"))
        rc = c.check_range_requests("t/range", digest, len(data), lambda o, n: data[o : o + n])
        assert rc.ok, rc.message
        assert c.get_range("t/range", digest, 12345, 100) == data[12345:12445]


def test_range_check_reports_a_registry_that_ignores_ranges(registry, tmp_path):
    """A proxy that strips the Range header (as some CDNs do) makes the check fail, with a clear message."""
    path, data, digest = _blob(tmp_path, 100_000, seed=10)
    with RegistryClient(registry.host) as c:
        c.push_blob("t/norange", digest, len(data), lambda: open(path, "rb"))
        # ask without Range: the same thing the registry does when it ignores the header
        resp = c.request("GET", f"/v2/t/norange/blobs/{digest}", repository="t/norange", stream=True)
        assert resp.status_code == 200
        resp.close()
    with FaultProxy(registry.port) as proxy:
        proxy.strip_request_headers = ("range",)
        with RegistryClient(proxy.host) as c:
            rc = c.check_range_requests("t/norange", digest, len(data))
    assert not rc.ok
    assert "ignores HTTP Range requests" in rc.message and "t/norange" in rc.message


# ---------------------------------------------------------------- manifests


def test_manifest_too_large_is_refused_before_sending(registry):
    big = json.dumps({"schemaVersion": 2, "annotations": {"x": "y" * MAX_MANIFEST_SIZE}}).encode()
    with RegistryClient(registry.host) as c:
        with pytest.raises(BadInputError, match="over the 4194304-byte limit"):
            c.put_manifest("t/big", "v1", big, OCI_MANIFEST)


def test_unknown_repository_and_tag(registry):
    with RegistryClient(registry.host) as c:
        with pytest.raises(RegistryError, match=r"127\.0\.0\.1:\d+/no/such:v1"):
            c.get_manifest("no/such", "v1")


def test_connection_refused_is_one_clear_error():
    with RegistryClient("127.0.0.1:1", retry=RetryPolicy(retries=1, delay=0.01)) as c:
        with pytest.raises(RegistryError, match=r"cannot connect to registry 127\.0\.0\.1:1: connection refused"):
            c.blob_size("x", "sha256:" + "0" * 64)


def test_retries_are_bounded(registry):
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("status", method="GET", path="/manifests/", status=503, times=-1))
        with RegistryClient(proxy.host, retry=RetryPolicy(retries=3, delay=0.01)) as c:
            with pytest.raises(RegistryError, match="gave up after 4 attempts"):
                c.get_manifest("t/x", "v1")
        assert len(proxy.requests("GET", "/manifests/")) == 4


def test_429_with_retry_after_is_retried(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 1000, seed=11)
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("status", method="HEAD", status=429, retry_after="0", times=2))
        with RegistryClient(proxy.host, retry=FAST) as c:
            assert c.push_blob("t/429", digest, len(data), lambda: open(path, "rb")) == "uploaded"
            assert c.stats.retries == 2


def test_sink_writes_tag_only_on_commit(registry, tmp_path):
    path, data, digest = _blob(tmp_path, 1000, seed=12)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cdesc = Descriptor("application/vnd.oci.image.config.v1+json", sha256_digest(config), len(config))
    ldesc = Descriptor("application/vnd.oci.image.layer.v1.tar", digest, len(data))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": cdesc.media_type, "digest": cdesc.digest, "size": cdesc.size},
            "layers": [{"mediaType": ldesc.media_type, "digest": ldesc.digest, "size": ldesc.size}],
        }
    ).encode()
    mdesc = Descriptor(OCI_MANIFEST, sha256_digest(manifest), len(manifest))
    with DockerSink(f"docker://{registry.host}/t/commit:v1") as sink:
        sink.put_blob_bytes(cdesc, config)
        sink.put_blob_file(ldesc, str(path))
        sink.put_manifest(mdesc, manifest)
        sink.tag("v1", mdesc)
        with RegistryClient(registry.host) as c:
            assert c.head_manifest("t/commit", "v1") is None  # not yet
            assert c.head_manifest("t/commit", mdesc.digest) is not None  # by digest: yes
        sink.commit()
    with DockerSource(f"docker://{registry.host}/t/commit:v1") as src:
        ((tag, top),) = src.targets()
        assert top.digest == mdesc.digest
        assert src.get_manifest(top) == manifest
        with src.open_blob(ldesc) as r:
            assert r.read() == data


# ---------------------------------------------------------------- credentials


def test_auth_file_order_and_namespaces(tmp_path, monkeypatch):
    def write(p: Path, auths: dict) -> Path:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"auths": auths}))
        return p

    def enc(u, p):
        import base64

        return {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)

    write(
        home / ".docker/config.json",
        {"https://reg.example:5000": enc("docker", "d"), "https://index.docker.io/v1/": enc("hub", "h")},
    )
    assert authmod.lookup_credentials("reg.example:5000").username == "docker"
    assert authmod.lookup_credentials("docker.io").username == "hub"

    write(
        tmp_path / "run/containers/auth.json",
        {"reg.example:5000": enc("runtime", "r"), "reg.example:5000/team": enc("team", "t")},
    )
    assert authmod.lookup_credentials("reg.example:5000").username == "runtime"
    assert authmod.lookup_credentials("reg.example:5000", "team/app").username == "team"
    assert authmod.lookup_credentials("reg.example:5000", "other/app").username == "runtime"

    explicit = write(tmp_path / "explicit.json", {"reg.example:5000": enc("explicit", "e")})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    c = authmod.lookup_credentials("reg.example:5000")
    assert (c.username, c.password, c.source) == ("explicit", "e", str(explicit))
    assert authmod.lookup_credentials("unknown.example") is None

    # login writes the file podman would use ($REGISTRY_AUTH_FILE here), mode 0600, other entries kept
    path = authmod.store_credentials("new.example", authmod.Credentials("n", "p:w", "test"))
    assert path == explicit and (os.stat(path).st_mode & 0o777) == 0o600
    doc = json.loads(path.read_text())
    assert set(doc["auths"]) == {"reg.example:5000", "new.example"}
    assert authmod.lookup_credentials("new.example").password == "p:w"
    assert authmod.remove_credentials("new.example")
    assert authmod.lookup_credentials("new.example") is None


def test_bad_auth_file_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "auth.json"
    bad.write_text("{not json")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(bad))
    with pytest.raises(AuthError, match=str(bad)):
        authmod.lookup_credentials("x.example")


@pytest.fixture(scope="module")
def auth_registry():
    with RegistryServer(auth=("alice", "s3cret")) as reg:
        yield reg


def test_basic_auth_right_and_wrong_password(auth_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("HOME", str(tmp_path))
    path, data, digest = _blob(tmp_path, 2000, seed=13)
    with RegistryClient(auth_registry.host, creds="alice:s3cret") as c:
        assert c.push_blob("t/auth", digest, len(data), lambda: open(path, "rb")) == "uploaded"
        c.check_login()
    with RegistryClient(auth_registry.host, creds="alice:wrong") as c:
        with pytest.raises(AuthError, match=r"authentication failed for user 'alice' \(from --creds\)"):
            c.blob_size("t/auth", digest)
    with RegistryClient(auth_registry.host) as c:
        with pytest.raises(AuthError, match=r"authentication required.*zconv login 127\.0\.0\.1:\d+"):
            c.blob_size("t/auth", digest)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    from support.registry import make_self_signed_cert

    d = tmp_path_factory.mktemp("tls")
    cert, key = make_self_signed_cert(d)
    with RegistryServer(tls=(cert, key)) as reg:
        yield reg


def test_tls_verified_with_cert_dir(tls_registry, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(Path(tls_registry.ca_cert).read_bytes())
    path, data, digest = _blob(tmp_path, 2000, seed=14)
    with RegistryClient(tls_registry.host, cert_dir=str(certs)) as c:
        assert c.push_blob("t/tls", digest, len(data), lambda: open(path, "rb")) == "uploaded"
        assert c._scheme == "https"
    with RegistryClient(tls_registry.host) as c:
        with pytest.raises(RegistryError, match=r"127\.0\.0\.1:\d+: TLS certificate not trusted.*--cert-dir"):
            c.blob_size("t/tls", digest)
    with RegistryClient(tls_registry.host, tls_verify=False) as c:
        assert c.blob_size("t/tls", digest) == len(data)
        assert c._scheme == "https"


def test_plain_http_only_for_loopback_or_when_asked(registry):
    # 127.0.0.1 may fall back to http; a non-local name may not (we ask for https only)
    with RegistryClient(registry.host) as c:
        c.ping()
        assert c._scheme == "http"
    remote = RegistryClient("registry.invalid:5000")
    assert remote._schemes() == ["https"]
    assert RegistryClient("registry.invalid:5000", tls_verify=False)._schemes() == ["https", "http"]
    assert RegistryClient("registry.invalid:5000", plain_http=True)._schemes() == ["http"]
