"""docker-archive inputs (docker save / podman save) and real podman-built archives."""

from __future__ import annotations

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
from converter.image.dockerarchive import DockerArchiveSource  # noqa: E402
from converter.image.refs import open_sink  # noqa: E402

OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def only_manifest(layout: Path) -> tuple[dict, dict]:
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    return entry, json.loads(blob(layout, entry["digest"]))


def zstd_d(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-dc"], input=data, stdout=subprocess.PIPE, check=True).stdout


def check_layers_match_config(layout: Path, manifest: dict) -> None:
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(manifest["layers"])
    for layer, diff_id in zip(manifest["layers"], diff_ids):
        assert layer["mediaType"] == OCI_ZSTD
        assert ms.sha256(zstd_d(blob(layout, layer["digest"]))) == diff_id


def test_docker_archive_from_python_tarfile(tmp_path):
    img = ms.make_image(ms.sample_layers(), docker=True)
    archive = tmp_path / "img.tar"
    ms.write_docker_archive(str(archive), [(img, ["example.com/app:1.0"])])
    out = tmp_path / "out"
    report = convert_refs(f"docker-archive:{archive}", f"oci:{out}")
    entry, manifest = only_manifest(out)
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1.0"
    assert blob(out, manifest["config"]["digest"]) == img.config.data
    check_layers_match_config(out, manifest)
    assert [r.old_media_type for r in report.layers] == ["application/vnd.docker.image.rootfs.diff.tar"] * 3


def test_docker_archive_rebuilt_by_gnu_tar_and_selected_by_name(tmp_path):
    a = ms.make_image(ms.sample_layers()[:2], docker=True)
    b = ms.make_image(ms.sample_layers()[1:], docker=True)
    made = tmp_path / "made.tar"
    ms.write_docker_archive(str(made), [(a, ["app:a"]), (b, ["docker.io/library/app:b"])])
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["tar", "-C", str(tree), "-xf", str(made)], check=True)
    archive = tmp_path / "gnu.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(archive), "--format=gnu", "."], check=True)

    src = DockerArchiveSource(str(archive))
    assert src.list_tags() == ["app:a", "docker.io/library/app:b"]
    for name, img in (("app:b", b), ("docker.io/library/app:a", a), ("@0", a)):
        out = tmp_path / f"out-{name.replace('/', '_').replace(':', '_').replace('@', '_')}"
        convert_refs(f"docker-archive:{archive}:{name}", f"oci:{out}")
        _, manifest = only_manifest(out)
        assert manifest["config"]["digest"] == img.config.digest
        check_layers_match_config(out, manifest)
    with pytest.raises(BadInputError, match="no image 'app:c'"):
        DockerArchiveSource(str(archive)).resolve("app:c")
    # without a name: both images, tagged with their tags
    out = tmp_path / "both"
    report = convert_refs(f"docker-archive:{archive}", f"oci:{out}")
    assert [i.tag for i in report.images] == ["a", "b"]
    # the layer both images share was converted once
    assert [r.action for r in report.layers].count("reused") == 1


def test_docker_archive_with_gzip_layers_and_symlinked_duplicates(tmp_path):
    tars = ms.sample_layers()
    config = ms.make_config(tars[:2])
    gz = ms.gzip_bytes(tars[0])
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tf:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, __import__("io").BytesIO(data))

        add("cfg.json", config.data)
        add("l0.tar.gz", gz)
        add("l1.tar", tars[1])
        link = tarfile.TarInfo("dir/layer.tar")
        link.type = tarfile.SYMTYPE
        link.linkname = "../l1.tar"
        tf.addfile(link)
        add(
            "manifest.json",
            ms.dumps([{"Config": "cfg.json", "RepoTags": None, "Layers": ["l0.tar.gz", "dir/layer.tar"]}]),
        )
    out = tmp_path / "out"
    report = convert_refs(f"docker-archive:{archive}", f"oci:{out}")
    assert report.layers[0].old_media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    entry, manifest = only_manifest(out)
    assert "annotations" not in entry  # no RepoTags: an untagged entry
    check_layers_match_config(out, manifest)


def test_docker_archive_bad_inputs(tmp_path):
    img = ms.make_image(ms.sample_layers(), docker=True)
    good = tmp_path / "good.tar"
    ms.write_docker_archive(str(good), [(img, ["app:1"])])
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["tar", "-C", str(tree), "-xf", str(good)], check=True)

    no_manifest = tmp_path / "nomanifest.tar"
    os.rename(tree / "manifest.json", tmp_path / "manifest.json")
    subprocess.run(["tar", "-C", str(tree), "-cf", str(no_manifest), "."], check=True)
    with pytest.raises(BadInputError, match="manifest.json' is missing"):
        convert_refs(f"docker-archive:{no_manifest}", f"oci:{tmp_path / 'o1'}")

    os.rename(tmp_path / "manifest.json", tree / "manifest.json")
    layer_file = next(tree.rglob("layer.tar"))
    layer_file.write_bytes(layer_file.read_bytes()[:-1024] + b"\x01" * 1024)  # content no longer matches diff_id
    changed = tmp_path / "changed.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(changed), "."], check=True)
    with pytest.raises(BadInputError, match="diff_id|layer"):
        convert_refs(f"docker-archive:{changed}", f"oci:{tmp_path / 'o2'}")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_docker_archive_is_not_a_destination(tmp_path):
    with pytest.raises(UsageError, match="cannot be a destination"):
        open_sink(f"docker-archive:{tmp_path / 'x.tar'}")


