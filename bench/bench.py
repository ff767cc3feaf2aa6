#!/usr/bin/env python3
"""`make bench`: zconv on a realistic layer, next to its baselines, in one run.

The layers: a Debian bookworm root filesystem made by debootstrap (minbase
plus a few packages, so the tar is over 200 MB), and a generated
node_modules-like layer of 150,000 files of about 2 KB (~445 MB of tar,
tests/support/synth.py), where the cost per tar entry dominates. Both are
gzip-compressed at level 6 as image layers usually are, built once and
cached (tests/support/corpus.py).

Measured in the same run, best of --rounds, alternating:

  pipeline   `gzip -dc layer.tar.gz | zstd -T0 -<level>`: a plain zstd
             recompression, the floor for any converter
  zconv      converting the gzip blob to zstd:chunked (a fresh process, so
             its peak RSS is its own)
  reference  containers/storage's own writer (compressor.ZstdCompressor, Go,
             its default level) on the uncompressed tar: it does not even
             decompress gzip, so the ratio is in its favour

and prints times, CPU seconds (user+sys, less sensitive than wall time to
other load on the machine, whose load average is printed too), MB/s of
tar, output sizes, peak RSS and the ratios the issues set targets for.
Then the push benchmark (bench/bench_push.py).
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

from support import corpus, synth  # noqa: E402

BENCH_PACKAGES = ("perl", "python3", "git", "openssl")
SMALL_FILES = 150_000  # the node_modules-like layer: ~445 MB of tar

CONVERT = """
import sys, json
from converter.chunked.writer import convert_layer
with open(sys.argv[2], "wb") as out:
    r = convert_layer(lambda: open(sys.argv[1], "rb"), out, threads=int(sys.argv[3]))
print(json.dumps({"size": r.size, "chunked": r.chunked, "tar": r.tar_size}))
"""


def run_child(cmd: list[str]) -> tuple[float, float, bytes, float]:
    """Wall seconds, the child's own peak RSS (MiB, from wait4), its stdout and its CPU seconds (user+sys)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {err.decode()[-2000:]}")
    return dt, ru.ru_maxrss / 1024, out, ru.ru_utime + ru.ru_stime


def load_average() -> float:
    return os.getloadavg()[0]


def measure(tar: Path, gz: Path, rounds: int, threads: int, interop: str, level: int) -> dict:
    """Best of `rounds` (alternating) for the pipeline, zconv and the reference on one layer."""
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="zconv-bench-"))
    best: dict[str, dict] = {}
    loads = []

    def keep(name: str, **m) -> None:
        if name not in best or m["seconds"] < best[name]["seconds"]:
            best[name] = m

    try:
        for r in range(rounds):
            loads.append(load_average())
            out = work / "pipe.zst"
            dt, _, _, cpu = run_child(["bash", "-c", f"gzip -dc {gz} | zstd -q -T0 -{level} -c > {out}"])
            keep("pipeline", seconds=dt, size=out.stat().st_size, cpu=cpu)
            out = work / "zconv.zst"
            dt, rss, res, cpu = run_child([py, "-c", CONVERT, str(gz), str(out), str(threads)])
            info = json.loads(res)
            assert info["chunked"], "bench layer was not written as zstd:chunked"
            keep("zconv", seconds=dt, size=info["size"], rss_mib=rss, cpu=cpu)
            out = work / "ref.zst"
            dt, rss, res, cpu = run_child([interop, "compress", str(tar), "--out", str(out)])
            keep("reference", seconds=dt, size=json.loads(res)["size"], rss_mib=rss, cpu=cpu)
            print(f"bench: {tar.name}: round {r + 1}/{rounds} done (load average {load_average():.1f})", flush=True)
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    z, p, ref = best["zconv"], best["pipeline"], best["reference"]
    tar_mb = tar.stat().st_size / 1e6
    return {
        "layer": {"tar": tar.name, "tar_mb": round(tar_mb, 1), "gzip_mb": round(gz.stat().st_size / 1e6, 1)},
        "level": level,
        "rounds": rounds,
        "load_average_at_rounds": [round(x, 1) for x in loads],
        "cpus": os.cpu_count(),
        "zconv": {**z, "tar_mb_per_s": tar_mb / z["seconds"]},
        "pipeline_gzip_zstd": p,
        "reference_go_writer": ref,
        "ratios": {
            "zconv_time_over_pipeline": z["seconds"] / p["seconds"],
            "reference_time_over_zconv": ref["seconds"] / z["seconds"],
            "zconv_size_over_reference": z["size"] / ref["size"],
            "zconv_size_over_pipeline": z["size"] / p["size"],
            "zconv_cpu_over_pipeline": z["cpu"] / p["cpu"],
            "reference_cpu_over_zconv": ref["cpu"] / z["cpu"],
        },
    }


