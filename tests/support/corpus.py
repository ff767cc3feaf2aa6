"""Test corpora for the interop suite: layer tars and OCI layout images.

- ``debian_rootfs_tar(extra_packages=())``: a Debian bookworm root filesystem
  made by debootstrap (--variant=minbase, same mirror as the machine's apt
  sources), turned into a layer tar by GNU tar (sorted names, numeric owners,
  xattrs). Cached under /var/tmp/zconv-corpus (override: ZCONV_CORPUS_DIR),
  keyed by the parameters, so only the first run pays for debootstrap.
- ``edge_case_tars(dir)``: small tars with the format's odd corners, from
  tests/support/tarcases.py (the writer's tests), plus our own made with
  GNU tar and Python's tarfile.
- ``write_oci_image(layout, tag, layers)``: wrap layer tars (gzip-compressed)
  or ready-made layer blobs into an OCI image layout with a correct config.

Everything here raises on failure (with the command and its output): the
interop suite must fail loudly when a tool or the mirror is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CORPUS_DIR = Path(os.environ.get("ZCONV_CORPUS_DIR", "/var/tmp/zconv-corpus"))
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# v2 of the realistic pair: v1 plus these (small, common, pulls in shared libs).
EXTRA_PACKAGES = ("less", "procps", "curl", "ca-certificates")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


class CorpusError(RuntimeError):
    pass


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise CorpusError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@contextlib.contextmanager
def _locked(path: Path):
    """Serialise builders of the same corpus item (other test runs share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------
# Debian root filesystems


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 sources), for debootstrap."""
    src = Path("/etc/apt/sources.list.d/debian.sources")
    if src.exists():
        uris, suites = None, None
        for block in src.read_text().split("\n\n"):
            for line in block.splitlines():
                if line.startswith("URIs:"):
                    uris = line.split(":", 1)[1].split()
                elif line.startswith("Suites:"):
                    suites = line.split(":", 1)[1].split()
            if uris and suites and SUITE in suites:
                return uris[0]
            uris = suites = None
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    return DEFAULT_MIRROR


def tar_directory(root: Path, out: Path) -> Path:
    """Layer tar of `root` with GNU tar: sorted, numeric owners, xattrs, PAX format.

    Entry names are relative ("etc/passwd", no "./"), as in image layers.
    """
    names = sorted(os.listdir(root))
    tmp = out.with_name(out.name + ".tmp")
    _run(
        [
            "tar",
            "--create",
            "--file",
            str(tmp),
            "--directory",
            str(root),
            "--sort=name",
            "--numeric-owner",
            "--format=posix",
            "--pax-option=delete=atime,delete=ctime",
            "--xattrs",
            "--xattrs-include=*",
            "--",
            *names,
        ]
    )
    tmp.rename(out)
    return out


def debian_rootfs_tar(extra_packages: tuple[str, ...] = ()) -> Path:
    """Cached layer tar of a bookworm minbase rootfs (+ extra packages)."""
    if shutil.which("debootstrap") is None:
        raise CorpusError("debootstrap not found (Debian package debootstrap; run .ci/sysdeps)")
    if os.geteuid() != 0:
        raise CorpusError("debootstrap needs root to build the Debian corpus")
    mirror = debian_mirror()
    key = hashlib.sha256(json.dumps([SUITE, "minbase", sorted(extra_packages), mirror]).encode()).hexdigest()[:16]
    label = "minbase" + ("+" + "+".join(sorted(extra_packages)) if extra_packages else "")
    out = CORPUS_DIR / f"debian-{SUITE}-{label}-{key}.tar"
    if out.exists():
        return out
    with _locked(CORPUS_DIR / f".{out.name}.lock"):
        if out.exists():
            return out
        debs = CORPUS_DIR / "debs"  # shared .deb cache: the second rootfs downloads little
        debs.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CORPUS_DIR))
        try:
            cmd = ["debootstrap", "--variant=minbase", f"--cache-dir={debs}"]
            if extra_packages:
                cmd.append("--include=" + ",".join(extra_packages))
            cmd += [SUITE, str(work / "root"), mirror]
            _run(cmd, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            root = work / "root"
            # Not part of an image: apt lists and the debootstrap leftovers.
            for sub in ("var/lib/apt/lists", "var/cache/apt/archives"):
                p = root / sub
                if p.is_dir():
                    for child in p.iterdir():
                        if child.is_file() and child.name not in ("lock",):
                            child.unlink()
            tar_directory(root, out)
        finally:
            _run(["rm", "-rf", "--one-file-system", str(work)])
    return out


# ---------------------------------------------------------------------------
# Edge-case tars


def _gnu_tar_case(tmp: Path) -> bytes:
    """A tree with the odd corners, archived by GNU tar (GNU format: long names via 'L')."""
    root = tmp / "gnu"
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "dir" / "sub").mkdir(parents=True)
    long_dir = root / ("d" * 120) / ("e" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 150)).write_bytes(b"long name payload\n" * 10)
    big = os.urandom(300_000) + b"\0" * 5000 + os.urandom(100_000)  # chunks and a hole
    (root / "dir" / "big.bin").write_bytes(big)
    (root / "dir" / "sub" / "hello.txt").write_text("hello\n")
    os.link(root / "dir" / "sub" / "hello.txt", root / "hardlink-to-hello")
    os.symlink("dir/sub/hello.txt", root / "symlink")
    os.symlink("/nonexistent/absolute/target", root / "dangling")
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o755)
    (root / "setuid").write_bytes(b"x")
    os.chmod(root / "setuid", 0o4755)
    os.chown(root / "dir" / "sub" / "hello.txt", 1234, 5678)
    with contextlib.suppress(OSError):
        os.setxattr(root / "dir" / "big.bin", "user.comment", b"zconv \xff binary")
    with contextlib.suppress(OSError):
        os.mkfifo(root / "fifo")
    with contextlib.suppress(OSError):
        os.mknod(root / "null", 0o20666, os.makedev(1, 3))
    out = tmp / "gnu.tar"
    _run(
        [
            "tar",
            "--create",
            "--file",
            str(out),
            "--directory",
            str(root),
            "--sort=name",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--",
            *sorted(os.listdir(root)),
        ]
    )
    return out.read_bytes()


def _tarfile_case() -> bytes:
    """PAX archive by Python's tarfile: long names/links, xattrs, times, devices."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(ti: tarfile.TarInfo, data: bytes | None = None) -> None:
            ti.mtime = ti.mtime or 1_700_000_000
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)

        d = tarfile.TarInfo("usr")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        add(d)
        f = tarfile.TarInfo("usr/" + "x" * 200 + ".txt")
        f.mode, f.uid, f.gid, f.uname, f.gname = 0o640, 1000, 1000, "u", "g"
        f.pax_headers = {"SCHILY.xattr.user.mime": "text/plain", "mtime": "1700000000.5"}
        add(f, b"pax long name\n" * 100)
        z = tarfile.TarInfo("usr/zeros.bin")
        add(z, b"\0" * 70_000)
        e = tarfile.TarInfo("usr/empty")
        add(e, b"")
        sym = tarfile.TarInfo("usr/link-" + "y" * 120)
        sym.type, sym.linkname = tarfile.SYMTYPE, "../" + "z" * 150
        add(sym)
        h = tarfile.TarInfo("usr/hard")
        h.type, h.linkname = tarfile.LNKTYPE, "usr/" + "x" * 200 + ".txt"
        add(h)
        c = tarfile.TarInfo("usr/tty")
        c.type, c.devmajor, c.devminor, c.mode = tarfile.CHRTYPE, 5, 0, 0o620
        add(c)
        u = tarfile.TarInfo("usr/\u00fcnicode-\u00e9.txt")
        add(u, b"utf-8 name\n")
    return buf.getvalue()


