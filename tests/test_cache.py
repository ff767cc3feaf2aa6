"""Frame cache and layer memo: output never changes, damage and concurrency are survived, size is bounded."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from converter.cache.frames import FrameCache
from converter.convert import ConvertOptions, convert_refs
from converter.errors import BadInputError
from support.corpus import write_oci_image


def _text(rng: random.Random, n: int) -> bytes:
    """Compressible but not trivial: words drawn at random."""
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + (b"\n" if rng.random() < 0.1 else b" ")
    return bytes(out[:n])


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1700000000
            ti.mode = 0o644
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def files_v1(seed: int = 1, n: int = 60, big: int = 2) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"usr/share/doc/f{i:03d}.txt": _text(rng, rng.randint(200, 20000)) for i in range(n)}
    for i in range(big):  # several chunks each
        files[f"usr/lib/big{i}.bin"] = _text(rng, 600_000)
    return files


def _changed(files: dict[str, bytes]) -> list[str]:
    return [n for n in sorted(files) if n.endswith(".txt")][::7]


def files_v2(files: dict[str, bytes]) -> dict[str, bytes]:
    rng = random.Random(99)
    out = dict(files)
    for name in _changed(files):
        out[name] = _text(rng, len(out[name]) or 100)
    out["usr/share/doc/new.txt"] = _text(rng, 5000)
    return out


def image(path: Path, files: dict[str, bytes], tag: str = "v1") -> Path:
    write_oci_image(path, tag, [make_tar(files)])
    return path


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def convert(src: Path, dst: Path, cache: Path | None, **kw) -> dict:
    opts = ConvertOptions(cache=cache is not None, cache_dir=str(cache) if cache else None, **kw)
    return convert_refs(f"oci:{src}", f"oci:{dst}", opts).to_json()


def test_output_identical_cold_warm_and_any_thread_count(tmp_path):
    src = image(tmp_path / "src", files_v1())
    cache = tmp_path / "cache"
    plain = convert(src, tmp_path / "plain", None, threads=2)
    cold = convert(src, tmp_path / "cold", cache, threads=1)
    warm = convert(src, tmp_path / "warm", cache, threads=4)
    warm1 = convert(src, tmp_path / "warm1", cache, threads=1)
    assert tree(tmp_path / "cold") == tree(tmp_path / "plain") == tree(tmp_path / "warm") == tree(tmp_path / "warm1")
    assert "frames" not in plain
    n = cold["frames"]["compressed"]["frames"]
    assert n > 30 and cold["frames"]["cache"]["frames"] == 0
    # the warm runs compressed nothing: every payload frame came from the cache
    for w in (warm, warm1):
        assert w["frames"]["cache"]["frames"] == n and w["frames"]["compressed"]["frames"] == 0
    info = FrameCache(cache).info()
    assert info["entries"] > 0 and info["last_run"]["hit_rate"] == 1.0


def test_v2_after_v1_compresses_only_changed_chunks(tmp_path):
    f1 = files_v1()
    f2 = files_v2(f1)
    cache = tmp_path / "cache"
    convert(image(tmp_path / "s1", f1), tmp_path / "o1", cache)
    warm = convert(image(tmp_path / "s2", f2), tmp_path / "o2", cache)
    cold = convert(tmp_path / "s2", tmp_path / "o2cold", None)
    assert tree(tmp_path / "o2") == tree(tmp_path / "o2cold")
    fr = warm["frames"]
    changed = _changed(f1) + ["usr/share/doc/new.txt"]
    # only the changed files (and their tar headers) were compressed again; everything else came from the cache
    assert 0 < fr["compressed"]["bytes"] <= sum(len(f2[n]) + 2048 for n in changed)
    # every other frame the cache was asked for came from it (frames under min_frame are never asked for)
    alone = convert(tmp_path / "s2", tmp_path / "o2alone", tmp_path / "empty-cache")["frames"]
    assert fr["cache"]["frames"] + fr["compressed"]["frames"] == alone["compressed"]["frames"]
    assert fr["cache"]["bytes"] > 4 * fr["compressed"]["bytes"]
    assert cold["images"][0]["digest"] == warm["images"][0]["digest"]


def _packs(cache: Path) -> list[Path]:
    return sorted((cache / "packs").glob("*.pack"))


def test_damaged_cache_entries_never_change_the_output(tmp_path):
    src = image(tmp_path / "src", files_v1())
    cache = tmp_path / "cache"
    cold = convert(src, tmp_path / "cold", cache)
    n = cold["frames"]["compressed"]["frames"]
    (pack,) = _packs(cache)
    data = bytearray(pack.read_bytes())
    for off in range(100, len(data), len(data) // 7):  # flip a byte in several frames
        data[off] ^= 0x40
    pack.write_bytes(bytes(data))
    warm = convert(src, tmp_path / "warm", cache)
    assert tree(tmp_path / "warm") == tree(tmp_path / "cold")
    dropped = warm["frames"]["compressed"]["frames"]
    assert 0 < dropped < n and warm["frames"]["cache"]["frames"] == n - dropped
    # damaged entries were dropped and stored again: the next run is all hits
    again = convert(src, tmp_path / "again", cache)
    assert again["frames"]["cache"]["frames"] == n
    assert tree(tmp_path / "again") == tree(tmp_path / "cold")


def test_truncated_pack_and_damaged_index(tmp_path):
    src = image(tmp_path / "src", files_v1())
    cache = tmp_path / "cache"
    convert(src, tmp_path / "cold", cache)
    (pack,) = _packs(cache)
    with open(pack, "r+b") as f:  # as if the run had been killed half way through its writes
        f.truncate(pack.stat().st_size // 2)
    half = convert(src, tmp_path / "half", cache)
    assert tree(tmp_path / "half") == tree(tmp_path / "cold")
    assert half["frames"]["cache"]["frames"] > 0 and half["frames"]["compressed"]["frames"] > 0
    # an index that is not a database any more: the cache starts over, the output is the same
    for p in cache.glob("index.db*"):
        p.unlink()
    (cache / "index.db").write_bytes(b"\x00garbage" * 1000)
    fresh = convert(src, tmp_path / "fresh", cache)
    assert tree(tmp_path / "fresh") == tree(tmp_path / "cold")
    assert fresh["frames"]["cache"]["frames"] == 0


def _zconv(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "converter.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


def test_concurrent_writers_and_a_killed_run(tmp_path):
    files = files_v1(seed=5, n=400, big=6)
    src = image(tmp_path / "src", files)
    ref = tmp_path / "ref"
    convert(src, ref, None)
    cache = tmp_path / "cache"
    # a run killed while it writes frames
    p = _zconv("convert", "--cache-dir", str(cache), "-q", f"oci:{src}", f"oci:{tmp_path / 'killed'}")
    time.sleep(1.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # two runs sharing the cache at the same time
    procs = [
        _zconv("convert", "--cache-dir", str(cache), "--json", f"oci:{src}", f"oci:{tmp_path / f'c{i}'}")
        for i in range(2)
    ]
    outs = [pr.communicate(timeout=300) for pr in procs]
    for pr, (_, err) in zip(procs, outs):
        assert pr.returncode == 0, err.decode()
    for i in range(2):
        assert tree(tmp_path / f"c{i}") == tree(ref)
    warm = convert(src, tmp_path / "warm", cache)
    assert tree(tmp_path / "warm") == tree(ref)
    assert warm["frames"]["compressed"]["frames"] == 0


def test_pruning_keeps_the_cache_under_its_bound_least_recently_used_first(tmp_path):
    cache = tmp_path / "cache"
    srcs = [image(tmp_path / f"s{i}", files_v1(seed=10 + i, n=20, big=2)) for i in range(3)]
    first = convert(srcs[0], tmp_path / "o0", cache)
    one = FrameCache(cache).disk_size()
    bound = int(one * 2.6)  # room for two images' frames, not three
    for i in (1, 2):
        convert(srcs[i], tmp_path / f"o{i}", cache, cache_max_size=bound)
        assert FrameCache(cache).disk_size() <= bound
    # the oldest image's frames went, the two recent ones stay
    again = [convert(srcs[i], tmp_path / f"again{i}", cache, cache_max_size=bound)["frames"] for i in (2, 0)]
    assert again[0]["compressed"]["frames"] == 0
    # of the oldest image only the few frames the newer ones share (the same tar headers) are left,
    # moved to their packs when they were hit: one hot frame does not keep a cold pack alive
    n0 = first["frames"]["compressed"]["frames"]
    assert again[1]["cache"]["frames"] < n0 / 20
    assert again[1]["cache"]["frames"] + again[1]["compressed"]["frames"] == n0
    assert FrameCache(cache).disk_size() <= bound


def test_cache_command_info_prune_clear(tmp_path):
    cache = tmp_path / "cache"
    src = image(tmp_path / "src", files_v1(n=10, big=1))
    convert(src, tmp_path / "o", cache)
    convert(src, tmp_path / "o2", cache)

    def run(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "converter.cli", "cache", *args, "--cache-dir", str(cache)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    info = json.loads(run("info", "--json"))
    assert info["entries"] > 0 and info["last_run"]["hit_rate"] == 1.0 and info["memo"]["layers"] == 1
    assert "100.0%" in run("info")
    run("prune", "--max-size", "0")
    assert json.loads(run("info", "--json"))["entries"] == 0
    convert(src, tmp_path / "o3", cache)
    run("clear")
    info = json.loads(run("info", "--json"))
    assert info["entries"] == 0 and info["memo"]["layers"] == 0


def test_memo_skips_a_layer_already_at_the_destination_without_reading_it(tmp_path):
    src = image(tmp_path / "src", files_v1(n=10, big=1))
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    first = convert(src, out, cache)
    before = tree(out)
    # the source's layer blob now fails its digest check if anything reads it
    manifest = json.loads((src / "index.json").read_text())["manifests"][0]
    mdoc = json.loads((src / "blobs/sha256" / manifest["digest"][7:]).read_bytes())
    layer = src / "blobs/sha256" / mdoc["layers"][0]["digest"][7:]
    layer.write_bytes(b"\x1f\x8b" + os.urandom(layer.stat().st_size - 2))
    second = convert(src, out, cache)
    assert [r["action"] for r in second["layers"]] == ["present"]
    assert second["layers"][0]["new_digest"] == first["layers"][0]["new_digest"]
    assert tree(out) == before
    # without the memo the damaged source is read, and refused
    with pytest.raises(BadInputError):
        convert(src, tmp_path / "other", None)
