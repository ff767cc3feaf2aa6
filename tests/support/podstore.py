"""A private podman store for tests: its own storage.conf, graph root and run root.

Never the machine's default store: every podman command runs with
CONTAINERS_STORAGE_CONF pointing at a storage.conf under the test's temp dir,
and the same file is what zconv's containers-storage: source finds.

`shell_rootfs_tar()` makes a tiny base layer (dash, coreutils' mkdir/cp/ln/rm/cat
and their libraries from the host) so that `podman build` can RUN commands
with no image registry and no debootstrap; the tar also carries a file with a
user xattr, a hardlink and a file a later layer removes (a whiteout).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

RUNC = "/usr/sbin/runc"
SHELL_BINS = ("/usr/bin/dash", "/usr/bin/mkdir", "/usr/bin/cp", "/usr/bin/ln", "/usr/bin/rm", "/usr/bin/cat")


def shell_rootfs_tar(out: Path) -> Path:
    libs: set[str] = set()
    for b in SHELL_BINS:
        ldd = subprocess.run(["ldd", b], capture_output=True, text=True, check=True).stdout
        libs.update(m.group(1) for m in re.finditer(r"(/\S+\.so[.0-9]*)", ldd))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:

        def add(name: str, data: bytes | None = None, mode: int = 0o644, **kw: object) -> tarfile.TarInfo:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            ti.mode = mode
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
            return ti

        for d in ("bin", "lib", "lib/x86_64-linux-gnu", "lib64", "etc", "tmp", "data"):
            add(d, mode=0o755, type=tarfile.DIRTYPE)
        seen: set[str] = set()
        for lib in sorted(libs):
            name = re.sub(r"^usr/lib/", "lib/", lib.lstrip("/"))
            if name in seen:
                continue
            seen.add(name)
            add(name, Path(os.path.realpath(lib)).read_bytes(), 0o755)
        add("bin/sh", Path(os.path.realpath(SHELL_BINS[0])).read_bytes(), 0o755)
        for b in SHELL_BINS[1:]:
            add("bin/" + os.path.basename(b), Path(os.path.realpath(b)).read_bytes(), 0o755)
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        ti = tarfile.TarInfo("data/with-xattr")
        body = b"xattr carrier\n" * 8000
        ti.size, ti.mode, ti.mtime = len(body), 0o644, 1_700_000_000
        ti.pax_headers = {"SCHILY.xattr.user.zconv": "kept"}
        t.addfile(ti, io.BytesIO(body))
        add("data/hardlink", type=tarfile.LNKTYPE, linkname="data/with-xattr")
        add("data/removed-later", b"this file gets a whiteout\n" * 500)
    return out


@dataclass
class PodmanStore:
    root: Path
    driver: str

    @property
    def conf(self) -> Path:
        return self.root / "storage.conf"

    @property
    def graphroot(self) -> Path:
        return self.root / "graph"

    @property
    def runroot(self) -> Path:
        return self.root / "run"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_STORAGE_CONF": str(self.conf)}

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        exe = shutil.which("podman")
        if exe is None or not os.path.exists(RUNC):
            raise RuntimeError("podman and runc are needed (Debian packages podman, runc; .ci/sysdeps)")
        cmd = [exe, "--runtime", RUNC, "--cgroup-manager=cgroupfs", "--events-backend=none", *args]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return p

    def image_id(self, name: str) -> str:
        return self.podman("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


def make_store(root: Path, driver: str = "overlay") -> PodmanStore:
    root.mkdir(parents=True, exist_ok=True)
    st = PodmanStore(root, driver)
    st.conf.write_text(f'[storage]\ndriver = "{driver}"\ngraphroot = "{st.graphroot}"\nrunroot = "{st.runroot}"\n')
    return st


APP_CONTAINERFILE = """\
FROM localhost/zconv-shell:1
RUN mkdir -p /app && cp /data/with-xattr /app/copied && ln /app/copied /app/copied-hardlink
RUN rm /data/removed-later
COPY payload.bin /app/payload.bin
COPY notes.txt /app/notes.txt
ENV APP=1
"""


def build_app(st: PodmanStore, work: Path, name: str = "localhost/zconv-app:1", payload: int = 400_000) -> str:
    """Base from `podman import`, then an app on it with RUN/COPY layers; returns the image ID."""
    import random

    base = shell_rootfs_tar(work / "shell-rootfs.tar")
    st.podman("import", str(base), "localhost/zconv-shell:1")
    ctx = work / "ctx"
    ctx.mkdir(exist_ok=True)
    rng = random.Random(11)
    (ctx / "payload.bin").write_bytes(rng.randbytes(payload // 2) + b"text " * (payload // 10))
    (ctx / "notes.txt").write_text("notes\n" * 1000)
    (ctx / "Containerfile").write_text(APP_CONTAINERFILE)
    st.podman("build", "--network=none", "-t", name, str(ctx))
    return st.image_id(name)
