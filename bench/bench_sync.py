#!/usr/bin/env python3
"""`zconv sync` of a registry against converting the same tags one by one.

Starts Debian's docker-registry on 127.0.0.1 (tests/support/registry.py)
behind a pass-through proxy that logs every request (tests/support/faultproxy.py,
no faults), pushes REPOS repositories x TAGS tags that share a base layer
(each repository adds its own layer, each tag a small top layer), and
measures in the same run:

  * one by one, --no-cache : `zconv convert --no-cache docker://.../REPO:TAG
                 docker://.../one/REPO:TAG` for every tag, one process each
  * one by one, cache : the same with the frame cache and layer memo (one
                 cache directory, empty at first, shared by the processes:
                 what a script around `zconv convert` on one machine gets)
  * sync       : `zconv sync sync.yaml docker://.../synced` (first run)
  * sync -j2   : the same with --jobs 2, into another prefix
  * rerun      : `zconv sync` again: nothing to convert, nothing to upload

Every row but the rerun starts with an empty cache directory of its own
(ZCONV_CACHE_DIR), so no row mounts what another one converted.

For each: wall time, registry requests (from the proxy's log), blobs and
bytes uploaded (completed uploads in the log, sized from the registry's
storage). Prints a table and the ratios one-by-one/sync.

    python3 bench/bench_sync.py [--repos 3] [--tags 4] [--base-mib 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.corpus import write_oci_image  # noqa: E402
from support.faultproxy import FaultProxy  # noqa: E402
from support.registry import RegistryServer  # noqa: E402

ZCONV = [sys.executable, "-c", "import sys; from converter.cli import main; sys.exit(main())"]


def layer(name: str, mib: float, seed: int) -> bytes:
    """A layer tar of 256 KiB files: base64 of random bytes (compresses to about 75%), some repeated text."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    total = int(mib * (1 << 20))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        i = 0
        while total > 0:
            n = min(total, 256 << 10)
            data = base64.b64encode(rng.randbytes(n * 3 // 8)) + (b"zconv bench text line\n" * (n // 44))
            ti = tarfile.TarInfo(f"{name}/f{i:04d}")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
            total -= n
            i += 1
    return buf.getvalue()


def push_all(work: Path, host: str, repos: int, tags: int, base_mib: float) -> tuple[list[tuple[str, str]], Path]:
    from converter.push import push_image

    base = layer("base", base_mib, 1)
    pairs = []
    for r in range(repos):
        repo = f"team/app{r}"
        mid = layer(f"app{r}", base_mib / 5, 100 + r)
        layout = work / f"src{r}"
        for t in range(tags):
            tag = f"1.{t}"
            write_oci_image(layout, tag, [base, mid, layer(f"top{r}-{t}", base_mib / 32, 1000 * r + t)])
            push_image(f"oci:{layout}:{tag}", f"docker://{host}/{repo}:{tag}", check_ranges=False, warn=lambda m: None)
            pairs.append((repo, tag))
    spec = work / "sync.yaml"
    spec.write_text(f"{host}:\n  images:\n" + "".join(f"    team/app{r}: []\n" for r in range(repos)))
    return pairs, spec


def blob_size(reg: RegistryServer, digest: str) -> int:
    hexd = digest.split(":", 1)[1]
    p = reg.storage_dir / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    return p.stat().st_size


def links(reg: RegistryServer) -> set[tuple[str, str]]:
    """(repository, blob digest) pairs the registry holds: a blob uploaded or mounted into a repository."""
    root = reg.storage_dir / "docker/registry/v2/repositories"
    return {
        (str(p.parent.parent.parent.parent.relative_to(root)), "sha256:" + p.parent.name)
        for p in root.glob("**/_layers/sha256/*/link")
    }


def measure(proxy: FaultProxy, reg: RegistryServer, fn) -> dict:  # type: ignore[no-untyped-def]
    """Wall time, requests (proxy log), uploads (PUTs completing an upload) and mounts (POSTs answered 201).

    Bytes uploaded: the sizes of the blobs newly linked into a repository,
    less those that came by a mount (zconv sync's --json names its uploads;
    zconv convert's --json names the layers it mounted).
    """
    before_links = links(reg)
    before = len(proxy.requests())
    t0 = time.monotonic()
    out = fn()
    seconds = time.monotonic() - t0
    log = proxy.requests()[before:]
    uploads = sum(1 for m, path, st in log if m == "PUT" and "/blobs/uploads/" in path and st == 201)
    mounts = sum(1 for m, path, st in log if m == "POST" and path.endswith("/blobs/uploads/") and st == 201)
    new = links(reg) - before_links
    return {
        "seconds": seconds,
        "requests": len(log),
        "blobs_uploaded": uploads,
        "mounts": mounts,
        "new_links": new,
        "out": out,
    }


def run_cmd(args: list[str], cache: Path) -> str:
    p = subprocess.run(
        ZCONV + args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "ZCONV_CACHE_DIR": str(cache)}
    )
    if p.returncode != 0:
        raise SystemExit(f"bench_sync: zconv {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repos", type=int, default=3)
    ap.add_argument("--tags", type=int, default=4)
    ap.add_argument("--base-mib", type=float, default=16.0)
    a = ap.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="zconv-bench-sync-") as td,
        RegistryServer() as reg,
        FaultProxy(upstream_port=reg.port) as proxy,
    ):
        work = Path(td)
        env_home = work / "home"
        os.environ.update(
            {
                "HOME": str(env_home),
                "XDG_CACHE_HOME": str(env_home / ".cache"),
                "REGISTRY_AUTH_FILE": str(work / "auth.json"),
            }
        )
        host = proxy.host
        pairs, spec = push_all(work, host, a.repos, a.tags, a.base_mib)
        print(
            f"bench_sync: {a.repos} repositories x {a.tags} tags on {host}; layers: base {a.base_mib:g} MiB (shared), "
            f"{a.base_mib / 5:g} MiB per repository, {a.base_mib / 32:g} MiB per tag (tar sizes)"
        )

        def one_by_one(prefix: str, extra: list[str]) -> list[dict]:
            return [
                json.loads(
                    run_cmd(
                        [
                            "convert",
                            "--json",
                            *extra,
                            f"docker://{host}/{repo}:{tag}",
                            f"docker://{host}/{prefix}/{repo}:{tag}",
                        ],
                        work / f"cache-{prefix}",
                    )
                )
                for repo, tag in pairs
            ]

        def sync(prefix: str, extra: list[str], cache: str) -> str:
            return run_cmd(["sync", str(spec), f"docker://{host}/{prefix}", "--json", *extra], work / cache)

        rows = {
            "one by one, --no-cache": measure(proxy, reg, lambda: one_by_one("one", ["--no-cache"])),
            "one by one, cache": measure(proxy, reg, lambda: one_by_one("onecache", [])),
            "sync (first run)": measure(proxy, reg, lambda: sync("synced", [], "cache-sync")),
            "sync --jobs 2 (first run)": measure(proxy, reg, lambda: sync("synced2", ["--jobs", "2"], "cache-sync2")),
            "sync rerun": measure(proxy, reg, lambda: sync("synced", [], "cache-sync")),
        }
        first = [json.loads(x) for x in rows["sync (first run)"]["out"].splitlines()]
        rerun = [json.loads(x) for x in rows["sync rerun"]["out"].splitlines()]
        assert len(first) == len(pairs) and all(r["action"] == "converted" for r in first), first
        assert all(r["action"] == "skipped" for r in rerun), rerun
        for name, r in rows.items():
            if name.startswith("sync"):
                recs = [json.loads(x) for x in r["out"].splitlines()]
                ups = {d for rec in recs for d in rec["blobs_uploaded"]}
                r["bytes_uploaded"] = sum(rec["bytes_uploaded"] for rec in recs)
                assert len(ups) == r["blobs_uploaded"], (name, len(ups), r["blobs_uploaded"])
                r["layers_converted"] = sum(rec["layers_converted"] for rec in recs)
            else:
                prefix = "one" if "no-cache" in name else "onecache"
                mounted = {
                    (f"{prefix}/{repo}", layer["new_digest"])
                    for (repo, _), rep in zip(pairs, r["out"])
                    for layer in rep["layers"]
                    if layer["action"] == "mounted"
                }
                up = r["new_links"] - mounted
                r["bytes_uploaded"] = sum(blob_size(reg, d) for _, d in up)
                r["layers_converted"] = sum(
                    1 for rep in r["out"] for layer in rep["layers"] if layer["action"] == "converted"
                )
                assert r["mounts"] == len(mounted) and len(up) == r["blobs_uploaded"], (name, r["mounts"], len(mounted))
        assert rows["sync rerun"]["bytes_uploaded"] == 0 and rows["sync rerun"]["blobs_uploaded"] == 0
        print(f"{'':30} {'seconds':>8} {'requests':>9} {'converted':>9} {'blobs up':>9} {'mounted':>8} {'MiB up':>8}")
        for name, r in rows.items():
            print(
                f"{name:30} {r['seconds']:8.2f} {r['requests']:9d} {r['layers_converted']:9d} {r['blobs_uploaded']:9d} "
                f"{r['mounts']:8d} {r['bytes_uploaded'] / (1 << 20):8.1f}"
            )
        sy = rows["sync (first run)"]
        for base in ("one by one, --no-cache", "one by one, cache"):
            ob = rows[base]
            print(
                f"first sync against {base}: {ob['seconds'] / sy['seconds']:.1f}x faster, "
                f"{ob['requests'] / sy['requests']:.2f}x the requests, "
                f"{ob['bytes_uploaded'] / max(sy['bytes_uploaded'], 1):.1f}x the bytes uploaded, "
                f"layers converted {ob['layers_converted']} against {sy['layers_converted']}"
            )
        print(f"sync --jobs 2 against sync: {sy['seconds'] / rows['sync --jobs 2 (first run)']['seconds']:.2f}x faster")
        rr = rows["sync rerun"]
        print(
            f"rerun: {rr['seconds']:.2f}s, {rr['requests']} requests for {len(pairs)} tags "
            f"({rr['requests'] / len(pairs):.1f} per tag), {rr['bytes_uploaded']} bytes uploaded"
        )


if __name__ == "__main__":
    main()
