"""Edge-case layer tars, made by GNU tar and by Python's tarfile.

`all_cases()` returns {name: tar bytes} for tars that zstd:chunked can
represent; `unrepresentable_cases()` those that must fall back to plain zstd.
Both are deterministic apart from what GNU tar records of the file system
(times are pinned with --mtime / touch).
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
import tempfile
from pathlib import Path

MTIME = 1_700_000_000
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _tree(root: Path) -> None:
    """A small file tree with the entry kinds GNU tar can take from disk."""
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_bytes(b"zconv\n")
    (root / "empty").write_bytes(b"")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(_rand(300_000, 1))
    os.chmod(root / "bin" / "tool", 0o4755)
    (root / "bin" / "sparseish").write_bytes(_rand(3000, 2) + bytes(70_000) + _rand(3000, 3))
    (root / "data").mkdir()
    for size in (1, 511, 512, 513, 1023, 1024, 1025):
        (root / "data" / f"f{size}").write_bytes(_rand(size, size))
    (root / "data" / "zeros1024").write_bytes(bytes(1024))
    (root / "data" / "zeros1023").write_bytes(bytes(1023))
    long_dir = root / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_bytes(b"long name\n")
    os.symlink("../etc/hostname", root / "bin" / "link")
    os.symlink("x" * 150, root / "bin" / "longlink")
    os.link(root / "bin" / "tool", root / "bin" / "tool-hardlink")
    os.link(long_dir / ("f" * 120), root / "bin" / "hard-to-long")
    os.mkfifo(root / "fifo")
    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, (MTIME, MTIME), follow_symlinks=False)


def gnu_tar(fmt: str, extra: list[str] | None = None) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        root.mkdir()
        _tree(root)
        out = Path(d) / "out.tar"
        cmd = (
            [
                "tar",
                f"--format={fmt}",
                "--sort=name",
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "-cf",
                str(out),
                "-C",
                str(root),
            ]
            + (extra or [])
            + ["."]
        )
        subprocess.run(cmd, check=True, capture_output=True)
        return out.read_bytes()


def _add(tf: tarfile.TarFile, name: str, type_=tarfile.REGTYPE, data: bytes = b"", **kw) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mtime = kw.pop("mtime", MTIME)
    ti.mode = kw.pop("mode", 0o644)
    for k, v in kw.items():
        setattr(ti, k, v)
    if type_ in (tarfile.REGTYPE, tarfile.AREGTYPE):
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def python_tar(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        _add(tf, "usr", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "usr/bin", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "usr/bin/prog", data=_rand(200_000, 7), mode=0o755, uid=1000, gid=1000, uname="user", gname="users")
        _add(tf, "usr/bin/prog2", tarfile.LNKTYPE, linkname="usr/bin/prog")
        _add(tf, "usr/bin/sl", tarfile.SYMTYPE, linkname="prog", mode=0o777)
        _add(tf, "dev", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        _add(tf, "dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660)
        _add(tf, "dev/pipe", tarfile.FIFOTYPE)
        _add(tf, "empty", data=b"")
        _add(tf, "holes", data=bytes(5000) + b"x" + bytes(1024) + b"y" * 10 + bytes(1023))
        if fmt != tarfile.USTAR_FORMAT:
            _add(tf, "p/" + "long" * 40 + "/file", data=b"deep\n")
            _add(tf, "ln-long", tarfile.SYMTYPE, linkname="t" * 200)
        else:
            _add(tf, "a" * 80 + "/" + "b" * 90, data=b"prefix split\n")  # ustar prefix field
    return buf.getvalue()


def python_pax_xattrs() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("bin/ping")
        data = _rand(40_000, 9)
        ti.size = len(data)
        ti.mtime = MTIME
        ti.mode = 0o755
        ti.pax_headers = {
            # Raw bytes survive through surrogateescape (tarfile writes hdrcharset=BINARY).
            "SCHILY.xattr.security.capability": CAPABILITY.decode("utf-8", "surrogateescape"),
            "SCHILY.xattr.user.comment": "héllo <&>",
            "atime": "1700000001.5",
            "ctime": "1700000002.123456789",
            "mtime": "1700000000.25",
        }
        tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("etc/" + "x" * 300)
        ti.mtime = MTIME
        tf.addfile(ti, io.BytesIO(b""))
    return buf.getvalue()


def with_trailing_bytes(tar: bytes) -> bytes:
    return tar + bytes(4096) + b"trailing garbage after the end-of-archive blocks\n"


def _gnu_nonutf8_tar() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        root.mkdir()
        (root / "ok").write_bytes(b"fine\n")
        os.makedirs(os.path.join(os.fsencode(root), b"caf\xe9"), exist_ok=True)
        with open(os.path.join(os.fsencode(root), b"caf\xe9", b"f\xff"), "wb") as f:
            f.write(b"latin-1 name\n")
        out = Path(d) / "out.tar"
        subprocess.run(
            ["tar", "--format=gnu", "--sort=name", "-cf", str(out), "-C", str(root), "."],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()


def all_cases() -> dict[str, bytes]:
    gnu = gnu_tar("gnu")
    return {
        "gnutar-gnu": gnu,
        "gnutar-posix": gnu_tar("posix"),
        "gnutar-ustar-short": _gnu_ustar_short(),
        "python-gnu": python_tar(tarfile.GNU_FORMAT),
        "python-pax": python_tar(tarfile.PAX_FORMAT),
        "python-ustar": python_tar(tarfile.USTAR_FORMAT),
        "python-pax-xattrs": python_pax_xattrs(),
        "gnutar-trailing-bytes": with_trailing_bytes(gnu),
        "empty-archive": bytes(1024),
    }


def _gnu_ustar_short() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        root.mkdir()
        (root / "a").write_bytes(b"a\n")
        (root / "dir").mkdir()
        (root / "dir" / "b").write_bytes(_rand(100_000, 11))
        out = Path(d) / "out.tar"
        subprocess.run(
            ["tar", "--format=ustar", "--sort=name", "--mtime=@1700000000", "-cf", str(out), "-C", str(root), "."],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()


def unrepresentable_cases() -> dict[str, tuple[bytes, str]]:
    """{name: (tar, words expected in the reason)}."""
    dup = io.BytesIO()
    with tarfile.open(fileobj=dup, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "etc/passwd", data=b"one\n")
        _add(tf, "./etc/passwd", data=b"two\n")
    glob = io.BytesIO()
    with tarfile.open(fileobj=glob, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}) as tf:
        _add(tf, "file", data=b"x\n")
    cont = io.BytesIO()
    with tarfile.open(fileobj=cont, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "contig", tarfile.CONTTYPE)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "root" / "sparse"
        f.parent.mkdir()
        with open(f, "wb") as fh:
            fh.seek(4 << 20)
            fh.write(b"end")
        out = Path(d) / "s.tar"
        subprocess.run(
            ["tar", "--format=gnu", "-S", "-cf", str(out), "-C", str(f.parent), "."], check=True, capture_output=True
        )
        sparse_gnu = out.read_bytes()
        subprocess.run(
            ["tar", "--format=posix", "-S", "-cf", str(out), "-C", str(f.parent), "."], check=True, capture_output=True
        )
        sparse_pax = out.read_bytes()
    return {
        "duplicate-path": (dup.getvalue(), "appears twice"),
        "pax-global-header": (glob.getvalue(), "global"),
        "contiguous-type": (cont.getvalue(), "contiguous"),
        "gnu-sparse": (sparse_gnu, "sparse"),
        "pax-sparse": (sparse_pax, "sparse"),
        "non-utf8-name": (_gnu_nonutf8_tar(), "UTF-8"),
    }
