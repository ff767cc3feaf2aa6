#!/usr/bin/env python3
"""Build the small sample image in testdata/sample (OCI layout, tag "v1").

Deterministic: fixed seeds, mtimes, owners and gzip headers, so running it
again gives the same blobs (with the same zlib). Also a library for tests,
which build other images (multi-platform, Docker schema 2, archives) from
the same pieces without going through zconv's own image code.

    python3 testdata/make_sample.py [OUTDIR]     (default: testdata/sample)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile
from dataclasses import dataclass
from typing import Iterable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MTIME = 1_700_000_000


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------- layer tars


@dataclass
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink, hardlink
    data: bytes = b""
    target: str = ""
    mode: int = 0o644


def make_tar(entries: Iterable[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.mtime = MTIME
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mode = e.mode
            if e.kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            elif e.kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e.target
                ti.mode = 0o777
                tf.addfile(ti)
            elif e.kind == "hardlink":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e.target
                tf.addfile(ti)
            else:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
    return buf.getvalue()


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=level, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def text_blob(rng: random.Random, size: int) -> bytes:
    words = [b"layer", b"chunk", b"zstd", b"image", b"registry", b"manifest", b"podman", b"tar", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def sample_layers(seed: int = 1) -> list[bytes]:
    """Uncompressed layer tars of the sample image."""
    rng = random.Random(seed)
    base = [
        Entry("bin", "dir"),
        Entry("etc", "dir"),
        Entry("usr", "dir"),
        Entry("usr/share", "dir"),
        Entry("etc/os-release", data=b'NAME="zconv sample"\nID=zconv\n'),
        Entry("etc/hostname", data=b"sample\n"),
        Entry("etc/empty.conf", data=b""),
        Entry("bin/tool", data=rng.randbytes(9000), mode=0o755),
        Entry("bin/sh", "symlink", target="tool"),
        Entry("usr/share/words.txt", data=text_blob(rng, 40_000)),
    ]
    # A file with zero runs (holes) of several lengths and random data between
    # them, big enough for several content-defined chunks.
    holes = (
        rng.randbytes(70_000) + bytes(4096) + rng.randbytes(1000) + bytes(1023) + rng.randbytes(60_000) + bytes(2000)
    )
    app = [
        Entry("opt", "dir"),
        Entry("opt/app", "dir"),
        Entry("opt/app/data.bin", data=holes),
        Entry("opt/app/README", data=b"sample application\n" * 40),
        Entry("opt/app/README.link", "hardlink", target="opt/app/README"),
    ]
    config = [
        Entry("etc", "dir"),
        Entry("etc/app.conf", data=b"level=3\nthreads=2\n"),
        Entry("etc/.wh.hostname", data=b""),  # whiteout: deletes etc/hostname
        Entry("var", "dir"),
        Entry("var/log", "dir"),
        Entry("var/log/empty", data=b""),
    ]
    return [make_tar(base), make_tar(app), make_tar(config)]


# ---------------------------------------------------------------- images


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: object) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        d.update(extra)  # type: ignore[arg-type]
        return d


def make_config(tars: list[bytes], arch: str = "amd64", docker: bool = False, variant: str | None = None) -> Blob:
    cfg: dict = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(tars))],
    }
    if variant:
        cfg["variant"] = variant
    return Blob(DOCKER_CONFIG if docker else OCI_CONFIG, dumps(cfg))


@dataclass
class Image:
    manifest: Blob
    config: Blob
    layers: list[Blob]
    tars: list[bytes]

    def blobs(self) -> list[Blob]:
        return [self.manifest, self.config, *self.layers]


def make_image(
    tars: list[bytes], arch: str = "amd64", docker: bool = False, compress: bool = True, variant: str | None = None
) -> Image:
    config = make_config(tars, arch, docker, variant)
    if docker:
        lmt = DOCKER_LAYER_GZIP
    else:
        lmt = OCI_LAYER_GZIP if compress else OCI_LAYER_TAR
    layers = [Blob(lmt, gzip_bytes(t) if compress else t) for t in tars]
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return Image(Blob(DOCKER_MANIFEST if docker else OCI_MANIFEST, dumps(manifest)), config, layers, tars)


def make_index(images: list[Image], docker: bool = False) -> Blob:
    entries = []
    for img in images:
        cfg = json.loads(img.config.data)
        plat = {"architecture": cfg["architecture"], "os": cfg["os"]}
        if cfg.get("variant"):
            plat["variant"] = cfg["variant"]
        entries.append(img.manifest.descriptor(platform=plat))
    mt = DOCKER_LIST if docker else OCI_INDEX
    return Blob(mt, dumps({"schemaVersion": 2, "mediaType": mt, "manifests": entries}))


def write_layout(path: str, blobs: Iterable[Blob], tags: list[tuple[str | None, Blob]]) -> None:
    """Write an OCI layout: blobs, oci-layout, and index.json entries for `tags`."""
    os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
    for b in blobs:
        with open(os.path.join(path, "blobs", "sha256", b.digest.split(":")[1]), "wb") as f:
            f.write(b.data)
    with open(os.path.join(path, "oci-layout"), "wb") as f:
        f.write(b'{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for tag, b in tags:
        d = b.descriptor()
        if tag is not None:
            d["annotations"] = {"org.opencontainers.image.ref.name": tag}
        entries.append(d)
    with open(os.path.join(path, "index.json"), "wb") as f:
        f.write(dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))


def write_docker_archive(path: str, images: list[tuple[Image, list[str]]]) -> None:
    """A `docker save`-style archive: manifest.json, <hex>.json configs, <hex>/layer.tar layers."""
    members: dict[str, bytes] = {}
    manifest = []
    for img, repo_tags in images:
        cfg_name = img.config.digest.split(":")[1] + ".json"
        members[cfg_name] = img.config.data
        layer_names = []
        for t in img.tars:
            name = hashlib.sha256(b"v1id" + t).hexdigest() + "/layer.tar"
            members[name] = t
            layer_names.append(name)
        manifest.append({"Config": cfg_name, "RepoTags": repo_tags, "Layers": layer_names})
    members["manifest.json"] = dumps(manifest)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(members):
            if "/" in name:
                d = name.split("/")[0]
                if d + "/" not in tf.getnames() and d not in tf.getnames():
                    ti = tarfile.TarInfo(d)
                    ti.type = tarfile.DIRTYPE
                    ti.mode = 0o755
                    ti.mtime = MTIME
                    tf.addfile(ti)
            ti = tarfile.TarInfo(name)
            ti.size = len(members[name])
            ti.mtime = MTIME
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(members[name]))


def sample_image() -> Image:
    return make_image(sample_layers())


def main(argv: list[str]) -> int:
    out = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")
    img = sample_image()
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_layout(tmp, img.blobs(), [("v1", img.manifest)])
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    total = sum(len(b.data) for b in img.blobs())
    print(f"wrote {out}: {len(img.layers)} gzip layers, {total} bytes, manifest {img.manifest.digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
