"""Helpers of the interop suite: drive the Go helper, read OCI layouts and TOCs,
and compare a pulled layer directory with the tar it came from.

The Go helper (tests/interop, built by tests/interop/build.sh) wraps the real
containers/image + containers/storage; see its main.go for the JSON it prints.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "tests" / "interop" / "build.sh"
ZCONV = REPO / ".venv" / "bin" / "zconv"
TOC_CHECKSUM_KEY = "io.github.containers.zstd-chunked.manifest-checksum"
TOC_POSITION_KEY = "io.github.containers.zstd-chunked.manifest-position"


class InteropError(RuntimeError):
    pass


def build_interop_binary() -> Path:
    """Build (if sources changed) and return the Go helper; raises with go's output."""
    p = subprocess.run(["bash", str(BUILD_SH)], capture_output=True, text=True)
    if p.returncode != 0:
        raise InteropError(
            "building the interop Go helper failed (needs the go toolchain and the Go module "
            f"proxy for go.podman.io/image/v5 and go.podman.io/storage):\n{p.stderr[-4000:]}"
        )
    return Path(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# the Go helper


@dataclass
class InteropTool:
    binary: Path

    def _run(self, *args: str, timeout: float = 900) -> dict:
        p = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=timeout)
        try:
            out = json.loads(p.stdout) if p.stdout.strip() else {}
        except json.JSONDecodeError:
            out = {}
        if p.returncode != 0 or "error" in out:
            raise InteropError(
                f"zconv-interop {' '.join(args)} failed ({p.returncode}): {out.get('error') or p.stderr[-3000:]}"
            )
        return out

    @staticmethod
    def _net_opts(creds: str | None, cert_dir: str | os.PathLike | None, tls_verify: bool) -> list[str]:
        opts = []
        if creds:
            opts += ["--creds", creds]
        if cert_dir:
            opts += ["--cert-dir", str(cert_dir)]
        if tls_verify:
            opts.append("--tls-verify")
        return opts

    def copy(
        self,
        src: str,
        dst: str,
        *,
        all_images: bool = False,
        creds: str | None = None,
        cert_dir=None,
        tls_verify: bool = False,
    ) -> dict:
        """containers/image copy without changing blobs (e.g. oci:DIR:TAG -> docker://HOST/R:T)."""
        extra = ["--all"] if all_images else []
        return self._run("copy", src, dst, *extra, *self._net_opts(creds, cert_dir, tls_verify))

    def pull(
        self,
        src: str,
        root: str | os.PathLike,
        *,
        creds: str | None = None,
        cert_dir=None,
        tls_verify: bool = False,
        log: str | os.PathLike | None = None,
    ) -> dict:
        """Pull into the containers-storage store under `root` (reuse root across pulls)."""
        extra = ["--log", str(log)] if log else []
        return self._run("pull", src, "--root", str(root), *extra, *self._net_opts(creds, cert_dir, tls_verify))

    def compress(self, tar: str | os.PathLike, out: str | os.PathLike, level: int | None = None) -> dict:
        """The reference zstd:chunked writer (containers/storage compressor) on a tar."""
        extra = ["--level", str(level)] if level is not None else []
        return self._run("compress", str(tar), "--out", str(out), *extra)


def assert_no_mounts_under(root: str | os.PathLike) -> None:
    root = os.path.realpath(root)
    with open("/proc/self/mountinfo") as f:
        left = [line.split()[4] for line in f if line.split()[4].startswith(root + "/")]
    if left:
        raise InteropError(f"mounts left behind under {root}: {left}")


# ---------------------------------------------------------------------------
# OCI layouts


def read_oci_image(layout: str | os.PathLike, tag: str) -> tuple[dict, dict]:
    """(manifest, config) of `tag` in an OCI layout (follows one index level)."""
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            break
    else:
        raise InteropError(f"tag {tag} not in {layout}/index.json")
    doc = json.loads(blob_path(layout, desc["digest"]).read_bytes())
    if "manifests" in doc:  # an index: take the linux/amd64 (or the only) manifest
        cands = [m for m in doc["manifests"] if m.get("platform", {}).get("architecture") in (None, "amd64")]
        doc = json.loads(blob_path(layout, cands[0]["digest"]).read_bytes())
    config = json.loads(blob_path(layout, doc["config"]["digest"]).read_bytes())
    return doc, config


