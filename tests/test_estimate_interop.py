"""`zconv estimate` against the consumer's own "Missing X bytes out of Y".

OLD and NEW images (zstd:chunked, converted by zconv) go into a real
registry; the real containers/storage (tests/interop helper, overlay store,
use_hard_links=true, one layer at a time) pulls OLD then NEW into one store
and reports what it logged. `zconv estimate --hard-links true` on the same
registry references must give the same missing bytes (within 1%) and, per
layer, the same total.
"""

from __future__ import annotations

import http.server
import json
import random
import socketserver
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_reader_builder import make_tar

from support.corpus import write_oci_image
from support.interop import zconv_convert

pytestmark = pytest.mark.interop


def _rand(rnd: random.Random, n: int) -> bytes:
    return rnd.getrandbits(8 * n).to_bytes(n, "little")


def _pair() -> tuple[list[bytes], list[bytes]]:
    """Two versions of an image exercising every way the consumer avoids a download."""
    rnd = random.Random(20261128)
    base = make_tar([("bin/", None), ("bin/sh", _rand(rnd, 90_000)), ("bin/ls", _rand(rnd, 40_000))])
    big = _rand(rnd, 3_000_000)  # many ~64 KiB chunks
    lib = _rand(rnd, 700_000)
    text = b"".join(b"line %d of a config file\n" % i for i in range(20_000))
    common = [
        ("etc/", None),
        ("etc/conf", text),
        ("usr/", None),
        ("usr/lib/", None),
        ("usr/lib/libkeep.so", lib),
        ("usr/lib/libkeep-link.so", ("sym", "libkeep.so")),
    ]
    old_top = make_tar(
        common
        + [
            ("usr/lib/big.bin", big),
            ("usr/share/", None),
            ("usr/share/sparse", bytes(200_000) + _rand(rnd, 5_000) + bytes(300_000)),
            ("usr/share/old-only", _rand(rnd, 50_000)),
        ]
    )
    # NEW: big.bin changed in the middle (chunks before and after are reused),
    # a copy of libkeep under another name (found by digest), a new file with
    # a zero hole, an unchanged base layer (reused whole).
    new_big = big[:1_500_000] + _rand(rnd, 4_000) + big[1_504_000:]
    new_top = make_tar(
        common
        + [
            ("usr/lib/big.bin", new_big),
            ("usr/lib/libkeep-copy.so", lib),
            ("usr/lib/hard", ("link", "usr/lib/libkeep.so")),
            ("usr/share/", None),
            ("usr/share/fresh", _rand(rnd, 30_000) + bytes(100_000) + _rand(rnd, 20_000)),
            ("usr/share/text2", text + b"appended\n"),
        ]
    )
    return [base, old_top], [base, new_top]


def _can_reflink(directory: Path) -> bool:
    """Whether the store's filesystem clones files (containers/storage reuses chunks only then)."""
    a = directory / "reflink-probe"
    a.write_bytes(b"x" * 8192)
    ok = subprocess.run(["cp", "--reflink=always", str(a), str(a) + ".clone"], capture_output=True).returncode == 0
    return ok