OWN_CASES = ("gnu-tar-tree", "python-pax")


def _writer_cases() -> dict[str, bytes]:
    """The writer's edge-case tars (tests/support/tarcases.py, all_cases())."""
    from support import tarcases

    return {f"tarcases-{name}": data for name, data in tarcases.all_cases().items()}


def edge_case_names() -> list[str]:
    return sorted([*_writer_cases(), *OWN_CASES])


def edge_case_tars(tmp: Path) -> dict[str, bytes]:
    """name -> tar bytes: the writer's cases (tests/support/tarcases.py), plus ours."""
    cases = _writer_cases()
    tmp.mkdir(parents=True, exist_ok=True)
    cases["gnu-tar-tree"] = _gnu_tar_case(tmp)
    cases["python-pax"] = _tarfile_case()
    return cases


# ---------------------------------------------------------------------------
# OCI layouts


@dataclass
class LayerBlob:
    """A ready-made layer blob for write_oci_image (e.g. a zstd:chunked conversion)."""

    path: Path
    media_type: str
    diff_id: str
    annotations: dict[str, str] = field(default_factory=dict)


def _write_blob(layout: Path, data_or_path: bytes | Path) -> tuple[str, int]:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    if isinstance(data_or_path, bytes):
        digest = "sha256:" + hashlib.sha256(data_or_path).hexdigest()
        dst = blobs / digest[7:]
        if not dst.exists():
            tmp = dst.with_name(dst.name + ".tmp")
            tmp.write_bytes(data_or_path)
            tmp.rename(dst)
        return digest, len(data_or_path)
    digest = sha256_file(data_or_path)
    dst = blobs / digest[7:]
    if not dst.exists():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(data_or_path, tmp)
        tmp.rename(dst)
    return digest, dst.stat().st_size