def blob_path(layout: str | os.PathLike, digest: str) -> Path:
    algo, hexd = digest.split(":", 1)
    return Path(layout) / "blobs" / algo / hexd


# ---------------------------------------------------------------------------
# TOCs


def read_toc(blob: str | os.PathLike, annotations: dict[str, str]) -> dict:
    """The TOC of a zstd:chunked blob, located by the manifest-position annotation
    (as the consumer does) and checked against the manifest-checksum annotation."""
    off, length, ulength, mtype = (int(x) for x in annotations[TOC_POSITION_KEY].split(":"))
    if mtype != 1:
        raise InteropError(f"manifest type {mtype} != 1 in {annotations[TOC_POSITION_KEY]}")
    with open(blob, "rb") as f:
        f.seek(off)
        raw = f.read(length)
    want = annotations.get(TOC_CHECKSUM_KEY)
    got = "sha256:" + hashlib.sha256(raw).hexdigest()
    if want != got:
        raise InteropError(f"TOC checksum {got} != annotation {want} in {blob}")
    data = zstandard.ZstdDecompressor().decompress(raw, max_output_size=ulength)
    if len(data) != ulength:
        raise InteropError(f"TOC of {blob}: {len(data)} bytes, annotation says {ulength}")
    return json.loads(data)


_TIME_FIELDS = ("modtime", "accesstime", "changetime")
_IGNORED = ("offset", "endOffset")


def _norm_time(v: str) -> tuple[int, int] | str:
    """RFC 3339 (any offset, any fraction) -> (unix seconds, nanoseconds) in UTC."""
    try:
        main, _, rest = v.partition(".")
        if rest:
            frac = "".join(ch for ch in rest if ch.isdigit())
            tz = rest[len(frac) :]
        else:
            frac, tz = "", ""
            for sep in ("Z", "+", "-"):
                i = main.rfind(sep)
                if i > 10:
                    main, tz = main[:i], main[i:]
                    break
        t = dt.datetime.fromisoformat(main + (tz.replace("Z", "+00:00") or "+00:00"))
        return int(t.timestamp()), int((frac + "000000000")[:9])
    except ValueError:
        return v


def normalize_toc_entry(e: dict) -> dict:
    out = {}
    for k, v in e.items():
        if k in _IGNORED:
            continue
        if k in _TIME_FIELDS:
            v = _norm_time(v)
            if v in ((0, 0), (-62135596800, 0)):  # zero and Go's zero time count as absent
                continue
        out[k] = v
    return out


