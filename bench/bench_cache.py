#!/usr/bin/env python3
"""Incremental conversion (issue 10): the frame cache, --reuse-from and the layer memo.

The Debian pair of tests/support/corpus.py: v1 a minbase root filesystem,
v2 the same plus a few packages, each a one-layer gzip image in a layout.
Measured in the same run (fresh processes, so peak RSS is their own):

  reference   containers/storage's writer converting v2's tar (as bench.py runs it)
  cold        zconv converting v2 without a cache
  warm        zconv converting v2 after v1 filled a fresh cache
  reuse       zconv converting v2 with --no-cache --reuse-from v1 in a local registry
  rebuild     an app image (Debian base + a small layer) rebuilt with only the top
              layer changed, registry to registry: the base layer must not be read

Every zconv output is checked to be byte-identical to the cold one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import run_child  # noqa: E402
from support import corpus  # noqa: E402
from support.registry import RegistryServer  # noqa: E402


def zconv(*args: str) -> tuple[float, float, dict, float]:
    """Wall seconds, peak RSS (MiB), the --json report and CPU seconds of one `zconv convert`."""
    dt, rss, out, cpu = run_child([sys.executable, "-m", "converter.cli", "convert", "--json", "--quiet", *args])
    return dt, rss, json.loads(out), cpu


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def app_tar(version: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for i in range(50):
            data = f"app v{version} file {i}\n".encode() * 200
            ti = tarfile.TarInfo(f"app/f{i}.txt")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    print("bench_cache: preparing the Debian pair (debootstrap once, then cached) ...", flush=True)
    tars = {"v1": corpus.debian_rootfs_tar(), "v2": corpus.debian_rootfs_tar(corpus.EXTRA_PACKAGES)}
    interop = (
        __import__("subprocess")
        .run(["bash", str(ROOT / "tests/interop/build.sh")], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    work = Path(tempfile.mkdtemp(prefix="zconv-bench-cache-"))
    res: dict[str, dict] = {}

    def keep(name: str, **m) -> None:
        if name not in res or m["seconds"] < res[name]["seconds"]:
            res[name] = m

    try:
        for v, tar in tars.items():
            corpus.write_oci_image(work / v, v, [tar])
        s1, s2 = f"oci:{work / 'v1'}", f"oci:{work / 'v2'}"
        with RegistryServer() as reg:
            zconv("--no-cache", s1, f"docker://{reg.host}/bench:v1")
            for r in range(a.rounds):
                dt, rss, _, cpu = run_child([interop, "compress", str(tars["v2"]), "--out", str(work / "ref.zst")])
                keep("reference", seconds=dt, cpu=cpu, rss_mib=rss, size=(work / "ref.zst").stat().st_size)
                for name in ("cold", "warm", "reuse"):
                    shutil.rmtree(work / name, ignore_errors=True)
                dt, rss, cold, cpu = zconv("--no-cache", s2, f"oci:{work / 'cold'}")
                keep("cold", seconds=dt, cpu=cpu, rss_mib=rss)
                cache = work / f"cache{r}"
                zconv("--cache-dir", str(cache), s1, f"oci:{work / f'fill{r}'}")
                dt, rss, warm, cpu = zconv("--cache-dir", str(cache), s2, f"oci:{work / 'warm'}")
                keep("warm", seconds=dt, cpu=cpu, rss_mib=rss, frames=warm["frames"])
                dt, rss, reuse, cpu = zconv(
                    "--no-cache", "--reuse-from", f"docker://{reg.host}/bench:v1", s2, f"oci:{work / 'reuse'}"
                )
                keep("reuse", seconds=dt, cpu=cpu, rss_mib=rss, frames=reuse["frames"])
                want = tree(work / "cold")
                assert tree(work / "warm") == want, "warm output differs from cold"
                assert tree(work / "reuse") == want, "reuse output differs from cold"
                print(f"bench_cache: round {r + 1}/{a.rounds} done", flush=True)
            # rebuild: the same base layer, a new top layer, registry to registry
            cache = work / "cache-rebuild"
            for v in (1, 2):
                corpus.write_oci_image(work / f"app{v}", "v", [tars["v1"], app_tar(v)])
                run_child(
                    [
                        sys.executable,
                        "-m",
                        "converter.cli",
                        "push",
                        "-q",
                        f"oci:{work / f'app{v}'}:v",
                        f"docker://{reg.host}/app-src:v{v}",
                    ]
                )
            zconv("--cache-dir", str(cache), f"docker://{reg.host}/app-src:v1", f"docker://{reg.host}/app:v1")
            dt, rss, rb, cpu = zconv(
                "--cache-dir", str(cache), f"docker://{reg.host}/app-src:v2", f"docker://{reg.host}/app:v2"
            )
            actions = [layer["action"] for layer in rb["layers"]]
            uploaded = sum(layer["new_size"] for layer in rb["layers"] if layer["action"] == "converted")
            res["rebuild"] = {
                "seconds": dt,
                "cpu": cpu,
                "rss_mib": rss,
                "actions": actions,
                "layer_bytes_uploaded": uploaded,
            }
            assert actions[0] == "present", f"base layer was {actions[0]}, not skipped"
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref, cold, warm, reuse = res["reference"], res["cold"], res["warm"], res["reuse"]
    ratios = {
        "reference_over_warm": ref["seconds"] / warm["seconds"],
        "reference_over_reuse": ref["seconds"] / reuse["seconds"],
        "reference_over_cold": ref["seconds"] / cold["seconds"],
        "cold_over_warm": cold["seconds"] / warm["seconds"],
        "reference_over_warm_cpu": ref["cpu"] / warm["cpu"],
    }
    if a.json:
        print(json.dumps({"results": res, "ratios": ratios}, indent=2))
        return 0
    print(
        f"\nDebian pair: v1 {tars['v1'].stat().st_size / 1e6:.0f} MB tar, v2 {tars['v2'].stat().st_size / 1e6:.0f} MB tar"
    )
    for name in ("reference", "cold", "warm", "reuse", "rebuild"):
        m = res[name]
        print(f"  {name:10s} {m['seconds']:7.2f} s  CPU {m['cpu']:6.2f} s  peak RSS {m['rss_mib']:6.0f} MiB")
    for name in ("warm", "reuse"):
        f = res[name]["frames"]
        src = f["cache"] if name == "warm" else f["reuse"]
        total = src["bytes"] + f["compressed"]["bytes"]
        print(
            f"  {name}: {src['frames']} frames ({100 * src['bytes'] / max(total, 1):.1f}% of bytes) "
            f"reused, {f['compressed']['frames']} compressed"
        )
    print(
        f"  rebuild: layers {res['rebuild']['actions']}, {res['rebuild']['layer_bytes_uploaded']} layer bytes uploaded"
    )
    print(f"reference / warm:   {ratios['reference_over_warm']:.2f}x  (target >= 10)")
    print(f"  in CPU seconds:   {ratios['reference_over_warm_cpu']:.2f}x  (load average {os.getloadavg()[0]:.2f})")
    print(f"reference / reuse:  {ratios['reference_over_reuse']:.2f}x")
    print(f"cold / warm:        {ratios['cold_over_warm']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
