"""The flags pipelines use with skopeo and `podman push`, on convert, push and sync.

--retry-times/--retry-delay, --digestfile, --src-tls-verify/--dest-tls-verify and
--platform/--all, against the real registry (tests/support/registry.py), the fault
proxy in front of it, and a TLS registry whose CA is not given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from converter.commands import parse_duration, transport_options
from converter.convert import SOURCE_DIGEST_ANNOTATION
from converter.errors import RegistryError, UsageError
from converter.image.registry import RegistryClient, RetryPolicy, Transport
from converter.image.registry.errors import Transient
from converter.image.registry.http import operation
from support.faultproxy import Fault, FaultProxy
from support.registry import RegistryServer, make_self_signed_cert

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "testdata" / "sample"
sys.path.insert(0, str(ROOT / "testdata"))
import make_sample as ms  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def zconv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from converter.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
        cwd=ROOT,
    )


def one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("zconv: error: "), lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def isolated_auth(tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home/.config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home/.cache"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    for v in ("JOB_COMPLETION_INDEX", "ZCONV_SHARDS", "ZCONV_SHARD"):
        monkeypatch.delenv(v, raising=False)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("tls"))
    with RegistryServer(tls=(cert, key)) as reg:
        yield reg


def head(host: str, repo: str, ref: str, **kw) -> tuple[str, str]:
    """(digest, media type) the registry answers a manifest HEAD with."""
    with RegistryClient(host, **kw) as c:
        d = c.head_manifest(repo, ref)
    assert d is not None, f"{host}/{repo}:{ref} not found"
    return d.digest, d.media_type


def two_platforms(tmp_path: Path) -> tuple[Path, dict[str, str], str]:
    """A layout tagged `multi`: an index of linux/amd64 and linux/arm64/v8; (layout, arch -> manifest digest, index digest)."""
    shared = ms.sample_layers()[0]
    amd = ms.make_image([shared, ms.make_tar([ms.Entry("amd64.txt", data=b"x86\n" * 100)])], "amd64", False)
    arm = ms.make_image(
        [shared, ms.make_tar([ms.Entry("arm64.txt", data=b"arm\n" * 100)])], "arm64", False, variant="v8"
    )
    index = ms.make_index([amd, arm], False)
    src = tmp_path / "multi"
    ms.write_layout(str(src), [*amd.blobs(), *arm.blobs(), index], [("multi", index)])
    return src, {"amd64": amd.manifest.digest, "arm64": arm.manifest.digest}, index.digest


def sample_top() -> str:
    idx = json.loads((SAMPLE / "index.json").read_text())
    return next(
        m["digest"]
        for m in idx["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1"
    )


# ---------------------------------------------------------------- flag parsing (no registry)


def test_retry_flags_build_the_policy():
    assert transport_options(None, "true", None, None).retry is None  # not given: the registry layer's default
    p = transport_options(None, "true", None, None, retry_times=5).retry
    assert (p.retries, p.delay, p.max_delay) == (5, RetryPolicy().delay, RetryPolicy().max_delay)
    p = transport_options(None, "true", None, None, retry_times=0, retry_delay="250ms").retry
    assert p.retries == 0 and [p.wait(a) for a in range(4)] == [0.25] * 4  # explicit delay: fixed, as skopeo
    assert p.wait(0, retry_after="10") == 0.25  # a Retry-After is honoured only up to the explicit delay
    assert transport_options(None, "true", None, None, retry_times=80).retry.total == 80
    assert parse_duration("1m30s", "--retry-delay") == 90.0 and parse_duration("0.5", "--retry-delay") == 0.5
    for bad in ("2x", "", "s", "-1", "nan", "2h"):
        with pytest.raises(UsageError, match="--retry-delay"):
            parse_duration(bad, "--retry-delay")


@pytest.mark.parametrize("cmd", ["convert", "push", "sync"])
def test_bad_flag_values_are_one_line_usage_errors(cmd, tmp_path):
    dst = "docker://127.0.0.1:1/x/y" + ("" if cmd == "sync" else ":t")
    src = "docker://127.0.0.1:1/a/b" if cmd == "sync" else f"oci:{SAMPLE}:v1"
    for extra, needle in [
        (["--retry-delay", "soon"], "--retry-delay takes a duration"),
        (["--dest-tls-verify", "maybe"], "--dest-tls-verify takes true or false"),
        (["--src-tls-verify", "maybe"], "--src-tls-verify takes true or false"),
        (["--platform", "linux"], "expected OS/ARCH"),
        (["--platform", "linux/amd64", "--all"], "exclude each other"),
    ]:
        p = zconv(cmd, src, dst, *extra, "--digestfile", str(tmp_path / "d"))
        assert p.returncode == 64 and needle in one_error_line(p), (extra, p.stderr)
        assert not (tmp_path / "d").exists()


def test_retry_budget_is_per_operation():
    """A shared client (sync) gives each operation its own `total`; outside one the client's budget runs out."""
    t = Transport("127.0.0.1:1", "127.0.0.1:1", retry=RetryPolicy(retries=5, delay=0.0, max_delay=0.0, total=2))
    try:
        err = Transient("HTTP 503")
        for _ in range(3):  # three operations, two retries each
            with operation():
                t.backoff(0, err, "op")
                t.backoff(1, err, "op")
                with pytest.raises(RegistryError, match="gave up after 3 attempts"):
                    t.backoff(2, err, "op")
        assert t.stats.retries == 6
        t.backoff(0, err, "client")
        t.backoff(0, err, "client")
        with pytest.raises(RegistryError, match="gave up after 1 attempt"):
            t.backoff(0, err, "client")  # the client-wide budget of 2 is spent
    finally:
        t.close()