def test_estimate_matches_consumer_missing_bytes(interop, registry, tmp_path: Path) -> None:
    old_tars, new_tars = _pair()
    refs = {}
    for name, tars in (("old", old_tars), ("new", new_tars)):
        write_oci_image(tmp_path / f"{name}-src", "v1", list(tars))
        zconv_convert(f"oci:{tmp_path / (name + '-src')}:v1", f"oci:{tmp_path / name}:v1")
        ref = registry.ref("zconv-estimate", name)
        interop.copy(f"oci:{tmp_path / name}:v1", f"docker://{ref}")
        refs[name] = f"docker://{ref}"

    est = subprocess.run(
        [
            sys.executable,
            "-m",
            "converter.cli",
            "estimate",
            refs["old"],
            refs["new"],
            "--hard-links",
            "true",
            "--reflinks",
            str(_can_reflink(tmp_path)).lower(),
            "--tls-verify",
            "false",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert est.returncode == 0, est.stderr
    ours = json.loads(est.stdout)

    store = tmp_path / "store"
    interop.pull(refs["old"], store, log=tmp_path / "old.log")
    theirs = interop.pull(refs["new"], store, log=tmp_path / "new.log")

    # The scenario must really exercise a partial pull with reuse.
    partial = [layer for layer in theirs["layers"] if layer["missing_bytes"] is not None]
    assert partial, f"the consumer logged no 'Missing' line: {theirs['log']}"
    assert theirs["total_bytes"] > 0 and 0 < theirs["missing_bytes"] < theirs["total_bytes"]

    want, got = theirs["missing_bytes"], ours["total"]["missing_bytes"]
    assert abs(got - want) <= 0.01 * want, (
        f"estimate says {got} missing bytes, containers/storage {want} (log: {theirs['log']})"
    )
    assert ours["total"]["total_bytes"] == theirs["total_bytes"]
    by_digest = {layer["digest"]: layer for layer in ours["layers"]}
    for layer in theirs["layers"]:
        mine = by_digest[layer["digest"]]
        if layer["reused"]:
            assert mine["mode"] == "reused", layer["digest"]
        elif layer["missing_bytes"] is not None:
            assert mine["mode"] == "partial"
            assert mine["total_bytes"] == layer["total_bytes"]
            assert abs(mine["missing_bytes"] - layer["missing_bytes"]) <= 0.01 * max(layer["missing_bytes"], 1)
    # Files found in OLD and zero chunks are not fetched: less than the blobs.
    pulled = [x for x in ours["layers"] if x["mode"] != "reused"]
    assert ours["total"]["fetch_bytes"] < sum(x["size"] for x in pulled)


def test_estimate_gzip_old_image_then_chunked_version(interop, registry, tmp_path: Path) -> None:
    """A client with the gzip image pulls its zstd:chunked conversion: gzip layers leave no
    TOC behind, so only NEW's own lower layers help, exactly as the consumer logs it."""
    sample = Path(__file__).resolve().parent.parent / "testdata" / "sample"
    zconv_convert(f"oci:{sample}", f"oci:{tmp_path / 'z'}")
    old, new = (
        f"docker://{registry.ref('zconv-estimate-gz', 'gz')}",
        f"docker://{registry.ref('zconv-estimate-gz', 'z')}",
    )
    interop.copy(f"oci:{sample}:v1", old)
    interop.copy(f"oci:{tmp_path / 'z'}:v1", new)
    est = subprocess.run(
        [
            sys.executable,
            "-m",
            "converter.cli",
            "estimate",
            old,
            new,
            "--hard-links",
            "true",
            "--reflinks",
            str(_can_reflink(tmp_path)).lower(),
            "--tls-verify",
            "false",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert est.returncode == 0, est.stderr
    ours = json.loads(est.stdout)
    interop.pull(old, tmp_path / "store")
    theirs = interop.pull(new, tmp_path / "store")
    assert [(x["missing_bytes"], x["total_bytes"]) for x in ours["layers"]] == [
        (x["missing_bytes"], x["total_bytes"]) for x in theirs["layers"]
    ], theirs["log"]
    assert any(x["missing_bytes"] < x["total_bytes"] for x in theirs["layers"])  # lower-layer reuse happened


class _CountingProxy(http.server.BaseHTTPRequestHandler):
    """Read-only pass-through to the registry that records blob bytes sent to the client."""

    protocol_version = "HTTP/1.1"
    upstream = ""
    blob_gets: list = []

    def do_GET(self) -> None:
        self._forward("GET")

    def do_HEAD(self) -> None:
        self._forward("HEAD")

    def _forward(self, method: str) -> None:
        req = urllib.request.Request(self.upstream + self.path, method=method)
        merged: dict[str, str] = {}
        for k, v in self.headers.items():  # repeated headers (Accept) must all reach the registry
            if k.lower() not in ("host", "connection"):
                merged[k] = f"{merged[k]}, {v}" if k in merged else v
        for k, v in merged.items():
            req.add_header(k, v)
        try:
            resp = urllib.request.urlopen(req, timeout=60)
        except urllib.error.HTTPError as e:
            resp = e
        body = resp.read() if method == "GET" else b""
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header(
            "Content-Length", str(len(body)) if method == "GET" else resp.headers.get("Content-Length", "0")
        )
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)
            if "/blobs/" in self.path:
                self.blob_gets.append((self.path.rsplit("/", 1)[-1], self.headers.get("Range"), len(body)))

    def log_message(self, *args: object) -> None:
        pass


def test_estimate_fetch_bytes_match_what_the_consumer_downloads(interop, registry, tmp_path: Path) -> None:
    """fetch_bytes (TOC + tar-split + merged ranges) against the bytes the consumer really
    received for the layer blobs, counted by a pass-through proxy. Multipart range
    answers add a few part headers, hence the small allowance per range."""
    old_tars, new_tars = _pair()
    for name, tars in (("old", old_tars), ("new", new_tars)):
        write_oci_image(tmp_path / f"{name}-src", "v1", list(tars))
        zconv_convert(f"oci:{tmp_path / (name + '-src')}:v1", f"oci:{tmp_path / name}:v1")
        interop.copy(f"oci:{tmp_path / name}:v1", f"docker://{registry.ref('zconv-fetch', name)}")

    class Handler(_CountingProxy):
        upstream = registry.url
        blob_gets: list = []

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{srv.server_address[1]}"
        old, new = f"docker://{host}/zconv-fetch:old", f"docker://{host}/zconv-fetch:new"
        est = subprocess.run(
            [
                sys.executable,
                "-m",
                "converter.cli",
                "estimate",
                old,
                new,
                "--hard-links",
                "true",
                "--reflinks",
                str(_can_reflink(tmp_path)).lower(),
                "--tls-verify",
                "false",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert est.returncode == 0, est.stderr
        ours = json.loads(est.stdout)
        interop.pull(old, tmp_path / "store")
        Handler.blob_gets.clear()
        interop.pull(new, tmp_path / "store")
    finally:
        srv.shutdown()
        srv.server_close()
    layer_digests = {x["digest"].split(":")[1] for x in ours["layers"] if x["mode"] == "partial"}
    got = [g for g in Handler.blob_gets if g[0].split(":")[-1] in layer_digests]
    assert got, Handler.blob_gets
    received = sum(g[2] for g in got)
    ranges = sum(x["ranges"] for x in ours["layers"]) + 2 * len(layer_digests)  # + TOC and tar-split
    want = ours["total"]["fetch_bytes"]

    assert want <= received <= want * 1.01 + 200 * ranges, (want, received, got)