# ------------------------------------------------------------------ real podman


def _podman_cmd(tmp: Path) -> list[str]:
    exe = shutil.which("podman")
    runc = "/usr/sbin/runc"
    if exe is None or not os.path.exists(runc):
        pytest.fail("podman and runc are needed (Debian packages podman, runc; installed by .ci/sysdeps)")
    return [
        exe,
        "--root",
        str(tmp / "root"),
        "--runroot",
        str(tmp / "runroot"),
        "--storage-driver",
        "vfs",
        "--runtime",
        runc,
        "--cgroup-manager=cgroupfs",
        "--events-backend=none",
    ]


@pytest.fixture(scope="module")
def podman_archives(tmp_path_factory):
    """A base from `podman import` of a rootfs tar, an app built on it, saved in both archive formats."""
    tmp = tmp_path_factory.mktemp("podman")
    podman = _podman_cmd(tmp)
    rootfs = tmp / "rootfs.tar"
    rootfs.write_bytes(ms.sample_layers()[0])
    subprocess.run([*podman, "import", str(rootfs), "localhost/zconv-base:1"], check=True, capture_output=True)
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "app.txt").write_bytes(ms.text_blob(__import__("random").Random(5), 150_000))
    (ctx / "Containerfile").write_text("FROM localhost/zconv-base:1\nCOPY app.txt /opt/app.txt\nENV APP=1\n")
    subprocess.run(
        [*podman, "build", "--network=none", "-t", "localhost/zconv-app:1", str(ctx)], check=True, capture_output=True
    )
    oci = tmp / "app-oci.tar"
    docker = tmp / "app-docker.tar"
    subprocess.run(
        [*podman, "save", "--format", "oci-archive", "-o", str(oci), "localhost/zconv-app:1"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*podman, "save", "--format", "docker-archive", "-o", str(docker), "localhost/zconv-app:1"],
        check=True,
        capture_output=True,
    )
    inspect = subprocess.run(
        [*podman, "image", "inspect", "localhost/zconv-app:1"], check=True, capture_output=True, text=True
    ).stdout
    return {"podman": podman, "oci": oci, "docker": docker, "id": json.loads(inspect)[0]["Id"], "tmp": tmp}


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_podman_saved_archive_converts_and_podman_loads_it_back(tmp_path, podman_archives, kind):
    transport = "oci-archive" if kind == "oci" else "docker-archive"
    out = tmp_path / "out.tar"
    report = convert_refs(f"{transport}:{podman_archives[kind]}", f"oci-archive:{out}:zstd")
    assert len(report.layers) == 2 and all(r.chunked for r in report.layers)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-C", str(unpacked), "-xf", str(out)], check=True)
    _, manifest = only_manifest(unpacked)
    check_layers_match_config(unpacked, manifest)
    # podman reads the converted archive, and the image ID (config digest) did not change
    podman = podman_archives["podman"]
    subprocess.run([*podman, "pull", f"oci-archive:{out}"], check=True, capture_output=True)
    images = subprocess.run(
        [*podman, "images", "--format", "{{.ID}}", "--no-trunc"], check=True, capture_output=True, text=True
    ).stdout.split()
    assert (
        podman_archives["id"] in [i.removeprefix("sha256:") for i in images]
        or "sha256:" + podman_archives["id"] in images
    )
    assert manifest["config"]["digest"].split(":")[1] == podman_archives["id"].removeprefix("sha256:")


def test_docker_25_archive_reads_as_docker_archive_and_as_oci_archive(tmp_path):
    """docker save >= 25 writes an OCI layout plus manifest.json pointing into blobs/."""
    img = ms.make_image(ms.sample_layers(), compress=False)
    tree = tmp_path / "tree"
    ms.write_layout(str(tree), img.blobs(), [("docker.io/library/app:1", img.manifest)])
    blobs = [f"blobs/sha256/{b.digest.split(':')[1]}" for b in img.layers]
    (tree / "manifest.json").write_bytes(
        ms.dumps(
            [
                {
                    "Config": f"blobs/sha256/{img.config.digest.split(':')[1]}",
                    "RepoTags": ["app:1"],
                    "Layers": blobs,
                }
            ]
        )
    )
    archive = tmp_path / "docker25.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(archive), "."], check=True)
    as_docker = convert_refs(f"docker-archive:{archive}:app:1", f"oci:{tmp_path / 'd'}:x")
    as_oci = convert_refs(f"oci-archive:{archive}:1", f"oci:{tmp_path / 'o'}:x")
    assert [r.new_digest for r in as_docker.layers] == [r.new_digest for r in as_oci.layers]
    _, manifest = only_manifest(tmp_path / "d")
    check_layers_match_config(tmp_path / "d", manifest)