# ---------------------------------------------------------------- retries through the fault proxy


def test_push_retry_times_zero_fails_fast_and_n_with_a_delay_succeeds(registry, tmp_path):
    digestfile = tmp_path / "digest"
    with FaultProxy(registry.port) as proxy:
        fault = proxy.add(Fault("status", method="PUT", path="/manifests/", status=503, times=-1))
        p = zconv(
            "push",
            "-q",
            f"oci:{SAMPLE}:v1",
            f"docker://{proxy.host}/flags/retry:v1",
            "--retry-times",
            "0",
            "--digestfile",
            str(digestfile),
        )
        assert p.returncode == 4
        line = one_error_line(p)
        assert "HTTP 503" in line and "gave up after 1 attempt)" in line, line
        assert fault.applied == 1  # no second try
        assert not digestfile.exists()  # only on success

        proxy.faults.clear()
        fault = proxy.add(Fault("status", method="PUT", path="/manifests/", status=503, times=2))
        p = zconv(
            "push",
            f"oci:{SAMPLE}:v1",
            f"docker://{proxy.host}/flags/retry:v1",
            "--json",
            "--retry-times",
            "2",
            "--retry-delay",
            "10ms",
            "--digestfile",
            str(digestfile),
        )
        assert p.returncode == 0, p.stderr
        assert fault.applied == 2 and json.loads(p.stdout)["retries"] == 2
    assert digestfile.read_text() == f"{sample_top()}\n"
    assert head(registry.host, "flags/retry", "v1")[0] == sample_top()


def test_convert_retry_times_through_503s(registry, tmp_path):
    with FaultProxy(registry.port) as proxy:
        fault = proxy.add(Fault("status", method="PUT", path="/manifests/v1$", status=503, times=-1))
        p = zconv("convert", "-q", f"oci:{SAMPLE}:v1", f"docker://{proxy.host}/flags/conv:v1", "--retry-times", "0")
        assert p.returncode == 4
        assert "gave up after 1 attempt)" in one_error_line(p)
        assert fault.applied == 1
        proxy.faults.clear()
        fault = proxy.add(Fault("status", method="PUT", path="/manifests/v1$", status=503, times=3))
        p = zconv(
            "convert",
            "-q",
            f"oci:{SAMPLE}:v1",
            f"docker://{proxy.host}/flags/conv:v1",
            "--retry-times",
            "3",
            "--retry-delay",
            "0.01",
            "--digestfile",
            str(tmp_path / "d"),
        )
        assert p.returncode == 0, p.stderr
        assert fault.applied == 3
    assert (tmp_path / "d").read_text() == f"{head(registry.host, 'flags/conv', 'v1')[0]}\n"