def gzip_layer(tar_path: Path, out: Path) -> Path:
    """Deterministic gzip of a layer tar (mtime 0, no name)."""
    tmp = out.with_name(out.name + ".tmp")
    with open(tar_path, "rb") as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
    tmp.rename(out)
    return out


def write_oci_image(
    layout: str | os.PathLike,
    tag: str,
    layers: list[Path | bytes | LayerBlob],
    *,
    created: str = "2024-01-01T00:00:00Z",
) -> dict:
    """Write (or add `tag` to) an OCI layout holding a linux/amd64 image of `layers`.

    A Path or bytes layer is a plain tar: it is gzip-compressed here. A LayerBlob
    is used as-is. Returns {"manifest_digest", "config_digest", "diff_ids",
    "layers": [descriptor, ...]}.
    """
    layout = Path(layout)
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descs, diff_ids = [], []
    with tempfile.TemporaryDirectory(dir=layout) as td:
        for i, layer in enumerate(layers):
            if isinstance(layer, LayerBlob):
                digest, size = _write_blob(layout, layer.path)
                desc = {"mediaType": layer.media_type, "digest": digest, "size": size}
                if layer.annotations:
                    desc["annotations"] = dict(layer.annotations)
                diff_ids.append(layer.diff_id)
            else:
                tar_path = Path(td) / f"layer{i}.tar"
                if isinstance(layer, bytes):
                    tar_path.write_bytes(layer)
                else:
                    tar_path = Path(layer)
                diff_ids.append(sha256_file(tar_path))
                gz = gzip_layer(tar_path, Path(td) / f"layer{i}.tar.gz")
                digest, size = _write_blob(layout, gz)
                desc = {"mediaType": LAYER_GZIP, "digest": digest, "size": size}
            descs.append(desc)
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": f"zconv test layer {i}"} for i in range(len(descs))],
    }
    config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    cdigest, csize = _write_blob(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": csize},
        "layers": descs,
    }
    mbytes = json.dumps(manifest, separators=(",", ":")).encode()
    mdigest, msize = _write_blob(layout, mbytes)
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [
        m
        for m in index.get("manifests", [])
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": mdigest,
            "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    tmp = index_path.with_name("index.json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.rename(index_path)
    return {"manifest_digest": mdigest, "config_digest": cdigest, "diff_ids": diff_ids, "layers": descs}
