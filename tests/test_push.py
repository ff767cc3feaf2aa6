"""`zconv push` and `zconv login` end to end, against Debian's real docker-registry.

Commands run as separate processes (what a pipeline does); the pushed image
is read back from the registry and compared digest by digest.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from converter.image.registry import DockerSource, RegistryClient
from support.faultproxy import Fault, FaultProxy
from support.registry import RegistryServer, make_self_signed_cert

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "testdata" / "sample"
sys.path.insert(0, str(ROOT / "testdata"))
import make_sample  # noqa: E402


def zconv(
    *args: str, env: dict | None = None, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", "import sys; from converter.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        env=e,
        input=stdin,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(autouse=True)
def isolated_auth(tmp_path, monkeypatch):
    """No test reads the machine's real credentials."""
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home/.config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home/.cache"))  # remembered upload sessions
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("zconv: error: "), lines[0]
    return lines[0]


def layout_blobs(layout: Path) -> dict[str, bytes]:
    return {f"sha256:{p.name}": p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


def assert_registry_has(host: str, ref: str, expected: dict[str, bytes], top_digest: str) -> None:
    """Everything reachable from the tag is in the registry, byte for byte (digests verified on download)."""
    from converter.image.model import Index, parse_manifest_or_index

    with DockerSource(f"docker://{host}/{ref}") as src:
        ((_, top),) = src.targets()
        assert top.digest == top_digest
        todo = [top]
        seen: set[str] = set()
        while todo:
            d = todo.pop()
            data = src.get_manifest(d)
            assert data == expected[d.digest]
            seen.add(d.digest)
            doc = parse_manifest_or_index(data, d.media_type)
            if isinstance(doc, Index):
                todo.extend(doc.manifests)
                continue
            for b in (doc.config, *doc.layers):
                with src.open_blob(b) as r:
                    assert r.read() == expected[b.digest]
                    r.finish()
                seen.add(b.digest)
    assert seen == set(expected)


def top_digest(layout: Path, tag: str) -> str:
    idx = json.loads((layout / "index.json").read_text())
    for m in idx["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m["digest"]
    raise KeyError(tag)


def big_image(tmp_path: Path, seed: int, big: int = 3 * 1024 * 1024) -> Path:
    """An OCI layout with one incompressible layer of `big` bytes (so pushes use several chunks)."""
    rng = random.Random(seed)
    tars = make_sample.sample_layers(seed)[:1] + [
        make_sample.make_tar([make_sample.Entry("big.bin", data=rng.randbytes(big))])
    ]
    img = make_sample.make_image(tars)
    out = tmp_path / f"big-{seed}"
    make_sample.write_layout(str(out), img.blobs(), [("v1", img.manifest)])
    return out


# ------------------------------------------------------------------ anonymous


def test_push_layout_then_pull_back_compares_digests(registry):
    p = zconv("push", f"oci:{SAMPLE}:v1", f"docker://{registry.host}/push/sample:v1", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    digest = top_digest(SAMPLE, "v1")
    assert report["digest"] == digest
    assert report["destination"] == f"docker://{registry.host}/push/sample:v1"
    assert_registry_has(registry.host, "push/sample:v1", layout_blobs(SAMPLE), digest)


def test_push_whole_index_keeps_every_manifest(registry, tmp_path):
    tars = make_sample.sample_layers(3)
    amd = make_sample.make_image(tars, "amd64")
    arm = make_sample.make_image(tars[:2], "arm64", variant="v8")
    index = make_sample.make_index([amd, arm])
    layout = tmp_path / "multi"
    make_sample.write_layout(str(layout), [*amd.blobs(), *arm.blobs(), index], [("multi", index)])
    p = zconv("push", f"oci:{layout}:multi", f"docker://{registry.host}/push/multi:1", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["manifests"] == 3 and report["digest"] == index.digest
    assert_registry_has(registry.host, "push/multi:1", layout_blobs(layout), index.digest)


def test_push_docker_archive_source(registry, tmp_path):
    img = make_sample.make_image(make_sample.sample_layers(4), docker=True)
    archive = tmp_path / "saved.tar"
    make_sample.write_docker_archive(str(archive), [(img, ["localhost/app:2"])])
    p = zconv(
        "push", f"docker-archive:{archive}", f"docker://{registry.host}/push/fromarchive:2", "--json", "--jobs", "1"
    )
    assert p.returncode == 0, p.stderr
    with DockerSource(f"docker://{registry.host}/push/fromarchive:2") as src:
        ((_, top),) = src.targets()
        assert top.digest == json.loads(p.stdout)["digest"]
        from converter.image.model import parse_manifest_or_index

        m = parse_manifest_or_index(src.get_manifest(top), top.media_type)
        # blobs untouched: the config is the archive's config, byte for byte
        assert m.config.digest == img.config.digest
        assert src.read_blob(m.config) == img.config.data


def test_push_oci_archive_source(registry, tmp_path):
    import tarfile

    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tf:
        for p in sorted(SAMPLE.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(SAMPLE)), recursive=False)
    p = zconv("push", f"oci-archive:{archive}:v1", f"docker://{registry.host}/push/fromociarchive:v1", "--json")
    assert p.returncode == 0, p.stderr
    assert_registry_has(registry.host, "push/fromociarchive:v1", layout_blobs(SAMPLE), top_digest(SAMPLE, "v1"))


def test_rerun_after_a_failed_push_uploads_nothing_again(registry, tmp_path):
    """A push that dies at the end (here: the manifest PUT keeps failing) leaves its blobs;
    the next run only checks them (HEAD) and finishes the job."""
    layout = big_image(tmp_path, seed=23, big=400_000)
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("status", method="PUT", path="/manifests/", status=500, times=-1))
        p = zconv(
            "push",
            f"oci:{layout}:v1",
            f"docker://{proxy.host}/rerun/app:v1",
            "--quiet",
            "--retry",
            "1",
            "--retry-delay",
            "0.01",
        )
        assert p.returncode == 4
        assert "/manifests/" not in one_error_line(p)  # names the reference, not a URL path
        proxy.clear()
        p = zconv("push", f"oci:{layout}:v1", f"docker://{proxy.host}/rerun/app:v1", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["blobs"] == {"uploaded": 0, "mounted": 0, "skipped": 3}  # config + 2 layers
    assert_registry_has(registry.host, "rerun/app:v1", layout_blobs(layout), top_digest(layout, "v1"))


def test_second_push_skips_existing_blobs(registry):
    dest = "push/again:v1"
    assert zconv("push", f"oci:{SAMPLE}:v1", f"docker://{registry.host}/{dest}").returncode == 0
    with FaultProxy(registry.port) as proxy:
        p = zconv("push", f"oci:{SAMPLE}:v1", f"docker://{proxy.host}/{dest}", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["blobs"] == {"uploaded": 0, "mounted": 0, "skipped": 4}
        assert proxy.requests("POST") == [] and proxy.requests("PATCH") == []
        assert proxy.requests("PUT", "/blobs/") == []
        assert len(proxy.requests("HEAD", "/blobs/")) == 4


def test_push_between_repositories_mounts_blobs(registry):
    assert zconv("push", f"oci:{SAMPLE}:v1", f"docker://{registry.host}/mnt/a:v1").returncode == 0
    with FaultProxy(registry.port) as proxy:
        p = zconv("push", f"docker://{proxy.host}/mnt/a:v1", f"docker://{proxy.host}/mnt/b:copy", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["blobs"] == {"uploaded": 0, "mounted": 4, "skipped": 0}
        mounts = proxy.requests("POST", "/v2/mnt/b/blobs/uploads/")
        assert [o for _, _, o in mounts] == [201] * 4
        # no blob bytes travelled: no PATCH, no blob PUT, no blob GET
        assert proxy.requests("PATCH") == [] and proxy.requests("PUT", "/blobs/") == []
        assert proxy.requests("GET", "/blobs/") == []
    assert_registry_has(registry.host, "mnt/b:copy", layout_blobs(SAMPLE), top_digest(SAMPLE, "v1"))


def test_converted_image_push_checks_range_requests(registry, tmp_path):
    out = tmp_path / "conv"
    c = zconv("convert", f"oci:{SAMPLE}:v1", f"oci:{out}:v1")
    assert c.returncode == 0, c.stderr
    p = zconv("push", f"oci:{out}:v1", f"docker://{registry.host}/push/chunked:v1", "--json")
    assert p.returncode == 0, p.stderr
    rc = json.loads(p.stdout)["rangeCheck"]
    assert rc["ok"] is True, rc


def test_push_between_two_registries_streams_and_verifies(registry, tmp_path):
    assert zconv("push", f"oci:{SAMPLE}:v1", f"docker://{registry.host}/x/src:v1").returncode == 0
    # docker-registry reads REGISTRY_* variables as configuration (REGISTRY_AUTH_FILE = auth.file!)
    authfile = os.environ.pop("REGISTRY_AUTH_FILE")
    try:
        other = RegistryServer().start()
    finally:
        os.environ["REGISTRY_AUTH_FILE"] = authfile
    try:
        p = zconv("push", f"docker://{registry.host}/x/src:v1", f"docker://{other.host}/x/dst:v1", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["blobs"] == {"uploaded": 4, "mounted": 0, "skipped": 0}
        assert_registry_has(other.host, "x/dst:v1", layout_blobs(SAMPLE), top_digest(SAMPLE, "v1"))
    finally:
        other.stop()


# ------------------------------------------------------------------ faults


def test_push_through_faults_ends_with_a_complete_verified_image(registry, tmp_path):
    layout = big_image(tmp_path, seed=21)
    with FaultProxy(registry.port, stall_seconds=20) as proxy:
        proxy.add(Fault("drop", method="HEAD", times=1))
        proxy.add(Fault("status", method="POST", status=503, times=1))
        proxy.add(Fault("status", method="PATCH", status=502, after=1, times=1))
        proxy.add(Fault("drop_mid", method="PATCH", after=3, times=1))
        proxy.add(Fault("stall", method="PUT", path="/manifests/sha256:", times=1))
        proxy.add(Fault("status", method="PUT", path="/manifests/v1$", status=429, times=1, retry_after="0"))
        p = zconv(
            "push",
            f"oci:{layout}:v1",
            f"docker://{proxy.host}/faults/big:v1",
            "--json",
            "--retry",
            "4",
            "--retry-delay",
            "0.05",
            "--timeout",
            "2",
            "--chunk-size",
            "1",
        )
        assert p.returncode == 0, p.stderr
        report = json.loads(p.stdout)
        assert report["retries"] >= 6
        assert report["resumedUploads"] >= 1
        assert all(f.applied == 1 for f in proxy.faults), [(f.action, f.applied) for f in proxy.faults]
    assert_registry_has(registry.host, "faults/big:v1", layout_blobs(layout), top_digest(layout, "v1"))


def test_faults_beyond_budget_fail_and_leave_the_tag(registry, tmp_path):
    old = top_digest(SAMPLE, "v1")
    assert zconv("push", f"oci:{SAMPLE}:v1", f"docker://{registry.host}/faults/stable:prod").returncode == 0
    layout = big_image(tmp_path, seed=22, big=300_000)
    with FaultProxy(registry.port) as proxy:
        proxy.add(Fault("status", method="PUT", path="/blobs/uploads/", status=503, times=-1))
        p = zconv(
            "push",
            f"oci:{layout}:v1",
            f"docker://{proxy.host}/faults/stable:prod",
            "--quiet",
            "--retry",
            "2",
            "--retry-delay",
            "0.01",
        )
    assert p.returncode == 4
    line = one_error_line(p)
    assert f"{proxy.host}/faults/stable" in line and "gave up after 3 attempts" in line
    with RegistryClient(registry.host) as c:
        assert c.head_manifest("faults/stable", "prod").digest == old


def test_connection_refused_is_one_line(tmp_path):
    p = zconv("push", f"oci:{SAMPLE}:v1", "docker://127.0.0.1:1/x/y:z", "--retry", "0")
    assert p.returncode == 4
    assert "cannot connect to registry 127.0.0.1:1: connection refused" in one_error_line(p)


# ------------------------------------------------------------------ errors


def test_unknown_source_repository(registry):
    p = zconv("push", f"docker://{registry.host}/no/such:v1", f"docker://{registry.host}/x/y:v1")
    assert p.returncode == 4
    line = one_error_line(p)
    assert f"{registry.host}/no/such:v1" in line


def test_missing_blob_in_source(registry, tmp_path):
    layout = tmp_path / "broken"
    shutil.copytree(SAMPLE, layout)
    from converter.image.model import parse_manifest_or_index

    digest = top_digest(layout, "v1")
    m = parse_manifest_or_index((layout / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    gone = m.layers[1].digest
    (layout / "blobs/sha256" / gone.split(":")[1]).unlink()
    p = zconv("push", f"oci:{layout}:v1", f"docker://{registry.host}/err/missing:v1", "--quiet")
    assert p.returncode == 2
    assert gone in one_error_line(p)
    with RegistryClient(registry.host) as c:
        assert c.head_manifest("err/missing", "v1") is None
        # checked before any upload: not even the config went up
        assert c.blob_size("err/missing", m.config.digest) is None


def test_manifest_too_large(registry, tmp_path):
    img = make_sample.make_image(make_sample.sample_layers(5))
    doc = json.loads(img.manifest.data)
    doc["annotations"] = {"padding": "x" * (4 * 1024 * 1024)}
    big = make_sample.Blob(img.manifest.media_type, make_sample.dumps(doc))
    layout = tmp_path / "bigmanifest"
    make_sample.write_layout(str(layout), [img.config, *img.layers, big], [("v1", big)])
    p = zconv("push", f"oci:{layout}:v1", f"docker://{registry.host}/err/bigmanifest:v1", "--quiet")
    assert p.returncode == 2
    line = one_error_line(p)
    assert "4194304" in line and "manifest" in line


def test_destination_must_be_a_registry():
    p = zconv("push", f"oci:{SAMPLE}:v1", "oci:/tmp/elsewhere:v1")
    assert p.returncode == 64
    assert "docker://" in one_error_line(p)


# ------------------------------------------------------------------ auth and TLS


@pytest.fixture(scope="module")
def auth_registry():
    with RegistryServer(auth=("alice", "s3cret")) as reg:
        yield reg


def test_push_with_creds_right_and_wrong(auth_registry):
    dest = f"docker://{auth_registry.host}/auth/app:v1"
    p = zconv("push", f"oci:{SAMPLE}:v1", dest, "--creds", "alice:wrong")
    assert p.returncode == 5
    line = one_error_line(p)
    assert auth_registry.host in line and "authentication failed for user 'alice'" in line
    p = zconv("push", f"oci:{SAMPLE}:v1", dest)
    assert p.returncode == 5
    assert "zconv login" in one_error_line(p)
    p = zconv("push", f"oci:{SAMPLE}:v1", dest, "--creds", "alice:s3cret")
    assert p.returncode == 0, p.stderr


def test_login_writes_auth_file_used_by_push(auth_registry, tmp_path):
    authfile = Path(os.environ["REGISTRY_AUTH_FILE"])
    p = zconv("login", auth_registry.host, "-u", "alice", "--password-stdin", stdin="wrong\n")
    assert p.returncode == 5
    line = one_error_line(p)
    assert auth_registry.host in line
    assert "(from --password-stdin (standard input))" in line and "--creds" not in line  # the password came from stdin
    assert not authfile.exists()
    p = zconv("login", auth_registry.host, "-u", "alice", "--password-stdin", stdin="s3cret\n")
    assert p.returncode == 0, p.stderr
    doc = json.loads(authfile.read_text())
    assert list(doc["auths"]) == [auth_registry.host]
    assert (authfile.stat().st_mode & 0o777) == 0o600
    p = zconv("push", f"oci:{SAMPLE}:v1", f"docker://{auth_registry.host}/auth/viafile:v1", "--json")
    assert p.returncode == 0, p.stderr
    p = zconv("logout", auth_registry.host)
    assert p.returncode == 0
    assert json.loads(authfile.read_text())["auths"] == {}


def test_push_with_credentials_from_docker_config(auth_registry, tmp_path):
    import base64

    cfg = Path(os.environ["HOME"]) / ".docker" / "config.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(json.dumps({"auths": {auth_registry.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    p = zconv("push", f"oci:{SAMPLE}:v1", f"docker://{auth_registry.host}/auth/docker-config:v1")
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = make_self_signed_cert(d)
    with RegistryServer(tls=(cert, key)) as reg:
        yield reg


def test_push_tls_self_signed_ca(tls_registry, tmp_path):
    dest = f"docker://{tls_registry.host}/tls/app:v1"
    p = zconv("push", f"oci:{SAMPLE}:v1", dest)
    assert p.returncode == 4
    line = one_error_line(p)
    assert "TLS certificate not trusted" in line and "--cert-dir" in line
    certs = tmp_path / "certs.d"
    certs.mkdir()
    shutil.copy(tls_registry.ca_cert, certs / "ca.crt")
    p = zconv("push", f"oci:{SAMPLE}:v1", dest, "--cert-dir", str(certs), "--json")
    assert p.returncode == 0, p.stderr
    p = zconv("push", f"oci:{SAMPLE}:v1", f"docker://{tls_registry.host}/tls/insecure:v1", "--tls-verify=false")
    assert p.returncode == 0, p.stderr
    p = zconv("push", f"oci:{SAMPLE}:v1", dest, "--tls-verify=maybe")
    assert p.returncode == 64


def test_convert_into_an_authenticated_tls_registry_uses_the_docker_sink(tmp_path, tmp_path_factory):
    """`zconv convert ... docker://` goes through the same sink: credentials, CA dir, tag last."""
    d = tmp_path_factory.mktemp("tls-auth")
    cert, key = make_self_signed_cert(d)
    authfile = os.environ.pop("REGISTRY_AUTH_FILE")  # docker-registry would read it as configuration
    try:
        reg = RegistryServer(auth=("carol", "pw"), tls=(cert, key)).start()
    finally:
        os.environ["REGISTRY_AUTH_FILE"] = authfile
    try:
        certs = tmp_path / "certs"
        certs.mkdir()
        shutil.copy(cert, certs / "ca.crt")
        dest = f"docker://{reg.host}/conv/app:v1-zstd"
        p = zconv("convert", f"oci:{SAMPLE}:v1", dest, "--cert-dir", str(certs), "--dest-creds", "carol:pw")
        assert p.returncode == 0, p.stderr
        with RegistryClient(reg.host, creds="carol:pw", cert_dir=str(certs)) as c:
            data, mt, digest = c.get_manifest("conv/app", "v1-zstd")
            doc = json.loads(data)
            assert {layer["mediaType"] for layer in doc["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
            for layer in doc["layers"]:
                assert c.blob_size("conv/app", layer["digest"]) == layer["size"]
    finally:
        reg.stop()


def test_rerun_after_a_killed_push_finishes_without_reuploading(registry, tmp_path):
    """SIGKILL while the big layer is in flight; the next run skips the blobs that arrived,
    continues the big layer's upload session at the registry's offset, and completes."""
    import signal
    import time

    layout = big_image(tmp_path, seed=24, big=3 * 1024 * 1024)
    with FaultProxy(registry.port, stall_seconds=120) as proxy:
        proxy.add(Fault("stall", method="PATCH", after=1, times=1))  # the big layer's 2nd chunk hangs
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from converter.cli import main; sys.exit(main())",
                "push",
                f"oci:{layout}:v1",
                f"docker://{proxy.host}/crash/app:v1",
                "--quiet",
                "--chunk-size",
                "1",
                "--timeout",
                "120",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120  # a guard against hanging, not a timing assertion
            while not (
                proxy.requests("PATCH", None)
                and proxy.requests("PATCH")[-1][2] == "stall"
                and len([e for e in proxy.requests("PUT", "/blobs/uploads/") if e[2] == 201]) == 2
            ):
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, proxy.log
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        with RegistryClient(registry.host) as c:
            assert c.head_manifest("crash/app", "v1") is None  # nothing tagged by the killed run
        proxy.clear()
        before = len(proxy.log)
        p = zconv("push", f"oci:{layout}:v1", f"docker://{proxy.host}/crash/app:v1", "--json", "--chunk-size", "1")
        assert p.returncode == 0, p.stderr
        report = json.loads(p.stdout)
        # config and small layer arrived before the kill: only the big layer goes up again,
        # and only from where the killed run's upload session stands (its first 1 MiB chunk arrived)
        assert report["blobs"] == {"uploaded": 1, "mounted": 0, "skipped": 2}
        assert report["resumedUploads"] == 1
        big = max(layout_blobs(layout).values(), key=len)
        assert report["bytesUploaded"] == len(big) - (1 << 20)
        assert [e for e in proxy.log[before:] if e[0] == "POST"] == []  # no new upload session
    assert_registry_has(registry.host, "crash/app:v1", layout_blobs(layout), top_digest(layout, "v1"))