# ---------------------------------------------------------------- digestfile


def test_sync_digestfile_lists_every_destination_tag(registry, tmp_path):
    host = registry.host
    for tag in ("1", "2"):
        assert zconv("push", "-q", f"oci:{SAMPLE}:v1", f"docker://{host}/flags/src:{tag}").returncode == 0
    digestfile = tmp_path / "sync.digests"
    args = ("sync", "-q", f"docker://{host}/flags/src", f"docker://{host}/cizstd", "--digestfile", str(digestfile))
    p = zconv(*args)
    assert p.returncode == 0, p.stderr
    want = "".join(f"{head(host, 'cizstd/flags/src', t)[0]} docker://{host}/cizstd/flags/src:{t}\n" for t in ("1", "2"))
    assert digestfile.read_text() == want
    digestfile.unlink()
    p = zconv(*args)  # a rerun skips both; the file still names what the destination holds
    assert p.returncode == 0, p.stderr
    assert digestfile.read_text() == want

    p = zconv(
        "sync",
        f"docker://{host}/flags/src",
        f"docker://{host}/cizstd",
        "--dry-run",
        "--digestfile",
        str(tmp_path / "dry"),
    )
    assert p.returncode == 64 and "--dry-run" in one_error_line(p)


def test_sync_digestfile_not_written_when_an_image_failed(registry, tmp_path):
    host = registry.host
    assert zconv("push", "-q", f"oci:{SAMPLE}:v1", f"docker://{host}/flags/fail:1").returncode == 0
    with FaultProxy(registry.port) as proxy:
        fault = proxy.add(Fault("status", method="PUT", path="/manifests/1$", status=503, times=-1))
        p = zconv(
            "sync",
            "-q",
            f"docker://{proxy.host}/flags/fail",
            f"docker://{proxy.host}/failout",
            "--retry-times",
            "1",
            "--retry-delay",
            "1ms",
            "--digestfile",
            str(tmp_path / "d"),
        )
        assert p.returncode == 4, p.stderr
        assert "gave up after 2 attempts" in one_error_line(p)
        assert fault.applied == 2
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- --platform / --all


def test_push_platform_pushes_the_chosen_instance(registry, tmp_path):
    layout, instances, index_digest = two_platforms(tmp_path)
    host = registry.host
    for plat, arch in (("linux/arm64", "arm64"), ("linux/amd64", "amd64")):
        d = tmp_path / f"digest-{arch}"
        p = zconv(
            "push",
            "-q",
            "--platform",
            plat,
            f"oci:{layout}:multi",
            f"docker://{host}/flags/plat:{arch}",
            "--digestfile",
            str(d),
        )
        assert p.returncode == 0, p.stderr
        assert head(host, "flags/plat", arch) == (instances[arch], OCI_MANIFEST)
        assert d.read_text() == f"{instances[arch]}\n"
    p = zconv(
        "push",
        "-q",
        "--all",
        f"oci:{layout}:multi",
        f"docker://{host}/flags/plat:all",
        "--digestfile",
        str(tmp_path / "all"),
    )
    assert p.returncode == 0, p.stderr
    assert head(host, "flags/plat", "all") == (index_digest, OCI_INDEX)
    assert (tmp_path / "all").read_text() == f"{index_digest}\n"
    p = zconv("push", "--platform", "linux/s390x", f"oci:{layout}:multi", f"docker://{host}/flags/plat:none")
    assert p.returncode == 2
    assert "no image for linux/s390x (it has: linux/amd64, linux/arm64/v8)" in one_error_line(p)
    with RegistryClient(host) as c:
        assert c.head_manifest("flags/plat", "none") is None


