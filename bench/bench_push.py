#!/usr/bin/env python3
"""Push throughput to a local registry: `zconv push` next to `curl -T` of the same blob.

Starts Debian's docker-registry on 127.0.0.1 (tests/support/registry.py),
makes an OCI layout whose one layer is a large incompressible blob, and in
the same run measures

  * curl -T    : POST an upload session, then one monolithic PUT of the blob
                 with curl (the floor: no client-side work at all)
  * zconv push : the whole CLI push of the layout (HEAD, POST, PATCH chunks
                 of --chunk-size, final PUT, config, manifest, tag)
  * zconv push, monolithic : the same with a chunk size above the blob size
  * RegistryClient.push_blob : the client alone, in process

each to a fresh repository, best of `rounds`, alternating so disk caches
favour no one. Prints MiB/s and the ratio zconv/curl (1.0 = as fast as curl).

    python3 bench/bench_push.py [--mib 256] [--rounds 3]

`run()` returns the numbers as a dict for bench/bench.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.registry import RegistryServer  # noqa: E402


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return "sha256:" + h.hexdigest()
            h.update(b)


def _make_layout(dir: Path, mib: int) -> tuple[Path, Path, str]:
    """Layout with one `mib` MiB incompressible layer; returns (layout, blob path, digest)."""
    blobs = dir / "layout" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = dir / "big.tmp"
    with open(tmp, "wb") as f:
        seed = hashlib.sha256(b"zconv bench").digest()
        block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(32768))  # 1 MiB
        for i in range(mib):
            # vary every MiB so nothing deduplicates or compresses
            f.write(bytes([i & 0xFF]) + block[1:])
    digest = _sha256_file(tmp)
    big = blobs / digest.split(":")[1]
    os.replace(tmp, big)
    size = big.stat().st_size
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest]}}
    ).encode()
    cdig = "sha256:" + hashlib.sha256(config).hexdigest()
    (blobs / cdig.split(":")[1]).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}],
        }
    ).encode()
    mdig = "sha256:" + hashlib.sha256(manifest).hexdigest()
    (blobs / mdig.split(":")[1]).write_bytes(manifest)
    (dir / "layout" / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dir / "layout" / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": mdig,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "v1"},
                    }
                ],
            }
        )
    )
    return dir / "layout", big, digest


def _curl_put(reg: RegistryServer, repo: str, blob: Path, digest: str) -> float:
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(req) as r:
        location = r.headers["Location"]
    if location.startswith("/"):
        location = reg.url + location
    sep = "&" if "?" in location else "?"
    t0 = time.perf_counter()
    subprocess.run(
        [
            "curl",
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-T",
            str(blob),
            "-H",
            "Content-Type: application/octet-stream",
            f"{location}{sep}digest={digest}",
        ],
        check=True,
    )
    return time.perf_counter() - t0


def _zconv_push(reg: RegistryServer, repo: str, layout: Path, chunk_mib: int | None, rss: list[float]) -> float:
    """One CLI push in a fresh process with a fresh cache directory.

    A fresh cache: zconv remembers where it pushed a blob before and would mount it into
    the next repository instead of uploading it (the layer memo), which is not what is measured here.
    """
    args = [
        sys.executable,
        "-c",
        "import sys; from converter.cli import main; sys.exit(main())",
        "push",
        f"oci:{layout}:v1",
        f"docker://{reg.host}/{repo}:v1",
        "--quiet",
    ]
    if chunk_mib is not None:
        args += ["--chunk-size", str(chunk_mib)]
    with tempfile.TemporaryDirectory(prefix="zconv-bench-push-cache-") as cache:
        t0 = time.perf_counter()
        p = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, ZCONV_CACHE_DIR=cache))
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_push: {' '.join(args)} failed")
    rss.append(ru.ru_maxrss / 1024)  # KiB -> MiB (Linux): this process's own peak
    return dt


def _client_push(reg: RegistryServer, repo: str, blob: Path, digest: str, cpu: list[float]) -> float:
    """The registry client alone, in this process (no CLI, no interpreter start)."""
    from converter.image.registry import RegistryClient

    with RegistryClient(reg.host) as c:
        c.ping()
        t0 = time.perf_counter()
        c0 = time.process_time()
        c.push_blob(repo, digest, blob.stat().st_size, lambda: open(blob, "rb"), known_absent=True)
        cpu.append(time.process_time() - c0)
        return time.perf_counter() - t0


def _fixed_cost(reg: RegistryServer, layout: Path, rss: list[float]) -> float:
    """Everything but the blob bytes: interpreter start, imports, HEADs, manifest and tag PUTs.

    Measured as a second push of the same image to the same repository, where every
    blob is skipped; subtracted from the CLI times so they compare with one curl PUT.
    """
    _zconv_push(reg, "bench/fixed", layout, None, rss)
    return min(_zconv_push(reg, "bench/fixed", layout, None, rss) for _ in range(2))


def run(mib: int = 256, rounds: int = 3, report=print) -> dict:
    if shutil.which("curl") is None:
        raise SystemExit("bench_push: curl not found (run .ci/sysdeps)")
    with tempfile.TemporaryDirectory(prefix="zconv-bench-push-") as d, RegistryServer() as reg:
        layout, blob, digest = _make_layout(Path(d), mib)
        size = blob.stat().st_size
        rss: list[float] = []
        startup = _fixed_cost(reg, layout, rss)
        best = {"curl": float("inf"), "zconv": float("inf"), "zconv_mono": float("inf"), "client": float("inf")}
        cpu: list[float] = []
        for r in range(rounds):
            best["curl"] = min(best["curl"], _curl_put(reg, f"bench/curl{r}", blob, digest))
            best["client"] = min(best["client"], _client_push(reg, f"bench/client{r}", blob, digest, cpu))
            best["zconv"] = min(best["zconv"], _zconv_push(reg, f"bench/zconv{r}", layout, None, rss) - startup)
            best["zconv_mono"] = min(
                best["zconv_mono"], _zconv_push(reg, f"bench/mono{r}", layout, mib + 1, rss) - startup
            )
        mibs = {k: size / (1 << 20) / v for k, v in best.items()}
        result = {
            "blob_mib": size / (1 << 20),
            "seconds": best,
            "mib_per_s": mibs,
            "ratio_zconv_vs_curl": best["curl"] / best["zconv"],
            "ratio_zconv_monolithic_vs_curl": best["curl"] / best["zconv_mono"],
            "ratio_client_vs_curl": best["curl"] / best["client"],
            "client_cpu_seconds": min(cpu),
            "zconv_fixed_seconds_subtracted": startup,
        }
        report(f"push of a {size / (1 << 20):.0f} MiB blob to docker-registry on 127.0.0.1 (best of {rounds}):")
        report(f"  curl -T (one PUT)            {mibs['curl']:8.1f} MiB/s  {best['curl']:.2f}s")
        report(
            f"  zconv push (32 MiB chunks)   {mibs['zconv']:8.1f} MiB/s  {best['zconv']:.2f}s"
            f"  = {result['ratio_zconv_vs_curl']:.2f}x curl's throughput"
        )
        report(
            f"  zconv push (one PUT)         {mibs['zconv_mono']:8.1f} MiB/s  {best['zconv_mono']:.2f}s"
            f"  = {result['ratio_zconv_monolithic_vs_curl']:.2f}x curl's throughput"
        )
        report(
            f"  RegistryClient.push_blob     {mibs['client']:8.1f} MiB/s  {best['client']:.2f}s"
            f"  = {result['ratio_client_vs_curl']:.2f}x curl's throughput (in-process, chunked;"
            f" {min(cpu):.2f}s of client CPU: the registry is the bottleneck)"
        )
        result["peak_rss_mib_zconv_push"] = max(rss)
        report(
            f"  peak RSS of a zconv push process: {max(rss):.0f} MiB for a {size / (1 << 20):.0f} MiB blob (streamed)"
        )
        report(
            f"  (fixed cost of a zconv push process, {startup:.2f}s: start-up, imports, HEADs, manifest;"
            " subtracted from the CLI times)"
        )
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = run(a.mib, a.rounds)
    if a.json:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
