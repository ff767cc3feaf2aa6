#!/usr/bin/env python3
"""The post-build step: `containers-storage:` -> registry next to `podman save` + convert.

Builds an image in a private podman store (its own storage.conf, overlay):
a Debian root filesystem from the test corpus (`podman import`, cached
debootstrap tar) plus an app layer, then in the same run measures, best of
`rounds`, each to a fresh repository of the local registry:

  * direct : zconv convert containers-storage:IMAGE docker://REGISTRY/...
  * save   : podman save --format oci-archive -o X.tar IMAGE, then
             zconv convert oci-archive:X.tar docker://REGISTRY/...

Time is wall clock; "disk" is what the pipeline's processes wrote to the
block device (getrusage ru_oublock of the children, 512-byte blocks: the
archive, temp files), so the cost of the intermediate archive shows up. Both
must push the same manifest digest, or the run fails.

    python3 bench/bench_storage.py [--rounds 2] [--small]

`run()` returns the numbers as a dict for bench/bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.podstore import build_app, make_store  # noqa: E402
from support.registry import RegistryServer  # noqa: E402

ZCONV = [sys.executable, "-m", "converter.cli"]


def _children_blocks() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock


def _timed(cmds: list[list[str]], env: dict[str, str]) -> tuple[float, int, list[str]]:
    blocks = _children_blocks()
    t0 = time.monotonic()
    outs = []
    for cmd in cmds:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
        outs.append(p.stdout)
    return time.monotonic() - t0, (_children_blocks() - blocks) * 512, outs


def _build(work: Path, small: bool) -> tuple[object, str]:
    st = make_store(work / "store", "overlay")
    if small:
        build_app(st, work, "localhost/bench-app:1", payload=20_000_000)
        return st, "localhost/bench-app:1"
    from support.corpus import EXTRA_PACKAGES, debian_rootfs_tar

    rootfs = debian_rootfs_tar(EXTRA_PACKAGES)
    st.podman("import", str(rootfs), "localhost/bench-debian:1")
    ctx = work / "ctx"
    ctx.mkdir()
    (ctx / "app.bin").write_bytes(os.urandom(8 << 20) + b"text layer " * (2 << 20))
    (ctx / "Containerfile").write_text(
        "FROM localhost/bench-debian:1\nCOPY app.bin /opt/app.bin\n"
        "RUN rm -rf /usr/share/doc && ln /opt/app.bin /opt/app.link\n"
    )
    st.podman("build", "--network=none", "-t", "localhost/bench-app:1", str(ctx))
    return st, "localhost/bench-app:1"


def run(rounds: int = 2, small: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="zconv-bench-storage-", dir="/var/tmp"))
    try:
        st, image = _build(work, small)
        env = {**st.env, "ZCONV_STORAGE_LOCK_TIMEOUT": "60"}
        podman = [
            shutil.which("podman") or "podman",
            "--runtime",
            "/usr/sbin/runc",
            "--cgroup-manager=cgroupfs",
            "--events-backend=none",
        ]
        best: dict[str, tuple[float, int]] = {}
        digests: dict[str, set[str]] = {"direct": set(), "save": set()}
        with RegistryServer() as reg:
            for r in range(rounds):
                for kind in ("direct", "save"):
                    dest = f"docker://{reg.host}/{kind}-{r}:1"
                    if kind == "direct":
                        cmds = [[*ZCONV, "convert", "--json", f"containers-storage:{image}", dest]]
                    else:
                        archive = work / f"save-{r}.tar"
                        cmds = [
                            [*podman, "save", "--format", "oci-archive", "-o", str(archive), image],
                            [*ZCONV, "convert", "--json", f"oci-archive:{archive}", dest],
                        ]
                    secs, written, outs = _timed(cmds, env)
                    if kind == "save":
                        archive.unlink()
                    digests[kind].add(json.loads(outs[-1])["images"][0]["digest"])
                    if kind not in best or secs < best[kind][0]:
                        best[kind] = (secs, written)
        if digests["direct"] != digests["save"] or len(digests["direct"]) != 1:
            raise SystemExit(f"the two pipelines pushed different images: {digests}")
        size = sum(int(x) for x in st.podman("image", "inspect", "--format", "{{.Size}}", image).stdout.split())
        return {
            "image": image,
            "image_size": size,
            "direct_seconds": round(best["direct"][0], 2),
            "direct_disk_bytes": best["direct"][1],
            "save_seconds": round(best["save"][0], 2),
            "save_disk_bytes": best["save"][1],
            "time_ratio": round(best["direct"][0] / best["save"][0], 3),
            "manifest": next(iter(digests["direct"])),
        }
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="a 20 MB app on the tiny test base (no debootstrap)")
    a = ap.parse_args()
    res = run(a.rounds, a.small)
    mib = 1 << 20
    print(f"image {res['image']}: {res['image_size'] / mib:.1f} MiB in the store")
    print(
        f"containers-storage: -> registry   {res['direct_seconds']:7.2f} s  {res['direct_disk_bytes'] / mib:8.1f} MiB written"
    )
    print(
        f"podman save + convert -> registry {res['save_seconds']:7.2f} s  {res['save_disk_bytes'] / mib:8.1f} MiB written"
    )
    print(f"time ratio direct/save: {res['time_ratio']} (same manifest {res['manifest'][:19]})")


if __name__ == "__main__":
    main()