def test_sync_platform_converts_the_chosen_instance_and_reruns_skip(registry, tmp_path):
    layout, instances, _ = two_platforms(tmp_path)
    host = registry.host
    assert zconv("push", "-q", f"oci:{layout}:multi", f"docker://{host}/flags/msrc:1").returncode == 0
    args = (
        "sync",
        "--json",
        "--platform",
        "linux/arm64",
        f"docker://{host}/flags/msrc",
        f"docker://{host}/mzstd",
        "--digestfile",
        str(tmp_path / "d"),
    )
    p = zconv(*args)
    assert p.returncode == 0, p.stderr
    (rec,) = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert rec["action"] == "converted" and rec["source_digest"] == instances["arm64"]
    with RegistryClient(host) as c:
        data, mt, digest = c.get_manifest("mzstd/flags/msrc", "1")
        doc = json.loads(data)
        assert mt == OCI_MANIFEST and digest == rec["destination_digest"]
        assert doc["annotations"][SOURCE_DIGEST_ANNOTATION] == instances["arm64"]
        config = json.loads(c.get_range("mzstd/flags/msrc", doc["config"]["digest"], 0, doc["config"]["size"]))
        assert (config["architecture"], config.get("variant")) == ("arm64", "v8")
    assert (tmp_path / "d").read_text() == f"{digest} docker://{host}/mzstd/flags/msrc:1\n"
    again = zconv(*args)
    assert again.returncode == 0, again.stderr
    (rec2,) = [json.loads(ln) for ln in again.stdout.splitlines()]
    assert rec2["action"] == "skipped" and rec2["destination_digest"] == digest, rec2

    p = zconv("sync", "--platform", "linux/arm64", "--dual", f"docker://{host}/flags/msrc")
    assert p.returncode == 64 and "--platform" in one_error_line(p)


# ---------------------------------------------------------------- --src-tls-verify / --dest-tls-verify


def test_dest_tls_verify_false_with_an_untrusted_ca(registry, tls_registry, tmp_path):
    tls = tls_registry.host
    for cmd, src in (("push", f"oci:{SAMPLE}:v1"), ("convert", f"oci:{SAMPLE}:v1")):
        dest = f"docker://{tls}/flags/{cmd}:v1"
        p = zconv(cmd, "-q", src, dest)
        assert p.returncode == 4
        line = one_error_line(p)
        assert "TLS certificate not trusted" in line and "--cert-dir" in line
        # --dest-tls-verify wins over --tls-verify, both ways
        p = zconv(cmd, "-q", src, dest, "--tls-verify=false", "--dest-tls-verify=true")
        assert p.returncode == 4 and "TLS certificate not trusted" in one_error_line(p)
        p = zconv(cmd, "-q", src, dest, "--dest-tls-verify=false", "--digestfile", str(tmp_path / cmd))
        assert p.returncode == 0, p.stderr
        assert (tmp_path / cmd).read_text() == f"{head(tls, f'flags/{cmd}', 'v1', tls_verify=False)[0]}\n"

    # sync: the source on the plain registry, the destination the TLS one
    assert zconv("push", "-q", f"oci:{SAMPLE}:v1", f"docker://{registry.host}/flags/tsrc:1").returncode == 0
    p = zconv("sync", "-q", f"docker://{registry.host}/flags/tsrc", f"docker://{tls}/citls")
    assert p.returncode == 4 and "TLS certificate not trusted" in one_error_line(p)
    p = zconv("sync", "-q", f"docker://{registry.host}/flags/tsrc", f"docker://{tls}/citls", "--dest-tls-verify=false")
    assert p.returncode == 0, p.stderr
    assert head(tls, "citls/flags/tsrc", "1", tls_verify=False)[1] == OCI_MANIFEST

    # and the other way: the TLS registry as a source
    p = zconv("push", "-q", f"docker://{tls}/flags/push:v1", f"docker://{registry.host}/flags/fromtls:v1")
    assert p.returncode == 4 and "TLS certificate not trusted" in one_error_line(p)
    p = zconv(
        "push",
        "-q",
        f"docker://{tls}/flags/push:v1",
        f"docker://{registry.host}/flags/fromtls:v1",
        "--src-tls-verify=false",
    )
    assert p.returncode == 0, p.stderr
    assert head(registry.host, "flags/fromtls", "v1")[0] == sample_top()