def print_report(title: str, rep: dict) -> None:
    z, p, ref = rep["zconv"], rep["pipeline_gzip_zstd"], rep["reference_go_writer"]
    tar_mb = rep["layer"]["tar_mb"]
    print()
    print(
        f"layer: {title}: {tar_mb:.1f} MB tar, {rep['layer']['gzip_mb']} MB gzip; zstd level {rep['level']}; "
        f"best of {rep['rounds']}; {rep['cpus']} CPUs, load average {rep['load_average_at_rounds']}"
    )
    print(f"{'':24}{'seconds':>9}{'CPU s':>8}{'MB/s tar':>10}{'output MB':>11}{'peak RSS MiB':>14}")
    for name, m in (("zconv (gzip in)", z), ("gzip -dc | zstd -T0", p), ("reference Go writer", ref)):
        rss = f"{m['rss_mib']:.0f}" if "rss_mib" in m else "-"
        print(
            f"{name:24}{m['seconds']:9.2f}{m['cpu']:8.2f}{tar_mb / m['seconds']:10.1f}{m['size'] / 1e6:11.2f}{rss:>14}"
        )
    rt = rep["ratios"]
    print(
        f"zconv time / pipeline time:   {rt['zconv_time_over_pipeline']:.2f}x  (target <= 1.15)"
        f"   [CPU time: {rt['zconv_cpu_over_pipeline']:.2f}x]"
    )
    print(
        f"reference time / zconv time:  {rt['reference_time_over_zconv']:.2f}x  (target >= 5)"
        f"   [CPU time: {rt['reference_cpu_over_zconv']:.2f}x]"
    )
    print(f"zconv size / reference size:  {rt['zconv_size_over_reference']:.4f}  (target <= 1)")
    print(f"zconv size / pipeline size:   {rt['zconv_size_over_pipeline']:.4f}  (the price of per-file frames)")
    print(f"zconv peak RSS:               {z['rss_mib']:.0f} MiB (target < 200)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="zconv threads (0: all cores)")
    ap.add_argument("--layers", default="debian,small-files", help="comma-separated: debian, small-files")
    ap.add_argument("--no-push", action="store_true", help="skip the push benchmark")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from converter.chunked.writer import DEFAULT_LEVEL

    interop = (
        subprocess.run(["bash", str(ROOT / "tests/interop/build.sh")], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    reports = {}
    for layer in a.layers.split(","):
        if layer == "debian":
            print("bench: preparing the Debian layer (debootstrap once, then cached) ...", flush=True)
            tar = corpus.debian_rootfs_tar(BENCH_PACKAGES)
            title = f"Debian bookworm minbase+{','.join(BENCH_PACKAGES)}"
        elif layer == "small-files":
            print(
                f"bench: preparing the small-files layer ({SMALL_FILES} files, generated once, then cached) ...",
                flush=True,
            )
            tar = synth.node_modules_tar(SMALL_FILES)
            title = f"node_modules-like, {SMALL_FILES} files of ~2 KB"
        else:
            raise SystemExit(f"bench: unknown layer {layer!r} (debian, small-files)")
        gz = tar.with_suffix(".tar.gz")
        if not gz.exists():
            corpus.gzip_layer(tar, gz)
        rep = measure(tar, gz, a.rounds, a.threads, interop, DEFAULT_LEVEL)
        reports[layer] = rep
        print_report(title, rep)
    if a.json:
        print(json.dumps(reports, indent=2))
    if not a.no_push:
        print()
        import bench_push

        bench_push.run(256, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