def compare_tocs(ours: dict, ref: dict) -> list[str]:
    """Differences between two TOCs, entry by entry, ignoring offset/endOffset."""
    diffs = []
    if ours.get("version") != ref.get("version"):
        diffs.append(f"version: ours {ours.get('version')} ref {ref.get('version')}")
    a, b = ours.get("entries") or [], ref.get("entries") or []
    if len(a) != len(b):
        diffs.append(f"entry count: ours {len(a)} ref {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        nx, ny = normalize_toc_entry(x), normalize_toc_entry(y)
        if nx != ny:
            keys = sorted(set(nx) | set(ny))
            detail = {k: (nx.get(k), ny.get(k)) for k in keys if nx.get(k) != ny.get(k)}
            diffs.append(f"entry {i} ({y.get('name')!r}): (ours, ref) {detail}")
        if len(diffs) > 20:
            diffs.append("...")
            break
    return diffs


# ---------------------------------------------------------------------------
# file trees: what a tar says vs what the store extracted


@dataclass(frozen=True)
class Node:
    kind: str  # reg dir symlink char block fifo whiteout
    mode: int  # permission bits incl. setuid/setgid/sticky (0 for symlinks)
    uid: int
    gid: int
    sha256: str | None = None
    link: str | None = None  # symlink target
    dev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()


def _clean(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    return "" if name == "." else name


def _xattrs_from_pax(pax: dict[str, str]) -> tuple[tuple[str, bytes], ...]:
    out = []
    for k, v in pax.items():
        if k.startswith("SCHILY.xattr."):
            # tarfile decodes PAX values as UTF-8 with surrogateescape for raw bytes
            out.append((k[len("SCHILY.xattr.") :], v.encode("utf-8", "surrogateescape")))
    return tuple(sorted(out))


def tar_tree(tar: str | os.PathLike | bytes) -> tuple[dict[str, Node], list[tuple[str, str]]]:
    """(path -> Node, [(hardlink path, target path)]) as an extraction of `tar` gives.

    Later entries replace earlier ones of the same path. A hardlink shares its
    target's inode; its own header's mode/owner are applied to that inode (as
    containers/storage and docker's extractor both do), its xattrs are added.
    """
    import io

    fileobj = io.BytesIO(tar) if isinstance(tar, bytes) else open(tar, "rb")
    nodes: dict[str, Node] = {}
    inode_of: dict[str, int] = {}  # path -> inode group (regular files and their links)
    groups: dict[int, list[str]] = {}
    hardlinks: list[tuple[str, str]] = []
    with fileobj, tarfile.open(fileobj=fileobj, mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
        for ti in tf:
            name = _clean(ti.name)
            if not name:
                continue
            base = os.path.basename(name)
            xattrs = _xattrs_from_pax(ti.pax_headers)
            perm = ti.mode & 0o7777
            if name in inode_of:  # replaced: leaves its old inode group
                groups[inode_of.pop(name)].remove(name)
            if base == ".wh..wh..opq":
                continue  # opaque marker: an attribute of the directory, not a file
            if base.startswith(".wh."):
                wname = os.path.join(os.path.dirname(name), base[4:])
                nodes[wname] = Node("whiteout", 0, 0, 0, dev=(0, 0))
                continue
            if ti.islnk():
                target = _clean(ti.linkname)
                hardlinks.append((name, target))
                old = nodes.get(target)
                if old is None:
                    raise InteropError(f"hardlink {name!r} to missing {target!r}")
                merged = dict(old.xattrs)
                merged.update(xattrs)
                node = Node(
                    old.kind,
                    perm,
                    ti.uid,
                    ti.gid,
                    sha256=old.sha256,
                    link=old.link,
                    dev=old.dev,
                    xattrs=tuple(sorted(merged.items())),
                )
                gid = inode_of.setdefault(target, len(groups))
                groups.setdefault(gid, [target])
                groups[gid].append(name)
                inode_of[name] = gid
                for member in groups[gid]:
                    nodes[member] = node
                continue
            if ti.isreg():
                h = hashlib.sha256()
                f = tf.extractfile(ti)
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                nodes[name] = Node("reg", perm, ti.uid, ti.gid, sha256=h.hexdigest(), xattrs=xattrs)
            elif ti.isdir():
                nodes[name] = Node("dir", perm, ti.uid, ti.gid, xattrs=xattrs)
            elif ti.issym():
                nodes[name] = Node("symlink", 0, ti.uid, ti.gid, link=ti.linkname)
            elif ti.ischr():
                nodes[name] = Node("char", perm, ti.uid, ti.gid, dev=(ti.devmajor, ti.devminor), xattrs=xattrs)
            elif ti.isblk():
                nodes[name] = Node("block", perm, ti.uid, ti.gid, dev=(ti.devmajor, ti.devminor), xattrs=xattrs)
            elif ti.isfifo():
                nodes[name] = Node("fifo", perm, ti.uid, ti.gid, xattrs=xattrs)
            else:
                raise InteropError(f"tar entry {ti.name!r} of type {ti.type!r} not handled by the test")
    return nodes, hardlinks


# Xattrs the store itself sets or that describe overlay internals, not file content.
_STORE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "security.selinux")


def dir_tree(root: str | os.PathLike) -> dict[str, Node]:
    root = str(root)
    nodes: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            xattrs = ()
            if not stat.S_ISLNK(st.st_mode):
                try:
                    names = os.listxattr(full, follow_symlinks=False)
                except OSError:
                    names = []
                xattrs = tuple(
                    sorted(
                        (x, os.getxattr(full, x, follow_symlinks=False))
                        for x in names
                        if not x.startswith(_STORE_XATTR_PREFIXES)
                    )
                )
            perm = stat.S_IMODE(st.st_mode)
            m = st.st_mode
            if stat.S_ISREG(m):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                node = Node("reg", perm, st.st_uid, st.st_gid, sha256=h.hexdigest(), xattrs=xattrs)
            elif stat.S_ISDIR(m):
                node = Node("dir", perm, st.st_uid, st.st_gid, xattrs=xattrs)
            elif stat.S_ISLNK(m):
                node = Node("symlink", 0, st.st_uid, st.st_gid, link=os.readlink(full))
            elif stat.S_ISCHR(m):
                dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
                if dev == (0, 0):
                    node = Node("whiteout", 0, 0, 0, dev=(0, 0))
                else:
                    node = Node("char", perm, st.st_uid, st.st_gid, dev=dev, xattrs=xattrs)
            elif stat.S_ISBLK(m):
                node = Node(
                    "block", perm, st.st_uid, st.st_gid, dev=(os.major(st.st_rdev), os.minor(st.st_rdev)), xattrs=xattrs
                )
            elif stat.S_ISFIFO(m):
                node = Node("fifo", perm, st.st_uid, st.st_gid, xattrs=xattrs)
            else:
                node = Node("other", perm, st.st_uid, st.st_gid)
            nodes[rel] = node
    return nodes


# containers/storage's partial pull (pkg/chunked/storage_linux.go, v1.65.1) creates no
# char/block/fifo entries ("case tar.TypeChar: case tar.TypeBlock: case tar.TypeFifo:
# /* Ignore. */"); whiteouts (char 0/0) it does create. So such entries may be absent
# from a partially pulled layer; when present they must match.
CONSUMER_SKIPS = ("char", "block", "fifo")


def compare_tree_to_tar(diff_dir: str | os.PathLike, tar: str | os.PathLike | bytes) -> list[str]:
    """Differences between an extracted layer directory and its tar: content, mode,
    owner, symlink targets, devices, xattrs; hardlinks must share the target's inode."""
    want, hardlinks = tar_tree(tar)
    got = dir_tree(diff_dir)
    diffs = []
    for name, node in sorted(want.items()):
        if name not in got and node.kind in CONSUMER_SKIPS:
            continue  # see CONSUMER_SKIPS
        if name not in got:
            diffs.append(f"{name}: missing from the pulled layer")
        elif got[name] != node:
            diffs.append(f"{name}: pulled {got[name]} != tar {node}")
    implied = set()  # parents the tar did not list are created by the extractor
    for n in want:
        while n := os.path.dirname(n):
            implied.add(n)
    for name in sorted(set(got) - set(want)):
        if not (name in implied and got[name].kind == "dir"):
            diffs.append(f"{name}: in the pulled layer but not in the tar ({got[name]})")
    for name, target in hardlinks:
        a, b = os.path.join(diff_dir, name), os.path.join(diff_dir, target)
        try:
            if os.lstat(a).st_ino != os.lstat(b).st_ino:
                diffs.append(f"{name}: not a hardlink of {target}")
        except OSError as e:
            diffs.append(f"{name}: hardlink to {target}: {e}")
    return diffs[:50]


# ---------------------------------------------------------------------------
# conversions


def zconv_convert(src: str, dst: str, timeout: float = 1800) -> dict:
    """Run our CLI: zconv convert SRC DST --json. Fails loudly if the CLI is missing."""
    if not ZCONV.exists():
        raise InteropError(f"{ZCONV} not found: run `make setup` (pip install -e .)")
    p = subprocess.run([str(ZCONV), "convert", src, dst, "--json"], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise InteropError(
            f"zconv convert {src} {dst} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        )
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"stdout": p.stdout}


def reference_convert(tool: InteropTool, tars: list[Path], layout: Path, tag: str, workdir: Path) -> dict:
    """An OCI image of `tars` whose layers were written by the reference writer."""
    from support.corpus import LAYER_ZSTD, LayerBlob, sha256_file, write_oci_image

    blobs = []
    for i, tar in enumerate(tars):
        out = workdir / f"{tag}-ref-layer{i}.zst"
        res = tool.compress(tar, out)
        blobs.append(LayerBlob(out, LAYER_ZSTD, sha256_file(tar), res["annotations"]))
    return write_oci_image(layout, tag, blobs)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
