"""`zconv sync` end to end against Debian's real docker-registry.

Images are small OCI layouts (tests/support/corpus.py) pushed with zconv push;
`zconv sync` runs as a separate process, as a pipeline or a Kubernetes pod
would run it, and its --json records are checked against what the registry
then holds.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from converter.convert import SOURCE_DIGEST_ANNOTATION
from converter.errors import UsageError
from converter.image.registry import RegistryClient
from converter.push import push_image
from converter.sync import Item, parse_shard, shard_from_env, shard_of
from support.corpus import LayerBlob, write_oci_image
from support.registry import RegistryServer

ROOT = Path(__file__).resolve().parent.parent
TOC_KEY = "io.github.containers.zstd-chunked.manifest-checksum"


# ---------------------------------------------------------------- helpers


def layer_tar(name: str, seed: int, files: int = 6, size: int = 40_000) -> bytes:
    """A small deterministic layer: `files` files of pseudo-random (compressible) text under /NAME."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(5000)}" for _ in range(2000)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo(name)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        tf.addfile(d)
        for i in range(files):
            data = " ".join(rng.choice(words) for _ in range(size // 6)).encode()[:size]
            ti = tarfile.TarInfo(f"{name}/f{i}.txt")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def make_image(layout: Path, tag: str, layers: list[bytes | LayerBlob]) -> dict:
    return write_oci_image(layout, tag, layers)


def push(layout: Path, tag: str, dest: str) -> None:
    push_image(f"oci:{layout}:{tag}", dest, check_ranges=False, warn=lambda m: None)


BASE = layer_tar("base", 1, files=8)


def publish(tmp: Path, host: str, repo: str, tags: list[str], salt: str = "") -> None:
    """Push len(tags) images to HOST/REPO: the shared BASE, a per-repo layer, a per-tag top layer."""
    layout = tmp / f"src-{repo.replace('/', '_')}{salt}"
    mid = layer_tar(f"app-{repo}", zlib.crc32(repo.encode()), files=3)
    for i, tag in enumerate(tags):
        top = layer_tar(f"top-{repo}-{tag}{salt}", 1000 + i + len(salt) * 7, files=2, size=5000)
        make_image(layout, tag, [BASE, mid, top])
        push(layout, tag, f"docker://{host}/{repo}:{tag}")


def zconv(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", "import sys; from converter.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        cwd=ROOT,
    )


def records(p: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def by_action(recs: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in recs:
        out.setdefault(r["action"], set()).add(r["source"])
    return out


def manifest_of(host: str, repo: str, tag: str) -> tuple[dict, str]:
    with RegistryClient(host) as c:
        data, _, digest = c.get_manifest(repo, tag)
    return json.loads(data), digest


def registry_blobs(reg: RegistryServer) -> set[str]:
    root = reg.storage_dir / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in root.glob("*/*") if (p / "data").exists()}


@pytest.fixture(autouse=True)
def isolated_auth(tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home/.config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home/.cache"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    for v in ("JOB_COMPLETION_INDEX", "ZCONV_SHARDS", "ZCONV_SHARD"):
        monkeypatch.delenv(v, raising=False)


@pytest.fixture()
def reg():
    """A registry of its own per test: the assertions count what is in it."""
    with RegistryServer() as r:
        yield r


# ---------------------------------------------------------------- shards (no registry)


def test_shard_is_stable_when_tags_are_added():
    items = [Item("r.example", f"repo{r}", f"t{t}") for r in range(5) for t in range(40)]
    before = {it: shard_of(it, 4) for it in items}
    more = items + [Item("r.example", "repo0", f"new{t}") for t in range(50)]
    assert all(shard_of(it, 4) == before[it] for it in items)
    counts = [sum(1 for it in more if shard_of(it, 4) == i) for i in range(4)]
    assert all(c > 20 for c in counts), counts  # a hash, not everything in one shard


def test_shard_from_env_and_flag():
    assert shard_from_env({}) is None
    assert shard_from_env({"JOB_COMPLETION_INDEX": "2", "ZCONV_SHARDS": "5"}) == (2, 5)
    assert shard_from_env({"ZCONV_SHARD": "1/3", "JOB_COMPLETION_INDEX": "2", "ZCONV_SHARDS": "5"}) == (1, 3)
    with pytest.raises(UsageError, match="ZCONV_SHARDS"):
        shard_from_env({"JOB_COMPLETION_INDEX": "2"})
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_usage_errors_are_one_line():
    for args, needle in [
        (["docker://127.0.0.1:1/app"], "no destination"),
        (["docker://127.0.0.1:1/app", "docker://127.0.0.1:1/z", "--tags", "("], "--tags"),
        (["nosuchfile.yaml", "docker://127.0.0.1:1/z"], "neither docker://"),
        (["docker://127.0.0.1:1/app", "docker://127.0.0.1:1/z:tag"], "prefix takes no tag"),
        (["docker://127.0.0.1:1/app", "docker://127.0.0.1:1/z", "--shard", "5/2"], "0 <= I < N"),
    ]:
        p = zconv("sync", *args)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 64, (args, p.stderr)
        assert len(lines) == 1 and lines[0].startswith("zconv: error: ") and needle in lines[0], (args, p.stderr)


# ---------------------------------------------------------------- with the registry


def test_first_sync_converts_rerun_skips_moved_tag_reconverted(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "app", ["1.0", "1.1", "2.0"])
    p = zconv("sync", f"docker://{host}/app", f"docker://{host}/zstd", "--json")
    assert p.returncode == 0, p.stderr
    recs = records(p)
    assert {r["source"] for r in recs} == {f"docker://{host}/app:{t}" for t in ("1.0", "1.1", "2.0")}
    assert all(r["action"] == "converted" for r in recs), recs
    for r in recs:
        tag = r["source"].rsplit(":", 1)[1]
        assert r["destination"] == f"docker://{host}/zstd/app:{tag}"
        doc, digest = manifest_of(host, "zstd/app", tag)
        assert digest == r["destination_digest"]
        _, src_digest = manifest_of(host, "app", tag)
        assert doc["annotations"][SOURCE_DIGEST_ANNOTATION] == src_digest == r["source_digest"]
        assert all(TOC_KEY in layer["annotations"] for layer in doc["layers"])
    # the shared base layer is converted by the first image only, then reused
    assert sum(r["layers_converted"] for r in recs) == 1 + 1 + 3  # base, the app layer, 3 tops
    assert sum(r["layers_reused"] for r in recs) == 2 * 2
    assert all(r["bytes_uploaded"] > 0 for r in recs)

    again = zconv("sync", f"docker://{host}/app", f"docker://{host}/zstd", "--json")
    assert again.returncode == 0, again.stderr
    recs2 = records(again)
    assert [r["action"] for r in recs2] == ["skipped"] * 3, recs2
    assert all(r["bytes_uploaded"] == 0 and r["reason"].startswith("already converted") for r in recs2)
    assert {r["destination_digest"] for r in recs2} == {r["destination_digest"] for r in recs}
    # rerun: the /v2/ ping, the tag list, then a HEAD (source) and a GET (destination) per tag; no blob request
    assert f"{1 + 1 + 2 * 3} registry request(s)" in again.stderr, again.stderr

    # move 1.1: only it is converted again
    publish(tmp_path, host, "app", ["1.1"], salt="-moved")
    dry = zconv("sync", f"docker://{host}/app", f"docker://{host}/zstd", "--json", "--dry-run")
    assert by_action(records(dry)) == {
        "would-convert": {f"docker://{host}/app:1.1"},
        "skipped": {f"docker://{host}/app:1.0", f"docker://{host}/app:2.0"},
    }
    third = zconv("sync", f"docker://{host}/app", f"docker://{host}/zstd", "--json")
    recs3 = records(third)
    assert by_action(recs3) == {
        "converted": {f"docker://{host}/app:1.1"},
        "skipped": {f"docker://{host}/app:1.0", f"docker://{host}/app:2.0"},
    }
    moved = next(r for r in recs3 if r["action"] == "converted")
    assert "source moved" in moved["reason"]
    # only its new top layer is converted: base and app layer are in the layer memo and in zstd/app
    assert (moved["layers_converted"], moved["layers_reused"]) == (1, 2), moved
    _, new_src = manifest_of(host, "app", "1.1")
    doc, _ = manifest_of(host, "zstd/app", "1.1")
    assert doc["annotations"][SOURCE_DIGEST_ANNOTATION] == new_src == moved["source_digest"]


def test_suffix_in_place_never_takes_outputs_as_sources(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "svc", ["1.2", "1.3"])
    p = zconv("sync", f"docker://{host}/svc", "--suffix", "-zstd", "--json", "--jobs", "2")
    assert p.returncode == 0, p.stderr
    assert {(r["source"], r["destination"], r["action"]) for r in records(p)} == {
        (f"docker://{host}/svc:{t}", f"docker://{host}/svc:{t}-zstd", "converted") for t in ("1.2", "1.3")
    }
    # both images at once, sharing two layers: each distinct layer converted once (one job waits for the other)
    assert sum(r["layers_converted"] for r in records(p)) == 2 + 2, p.stdout
    with RegistryClient(host) as c:
        assert c.list_tags("svc") == ["1.2", "1.2-zstd", "1.3", "1.3-zstd"]
    again = zconv("sync", f"docker://{host}/svc", "--suffix", "-zstd", "--json")
    assert [r["action"] for r in records(again)] == ["skipped", "skipped"]  # the -zstd tags are not sources


def test_dual_in_place_then_rerun_skips(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "dual", ["a", "b"])
    originals = {t: manifest_of(host, "dual", t)[1] for t in ("a", "b")}
    p = zconv("sync", f"docker://{host}/dual", "--dual", "--json")
    assert p.returncode == 0, p.stderr
    for r in records(p):
        tag = r["source"].rsplit(":", 1)[1]
        assert r["action"] == "converted" and r["source_digest"] == originals[tag]
        doc, digest = manifest_of(host, "dual", tag)
        assert digest == r["destination_digest"]
        assert doc["annotations"][SOURCE_DIGEST_ANNOTATION] == originals[tag]
        assert [m["digest"] for m in doc["manifests"]][0] == originals[tag]
        assert doc["manifests"][1]["annotations"]["io.github.containers.compression.zstd"] == "true"
    again = zconv("sync", f"docker://{host}/dual", "--dual", "--json")
    recs = records(again)
    assert [r["action"] for r in recs] == ["skipped", "skipped"], recs
    assert {r["source_digest"] for r in recs} == set(originals.values())


def test_yaml_source_with_regex_and_shards_cover_everything(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "team/a", ["v1", "v2", "dev"])
    publish(tmp_path, host, "team/b", ["v1", "v2"])
    spec = tmp_path / "sync.yaml"
    spec.write_text(
        f"{host}:\n  images:\n    team/a: []\n  images-by-tag-regex:\n    team/b: ^v[0-9]+$\n  tls-verify: false\n"
    )
    everything = zconv("sync", str(spec), f"docker://{host}/mirror", "--dry-run", "--json", "--tags", "^v")
    want = {
        f"docker://{host}/team/a:v1",
        f"docker://{host}/team/a:v2",
        f"docker://{host}/team/b:v1",
        f"docker://{host}/team/b:v2",
    }
    assert by_action(records(everything)) == {"would-convert": want}, everything.stderr
    seen: list[str] = []
    for i in range(3):
        p = zconv("sync", str(spec), f"docker://{host}/mirror", "--json", "--tags", "^v", "--shard", f"{i}/3")
        assert p.returncode == 0, p.stderr
        seen += [r["source"] for r in records(p) if r["action"] == "converted"]
    assert sorted(seen) == sorted(want)  # disjoint (no duplicates) and complete


def test_yaml_source_images_by_semver(reg, tmp_path):
    """images-by-semver as skopeo sync has it: every tag that parses as a version, filtered by the constraint."""
    host = reg.host
    tags = ["v1.0.0", "v1.2.3", "1.3.0-rc1", "2.0.0", "latest"]
    publish(tmp_path, host, "team/sv", tags)

    def source(body: str) -> str:
        spec = tmp_path / "sv.yaml"
        spec.write_text(f"{host}:\n{body}  tls-verify: false\n")
        return str(spec)

    def picked(constraint: str, *extra: str) -> set[str]:
        p = zconv(
            "sync",
            source(f"  images-by-semver:\n    team/sv: '{constraint}'\n"),
            f"docker://{host}/mirror",
            "--dry-run",
            "--json",
            *extra,
        )
        assert p.returncode == 0, p.stderr
        recs = records(p)
        assert {r["action"] for r in recs} <= {"would-convert"}, recs
        return {r["source"].rsplit(":", 1)[1] for r in recs}

    assert picked(">= 1.2.0, < 2") == {"v1.2.3"}  # no prerelease unless the constraint names one
    assert picked(">= 1.2.0-0, < 2") == {"v1.2.3", "1.3.0-rc1"}
    assert picked("1.x || >= 2") == {"v1.0.0", "v1.2.3", "2.0.0"}
    assert picked("*") == {"v1.0.0", "v1.2.3", "2.0.0"}  # "latest" is no version
    assert picked("~1.2") == {"v1.2.3"}
    assert picked("1.0.0 - 1.2.3") == {"v1.0.0", "v1.2.3"}
    assert picked(">= 3") == set()
    assert picked(">= 1.2.0-0, < 2", "--tags", "^v") == {"v1.2.3"}  # --tags narrows further

    # For real, next to a regex on the same repository: the keys add up (as in skopeo).
    spec = source(
        "  images-by-tag-regex:\n    team/sv: ^latest$\n  images-by-semver:\n    team/sv: '>= 1.2.0-0, < 2'\n"
    )
    p = zconv("sync", spec, f"docker://{host}/mirror", "--json")
    assert p.returncode == 0, p.stderr
    want = {f"docker://{host}/team/sv:{t}" for t in ("latest", "v1.2.3", "1.3.0-rc1")}
    assert by_action(records(p)) == {"converted": want}
    with RegistryClient(host) as c:
        assert sorted(c.list_tags("mirror/team/sv")) == sorted(["latest", "v1.2.3", "1.3.0-rc1"])
    for t in ("v1.2.3", "1.3.0-rc1"):
        doc, _ = manifest_of(host, "mirror/team/sv", t)
        assert doc["annotations"][SOURCE_DIGEST_ANNOTATION] == manifest_of(host, "team/sv", t)[1]
    again = zconv("sync", spec, f"docker://{host}/mirror", "--json")
    assert by_action(records(again)) == {"skipped": want}, again.stderr

    # A bad constraint: one line naming the file, the repository and the constraint; nothing done.
    bad = source("  images-by-semver:\n    team/sv: '>= 1.2 <'\n")
    p = zconv("sync", bad, f"docker://{host}/other", "--json")
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        f"zconv: error: {bad}: registry {host}: images-by-semver: team/sv: invalid semantic version constraint "
        "'>= 1.2 <': expected a version after '<'"
    ]
    assert not (reg.storage_dir / "docker" / "registry" / "v2" / "repositories" / "other").exists()


def test_keep_going_past_a_broken_image(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "mixed", ["good1", "good2"])
    broken = tmp_path / "garbage.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(3000))  # gzip magic, then nonsense
    layout = tmp_path / "broken"
    make_image(layout, "bad", [LayerBlob(broken, "application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "0" * 64)])
    push(layout, "bad", f"docker://{host}/mixed:bad")

    stop = zconv("sync", f"docker://{host}/mixed", f"docker://{host}/z", "--json")
    assert stop.returncode == 2, stop.stderr
    assert stop.stderr.strip().splitlines()[-1].startswith("zconv: error: 1 of ")
    assert "Traceback" not in stop.stderr

    p = zconv("sync", f"docker://{host}/mixed", f"docker://{host}/z", "--json", "--keep-going")
    assert p.returncode == 2, p.stderr  # bad input, the exit code of the failure
    recs = {r["source"].rsplit(":", 1)[1]: r for r in records(p)}
    assert recs["bad"]["action"] == "failed" and "layer" in recs["bad"]["reason"]
    assert {recs["good1"]["action"], recs["good2"]["action"]} <= {"converted", "skipped"}
    assert "1 failed" in p.stderr and "zconv: error: 1 of 3 image(s) failed" in p.stderr
    with RegistryClient(host) as c:
        assert c.list_tags("z/mixed") == ["good1", "good2"]  # nothing half-written for bad


def test_killed_run_resumes_without_redoing_anything(reg, tmp_path):
    """SIGKILL in the middle of an image: the rerun skips the finished tags, and of the image it was
    converting, neither recompresses nor uploads the layers that were already converted and uploaded
    (the layer memo in the cache directory remembers them; the registry confirms it holds the blobs)."""
    from support.faultproxy import Fault, FaultProxy

    tags = [f"t{i}" for i in range(6)]
    with FaultProxy(upstream_port=reg.port, stall_seconds=300) as proxy:
        host = proxy.host
        layout = tmp_path / "src-big"
        mid = layer_tar("app-big", 7, files=3)
        for i, tag in enumerate(tags):
            tops = [layer_tar(f"top{k}-{tag}", 2000 + 10 * i + j, files=2, size=5000) for j, k in enumerate("ab")]
            make_image(layout, tag, [BASE, mid, *tops])
            push(layout, tag, f"docker://{host}/big:{tag}")
        # With --jobs 1 the layers go up in order: t0 base, mid, top a, top b; t1 top a, top b; t2 top a;
        # then t2's top b: its upload is held (never forwarded) and the process killed meanwhile.
        hold = proxy.add(Fault("stall", method="PUT", path="^/v2/out/big/blobs/uploads/", after=7))
        cmd = [
            sys.executable,
            "-c",
            "import sys; from converter.cli import main; sys.exit(main())",
            "sync",
            f"docker://{host}/big",
            f"docker://{host}/out",
            "--json",
            "--jobs",
            "1",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            deadline = time.monotonic() + 300
            while hold.applied == 0 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert hold.applied == 1, "the run never reached the upload of t2's second top layer"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            out, err = proc.communicate()
        first = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert [(r["source"], r["action"]) for r in first] == [
            (f"docker://{host}/big:t0", "converted"),
            (f"docker://{host}/big:t1", "converted"),
        ], err
        assert sum(r["layers_converted"] for r in first) == 4 + 2
        blobs_before = registry_blobs(reg)

        p = zconv("sync", f"docker://{host}/big", f"docker://{host}/out", "--json")
        assert p.returncode == 0, p.stderr
        recs = {r["source"].rsplit(":", 1)[1]: r for r in records(p)}
        assert {t for t, r in recs.items() if r["action"] == "skipped"} == {"t0", "t1"}
        assert {t for t, r in recs.items() if r["action"] == "converted"} == set(tags[2:])
        # the in-flight image: base, mid (earlier tags) and top a (converted and uploaded before the kill)
        # come from the memo, present in out/big; only top b, whose upload never landed, is converted
        t2 = recs["t2"]
        assert (t2["layers_converted"], t2["layers_reused"]) == (1, 3), t2
        assert len(t2["blobs_uploaded"]) == 1, t2
        for t in tags[3:]:
            assert (recs[t]["layers_converted"], recs[t]["layers_reused"]) == (2, 2), recs[t]
        reuploaded = {d for r in recs.values() for d in r["blobs_uploaded"]} & blobs_before
        assert not reuploaded, f"uploaded again after the restart: {reuploaded}"
        # every tag is now a complete conversion of its source
        for t in tags:
            doc, _ = manifest_of(host, "out/big", t)
            assert doc["annotations"][SOURCE_DIGEST_ANNOTATION] == manifest_of(host, "big", t)[1]
            assert all(TOC_KEY in layer["annotations"] for layer in doc["layers"])
        # t2's top b was compressed before the kill (its upload was held): its frames come from the
        # frame cache (no other layer converted by the rerun was ever compressed before)
        hits = re.search(r"frames: (\d+) from the cache, (\d+) compressed", p.stderr)
        assert hits and int(hits.group(1)) > 0, p.stderr


def test_layers_shared_across_repositories_are_mounted_not_uploaded(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "r1", ["x"])
    publish(tmp_path, host, "r2", ["x"])
    spec = tmp_path / "s.yaml"
    spec.write_text(f"{host}:\n  images:\n    r1: []\n    r2: []\n")
    p = zconv("sync", str(spec), f"docker://{host}/m", "--json")
    assert p.returncode == 0, p.stderr
    r1, r2 = records(p)
    assert r1["layers_converted"] == 3 and r2["layers_converted"] == 2 and r2["layers_reused"] == 1
    # r1: its config, from the source repository r1; r2: its config and the converted base layer (from m/r1)
    assert (r1["blobs_mounted"], r2["blobs_mounted"]) == (1, 2)
    assert len(r1["blobs_uploaded"]) == 3 and len(r2["blobs_uploaded"]) == 2
    assert not set(r1["blobs_uploaded"]) & set(r2["blobs_uploaded"])


def test_cache_options_memo_across_runs_and_no_cache(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "mc", ["1", "2"])
    src = f"docker://{host}/mc"

    def converted(p: subprocess.CompletedProcess) -> tuple[int, int]:
        assert p.returncode == 0, p.stderr
        recs = records(p)
        assert [r["action"] for r in recs] == ["converted", "converted"], recs
        return sum(r["layers_converted"] for r in recs), sum(r["blobs_mounted"] for r in recs)

    # --no-cache: shared layers still converted once within the run, nothing kept in the cache directory
    unused = {"ZCONV_CACHE_DIR": str(tmp_path / "unused")}
    assert converted(zconv("sync", src, f"docker://{host}/n1", "--json", "--no-cache", env=unused))[0] == 2 + 2
    assert not (tmp_path / "unused").exists()
    # ... and nothing remembered for the next run: converted again
    assert converted(zconv("sync", src, f"docker://{host}/n2", "--json", "--no-cache", env=unused))[0] == 2 + 2
    # --cache-dir: the memo persists; a later run into another prefix converts nothing and mounts the
    # converted layers from the repository the first run put them in (configs from the source)
    cache = tmp_path / "cache"
    assert (
        converted(
            zconv(
                "sync",
                src,
                f"docker://{host}/c1",
                "--json",
                "--cache-dir",
                str(cache),
                "--cache-max-size",
                "64M",
                env=unused,
            )
        )[0]
        == 2 + 2
    )
    assert (cache / "memo.db").exists() and not (tmp_path / "unused").exists()
    again = zconv("sync", src, f"docker://{host}/c2", "--json", "--cache-dir", str(cache))
    converted(again)
    first, second = records(again)
    # 1: its 3 layers mounted from c1/mc, its config from mc; 2: base and app layer already in c2/mc
    assert [(r["layers_converted"], r["layers_reused"], r["blobs_mounted"]) for r in (first, second)] == [
        (0, 3, 3 + 1),
        (0, 3, 1 + 1),
    ], (first, second)
    assert all(r["blobs_uploaded"] == [] and r["bytes_uploaded"] == 0 for r in (first, second))
    doc, _ = manifest_of(host, "c2/mc", "2")
    assert doc["layers"] == manifest_of(host, "c1/mc", "2")[0]["layers"]


def test_source_as_its_own_destination_is_refused_without_dual():
    p = zconv("sync", "docker://127.0.0.1:1/app", "docker://127.0.0.1:1")
    assert p.returncode == 64 and "the destination is the source itself" in p.stderr, p.stderr


def test_keep_going_past_a_missing_repository(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "here", ["1"])
    spec = tmp_path / "s.yaml"
    spec.write_text(f"{host}:\n  images:\n    gone: []\n    here: []\n")
    p = zconv("sync", str(spec), f"docker://{host}/m", "--json", "--keep-going")
    recs = records(p)
    assert p.returncode == 4, p.stderr  # registry error
    assert [(r["source"], r["action"]) for r in recs] == [
        (f"docker://{host}/gone", "failed"),
        (f"docker://{host}/here:1", "converted"),
    ]
    assert "not found" in recs[0]["reason"]


def test_dual_into_a_prefix_is_idempotent_too(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "dp", ["1"])
    src = manifest_of(host, "dp", "1")[1]
    p = zconv("sync", f"docker://{host}/dp", f"docker://{host}/mirror", "--dual", "--json")
    (rec,) = records(p)
    doc, digest = manifest_of(host, "mirror/dp", "1")
    assert rec["action"] == "converted" and rec["destination_digest"] == digest
    assert doc["manifests"][0]["digest"] == src and doc["annotations"][SOURCE_DIGEST_ANNOTATION] == src
    again = zconv("sync", f"docker://{host}/dp", f"docker://{host}/mirror", "--dual", "--json")
    assert [r["action"] for r in records(again)] == ["skipped"]


def test_429_and_5xx_are_retried(reg, tmp_path):
    from support.faultproxy import Fault, FaultProxy

    with FaultProxy(upstream_port=reg.port) as proxy:
        host = proxy.host
        publish(tmp_path, host, "flaky", ["1", "2"])
        faults = [
            proxy.add(Fault("status", method="HEAD", path="/flaky/manifests/", status=503)),
            proxy.add(Fault("status", method="GET", path="/out/flaky/manifests/", status=429, retry_after="1")),
            proxy.add(Fault("status", method="PUT", path="/out/flaky/blobs/uploads/", status=502)),
            proxy.add(Fault("drop_response", method="PUT", path="/out/flaky/manifests/2$")),
        ]
        p = zconv("sync", f"docker://{host}/flaky", f"docker://{host}/out", "--json")
        assert p.returncode == 0, p.stderr
        assert [f.applied for f in faults] == [1, 1, 1, 1]
        assert sorted(r["action"] for r in records(p)) == ["converted", "converted"]
        again = zconv("sync", f"docker://{host}/flaky", f"docker://{host}/out", "--json")
        assert [r["action"] for r in records(again)] == ["skipped", "skipped"]


def test_yaml_source_errors_name_the_file_and_the_problem(tmp_path):
    from converter.errors import BadInputError
    from converter.image.model import TransportOptions
    from converter.sync import load_yaml

    cases = {
        "reg.example:\n  images-by-digest:\n    app: x\n": "unsupported key(s) images-by-digest (allowed: images, "
        "images-by-tag-regex, images-by-semver, credentials, tls-verify, cert-dir)",
        "reg.example:\n  images-by-semver:\n    app: '>= 1.x.y'\n": "images-by-semver: app: invalid semantic "
        "version constraint '>= 1.x.y': unexpected '.y' after '>= 1.x'",
        "reg.example:\n  images-by-semver:\n    app: ''\n": "images-by-semver: app: invalid semantic version "
        "constraint '': empty constraint",
        "reg.example:\n  images-by-semver:\n    app: 1.10\n": "images-by-semver: app: expected a semantic version "
        'constraint (quote it: ">= 1.10")',
        "reg.example:\n  images-by-semver:\n    app:\n": "images-by-semver: app: expected a semantic version constraint",
        "reg.example:\n  images-by-semver:\n    Web: '1.x'\n": "invalid repository component 'Web'",
        "reg.example:\n  images-by-semver: ['1.x']\n": "images-by-semver map repositories to tags",
        "reg.example:\n  images:\n    app: [1.10]\n": 'quote tags like "1.10"',
        "reg.example:\n  images-by-tag-regex:\n    app: '('\n": "invalid regular expression",
        "reg.example:\n  images:\n    App: []\n": "invalid repository component 'App'",
        "reg.example:\n  images:\n    app: ['sha256:abc']\n": "not a tag",
        "reg.example: [\n": "not valid YAML",
        "- just\n- a list\n": "expected a mapping",
    }
    for i, (text, needle) in enumerate(cases.items()):
        f = tmp_path / f"c{i}.yaml"
        f.write_text(text)
        with pytest.raises((BadInputError, UsageError)) as e:
            load_yaml(str(f), TransportOptions())
        assert needle in e.value.message and str(f) in e.value.message, (text, e.value.message)
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        'reg.example:\n  images:\n    app: ["1.10", 2]\n    all: []\n'
        "  images-by-tag-regex:\n    api: ^v\n  credentials: {username: u, password: p}\n"
        "  images-by-semver:\n    web: '>= 1.2, < 2'\n    api: 3\n"
    )
    specs = load_yaml(str(ok), TransportOptions(), "x$")
    assert [(s.repository, s.tags, s.regexes, s.options.creds, s.semver and s.semver.text) for s in specs] == [
        ("app", ("1.10", "2"), ("x$",), "u:p", None),
        ("all", None, ("x$",), "u:p", None),
        ("api", None, ("^v", "x$"), "u:p", None),
        ("web", None, ("x$",), "u:p", ">= 1.2, < 2"),
        ("api", None, ("x$",), "u:p", "3"),  # as in skopeo, a repository under several keys gets each one's tags
    ]


def test_text_output_counts_and_summarises(reg, tmp_path):
    host = reg.host
    publish(tmp_path, host, "txt", ["a", "b"])
    p = zconv("sync", f"docker://{host}/txt", f"docker://{host}/t", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        f"[1/2] docker://{host}/txt:a -> docker://{host}/t/txt:a: would convert (not converted yet)",
        f"[2/2] docker://{host}/txt:b -> docker://{host}/t/txt:b: would convert (not converted yet)",
    ]
    assert "2 tag(s): 2 would-convert, 0 skipped, 0 failed" in p.stderr


def test_multi_platform_index_prefix_and_dual_in_place(reg, tmp_path):
    """A Docker manifest list: converted as an index; in place, the dual index keeps both encodings."""
    sys.path.insert(0, str(ROOT / "testdata"))
    import make_sample as ms

    shared = ms.sample_layers()[0]
    amd = ms.make_image([shared, ms.sample_layers()[2]], "amd64", docker=True)
    arm = ms.make_image([shared], "arm64", docker=True)
    index = ms.make_index([amd, arm], docker=True)
    src = tmp_path / "src"
    ms.write_layout(str(src), [*amd.blobs(), *arm.blobs(), index], [("multi", index)])
    host = reg.host
    push(src, "multi", f"docker://{host}/plat:multi")
    assert manifest_of(host, "plat", "multi")[1] == index.digest

    p = zconv("sync", f"docker://{host}/plat", f"docker://{host}/z", "--json")
    (rec,) = records(p)
    assert rec["action"] == "converted" and rec["source_digest"] == index.digest
    assert rec["layers_converted"] == 2 and rec["layers_reused"] == 1  # the shared layer once
    doc, _ = manifest_of(host, "z/plat", "multi")
    assert doc["annotations"][SOURCE_DIGEST_ANNOTATION] == index.digest
    assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["amd64", "arm64"]
    for m in doc["manifests"]:  # each converted child names its own source manifest
        child, _ = manifest_of(host, "z/plat", m["digest"])
        assert child["annotations"][SOURCE_DIGEST_ANNOTATION] in {amd.manifest.digest, arm.manifest.digest}

    again = zconv("sync", f"docker://{host}/plat", f"docker://{host}/z", "--json")
    assert [r["action"] for r in records(again)] == ["skipped"], again.stdout

    d = zconv("sync", f"docker://{host}/plat", "--dual", "--json")
    (rec,) = records(d)
    assert rec["action"] == "converted", d.stderr
    dual, _ = manifest_of(host, "plat", "multi")
    assert dual["annotations"][SOURCE_DIGEST_ANNOTATION] == index.digest
    assert {m["digest"] for m in dual["manifests"][:2]} == {amd.manifest.digest, arm.manifest.digest}
    again = zconv("sync", f"docker://{host}/plat", "--dual", "--json")
    assert [r["action"] for r in records(again)] == ["skipped"], again.stdout
