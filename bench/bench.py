#!/usr/bin/env python3
"""`make bench`: zconv on a realistic layer, next to its baselines, in one run.

The layer: a Debian bookworm root filesystem made by debootstrap (minbase
plus a few packages, so the tar is over 200 MB), gzip-compressed at level 6
as image layers usually are. Built once and cached (tests/support/corpus.py).

Measured in the same run, best of --rounds, alternating:

  pipeline   `gzip -dc layer.tar.gz | zstd -T0 -<level>`: a plain zstd
             recompression, the floor for any converter
  zconv      converting the gzip blob to zstd:chunked (a fresh process, so
             its peak RSS is its own)
  reference  containers/storage's own writer (compressor.ZstdCompressor, Go,
             its default level) on the uncompressed tar: it does not even
             decompress gzip, so the ratio is in its favour

and prints times, MB/s of tar, output sizes, peak RSS and the ratios the
issues set targets for. Then the push benchmark (bench/bench_push.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from support import corpus  # noqa: E402

BENCH_PACKAGES = ("perl", "python3", "git", "openssl")

CONVERT = """
import sys, json
from converter.chunked.writer import convert_layer
with open(sys.argv[2], "wb") as out:
    r = convert_layer(lambda: open(sys.argv[1], "rb"), out, threads=int(sys.argv[3]))
print(json.dumps({"size": r.size, "chunked": r.chunked, "tar": r.tar_size}))
"""


def run_child(cmd: list[str]) -> tuple[float, float, bytes]:
    """Wall seconds, the child's own peak RSS (MiB, from wait4) and its stdout."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {err.decode()[-2000:]}")
    return dt, ru.ru_maxrss / 1024, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="zconv threads (0: all cores)")
    ap.add_argument("--no-push", action="store_true", help="skip the push benchmark")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from converter.chunked.writer import DEFAULT_LEVEL

    print("bench: preparing the layer (debootstrap once, then cached) ...", flush=True)
    tar = corpus.debian_rootfs_tar(BENCH_PACKAGES)
    gz = tar.with_suffix(".tar.gz")
    if not gz.exists():
        corpus.gzip_layer(tar, gz)
    tar_mb = tar.stat().st_size / 1e6
    interop = subprocess.run(["bash", str(ROOT / "tests/interop/build.sh")], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="zconv-bench-"))
    best: dict[str, dict] = {}

    def keep(name: str, **m) -> None:
        if name not in best or m["seconds"] < best[name]["seconds"]:
            best[name] = m

    try:
        for r in range(a.rounds):
            out = work / "pipe.zst"
            dt, _, _ = run_child(["bash", "-c", f"gzip -dc {gz} | zstd -q -T0 -{DEFAULT_LEVEL} -c > {out}"])
            keep("pipeline", seconds=dt, size=out.stat().st_size)
            out = work / "zconv.zst"
            dt, rss, res = run_child([py, "-c", CONVERT, str(gz), str(out), str(a.threads)])
            info = json.loads(res)
            assert info["chunked"], "bench layer was not written as zstd:chunked"
            keep("zconv", seconds=dt, size=info["size"], rss_mib=rss)
            out = work / "ref.zst"
            dt, rss, res = run_child([interop, "compress", str(tar), "--out", str(out)])
            keep("reference", seconds=dt, size=json.loads(res)["size"], rss_mib=rss)
            print(f"bench: round {r + 1}/{a.rounds} done", flush=True)
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()

    z, p, ref = best["zconv"], best["pipeline"], best["reference"]
    report = {
        "layer": {"tar_mb": round(tar_mb, 1), "gzip_mb": round(gz.stat().st_size / 1e6, 1),
                  "packages": ["minbase", *BENCH_PACKAGES]},
        "level": DEFAULT_LEVEL,
        "zconv": {**z, "tar_mb_per_s": tar_mb / z["seconds"]},
        "pipeline_gzip_zstd": p,
        "reference_go_writer": ref,
        "ratios": {
            "zconv_time_over_pipeline": z["seconds"] / p["seconds"],
            "reference_time_over_zconv": ref["seconds"] / z["seconds"],
            "zconv_size_over_reference": z["size"] / ref["size"],
            "zconv_size_over_pipeline": z["size"] / p["size"],
        },
    }
    print()
    print(f"layer: Debian bookworm minbase+{','.join(BENCH_PACKAGES)}: {tar_mb:.1f} MB tar, "
          f"{report['layer']['gzip_mb']} MB gzip; zstd level {DEFAULT_LEVEL}; best of {a.rounds}")
    print(f"{'':24}{'seconds':>9}{'MB/s tar':>10}{'output MB':>11}{'peak RSS MiB':>14}")
    for name, m in (("zconv (gzip in)", z), ("gzip -dc | zstd -T0", p), ("reference Go writer", ref)):
        rss = f"{m['rss_mib']:.0f}" if "rss_mib" in m else "-"
        print(f"{name:24}{m['seconds']:9.2f}{tar_mb / m['seconds']:10.1f}{m['size'] / 1e6:11.2f}{rss:>14}")
    rt = report["ratios"]
    print(f"zconv time / pipeline time:   {rt['zconv_time_over_pipeline']:.2f}x  (target <= 2, aim 1.2)")
    print(f"reference time / zconv time:  {rt['reference_time_over_zconv']:.2f}x  (target >= 5, aim 10)")
    print(f"zconv size / reference size:  {rt['zconv_size_over_reference']:.4f}  (target <= 1)")
    print(f"zconv size / pipeline size:   {rt['zconv_size_over_pipeline']:.4f}  (the price of per-file frames)")
    print(f"zconv peak RSS:               {z['rss_mib']:.0f} MiB (target < 200)")
    if a.json:
        print(json.dumps(report, indent=2))
    if not a.no_push:
        print()
        import bench_push

        bench_push.run(256, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
