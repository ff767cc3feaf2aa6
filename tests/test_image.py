"""zconv as a container image, run the way a pipeline runs it.

`make image` builds the top-level Containerfile with podman into a private
store, with no image registry: the base is a Debian root filesystem with
python3 made by debootstrap (tests/support/corpus.py) and `podman import`ed;
the Python packages are wheels built on the host. Then `podman run --rm -v`
converts a layout and pushes to the local registry from inside the container
(the registry listens on the host's 127.0.0.1, hence --network host).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from converter.convert import convert_refs
from converter.image.refs import open_source
from support.corpus import debian_rootfs_tar
from support.podstore import RUNC, make_store

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "testdata" / "sample"
IMAGE = "localhost/zconv:test"
BASE = "localhost/zconv-test-base:py3"

pytestmark = pytest.mark.slow
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


@pytest.fixture(scope="module")
def zconv_image(tmp_path_factory):
    work = tmp_path_factory.mktemp("image")
    st = make_store(work / "store", "overlay")
    st.podman("import", str(debian_rootfs_tar(("python3",))), BASE)
    podman = f"{shutil.which('podman')} --runtime {RUNC} --cgroup-manager=cgroupfs --events-backend=none"
    p = subprocess.run(
        ["make", "-C", str(ROOT), "image", f"IMAGE={IMAGE}", f"IMAGE_BASE={BASE}", f"PODMAN={podman}"],
        env=st.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    info = json.loads(st.podman("image", "inspect", IMAGE).stdout)[0]
    size = int(info["Size"])
    print(f"\nzconv image {IMAGE}: {size} bytes ({size / (1 << 20):.1f} MiB) on base {BASE}")
    (work / "image-size.txt").write_text(str(size))
    return {"st": st, "info": info, "size": size, "work": work}


def _run(st, *args: str, volumes: dict[Path, str] | None = None) -> subprocess.CompletedProcess:
    vol = [a for host, inside in (volumes or {}).items() for a in ("-v", f"{host}:{inside}")]
    # explicit limits: this sandbox refuses the open-files/process limits podman sets by default
    return st.podman("run", "--rm", *LIMITS, "--network", "host", *vol, IMAGE, *args, check=False)


def test_image_shape(zconv_image):
    cfg = zconv_image["info"]["Config"]
    assert cfg["Entrypoint"] == ["zconv"]
    assert cfg["User"] not in ("", "0", "root", "0:0")
    # multi-stage: no pip, wheels or sources in the runtime image
    p = zconv_image["st"].podman(
        "run",
        "--rm",
        *LIMITS,
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        "ls /wheels /src 2>/dev/null; id -u; python3 -c 'import converter.chunked._rollsum'",
        check=False,
    )
    assert p.returncode == 0 and p.stdout.split() == ["10001"], p.stdout + p.stderr


def test_container_converts_a_mounted_layout_and_pushes_to_the_registry(zconv_image, registry, tmp_path):
    st = zconv_image["st"]
    src = tmp_path / "in"
    shutil.copytree(SAMPLE, src)
    out = tmp_path / "out"
    out.mkdir()
    for d in (tmp_path, src, out):
        os.chmod(d, 0o777)  # the container runs as a non-root user
    ref = f"docker://{registry.host}/from-container:v1"
    p = _run(st, "convert", "oci:/in:v1", ref, volumes={src: "/in:ro"})
    assert p.returncode == 0, p.stderr
    # a layout destination stages next to itself, so it goes in a subdirectory of the mount
    p2 = _run(st, "convert", "oci:/in:v1", "oci:/out/img:v1", volumes={src: "/in:ro", out: "/out"})
    assert p2.returncode == 0, p2.stderr
    # the same image the host's zconv makes, in the layout and in the registry
    host = convert_refs(f"oci:{SAMPLE}:v1", f"oci:{tmp_path / 'host'}:v1")
    with open_source(ref) as reg:
        ((_, desc),) = reg.targets()
    index = json.loads((out / "img" / "index.json").read_text())
    assert desc.digest == host.images[0].digest == index["manifests"][0]["digest"]
    # a bad reference is one line and a non-zero exit, inside the container too
    bad = _run(st, "convert", "oci:/nonexistent:v1", "oci:/tmp/x")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
