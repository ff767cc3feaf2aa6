#!/usr/bin/env python3
"""`make bench`: the writer's peak memory as a layer's entry count grows (issue 10 item 5).

Layers of tiny files (100-300 bytes, tests/support/synth.py with
sizes=(100, 300), 1 KiB of tar each, generated once and cached) so that
the cost per tar entry is what is measured, not payload buffers: 150,000,
300,000 and 600,000 files (the last a TOC just under the consumer's 150 MiB
limit), and 650,000 files, whose TOC is over it, so the writer gives up on
zstd:chunked and writes plain zstd (a second pass over the tar).

Each layer is converted by convert_layer in a fresh process (the CONVERT
snippet of bench.py, all cores), whose peak RSS comes from wait4. Printed:
peak RSS per layer, and the growth per 100,000 TOC entries from the
smallest to the largest chunked layer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import run_child  # noqa: E402
from support import synth  # noqa: E402

SIZES = (100, 300)
FILES = (150_000, 300_000, 600_000, 650_000)

CONVERT = """
import sys, json
from converter.chunked.format import MANIFEST_POSITION_KEY
from converter.chunked.writer import convert_layer
with open(sys.argv[2], "wb") as out:
    r = convert_layer(lambda: open(sys.argv[1], "rb"), out, threads=int(sys.argv[3]))
pos = r.annotations.get(MANIFEST_POSITION_KEY)
print(json.dumps({"size": r.size, "chunked": r.chunked, "tar": r.tar_size, "entries": r.toc_entries,
                  "toc": int(pos.split(":")[2]) if pos else None, "reason": r.reason}))
"""


def measure(files: list[int], threads: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="zconv-bench-memory-") as work:
        out = Path(work) / "out.zst"
        for n in files:
            print(f"bench: memory: preparing {n} tiny files (generated once, then cached) ...", flush=True)
            tar = synth.node_modules_tar(n, sizes=SIZES)
            dt, rss, res, cpu = run_child([sys.executable, "-c", CONVERT, str(tar), str(out), str(threads)])
            rows.append(
                {"files": n, "tar_mb": tar.stat().st_size / 1e6, "seconds": dt, "rss_mib": rss, **json.loads(res)}
            )
            out.unlink()
    return rows


def print_report(rows: list[dict]) -> None:
    print()
    print(f"writer memory per tar entry: tiny files ({SIZES[0]}-{SIZES[1]} bytes), one fresh process each")
    print(
        f"{'files':>9}{'TOC entries':>13}{'tar MB':>9}{'TOC MiB':>9}{'written as':>16}{'seconds':>9}{'peak RSS MiB':>14}"
    )
    for r in rows:
        toc = f"{r['toc'] / 2**20:.1f}" if r["toc"] else "> 150"
        kind = "zstd:chunked" if r["chunked"] else "plain zstd"
        print(
            f"{r['files']:9}{r['entries'] or '-':>13}{r['tar_mb']:9.1f}{toc:>9}{kind:>16}"
            f"{r['seconds']:9.1f}{r['rss_mib']:14.0f}"
        )
    chunked = [r for r in rows if r["chunked"]]
    if len(chunked) >= 2:
        a, b = chunked[0], chunked[-1]
        per = (b["rss_mib"] - a["rss_mib"]) / (b["entries"] - a["entries"]) * 100_000
        print(
            f"peak RSS growth: {per:.1f} MiB per 100,000 TOC entries "
            f"({a['entries']} -> {b['entries']} entries: {a['rss_mib']:.0f} -> {b['rss_mib']:.0f} MiB)"
        )
    for r in rows:
        if r["files"] == 150_000:
            print(f"peak RSS at 150,000 files:      {r['rss_mib']:.0f} MiB (target < 200)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", default=",".join(map(str, FILES)), help="comma-separated file counts")
    ap.add_argument("--threads", type=int, default=0, help="zconv threads (0: all cores)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = measure([int(x) for x in a.files.split(",")], a.threads)
    print_report(rows)
    if a.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
