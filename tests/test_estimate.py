"""`zconv estimate`: the consumer's reuse rules, one at a time (the interop test checks the sum)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from test_reader_builder import build_chunked, make_tar

from converter.chunked.reader import load_layer
from converter.cli import main
from converter.estimate import (
    LayerEstimate,
    StoreCache,
    _Part,
    estimate_layer,
    hard_link_fingerprint,
    merge_missing_chunks,
    merge_toc_entries,
)
from support.corpus import LAYER_ZSTD, LayerBlob, write_oci_image


def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _layer(files, chunk_size: int = 4096):
    b = build_chunked(make_tar(files), chunk_size=chunk_size)
    return b, load_layer(io.BytesIO(b.blob), b.annotations)


def _estimate(old_files, new_files, hard_links=False, reflinks=True) -> LayerEstimate:
    cache = StoreCache()
    if old_files is not None:
        cache.add_layer(_layer(old_files)[1].entries)
    b, layer = _layer(new_files)
    est = LayerEstimate(0, "sha256:" + "0" * 64, len(b.blob), "partial")
    estimate_layer(layer, cache, hard_links, est, reflinks)
    return est


A = _rand(1, 20_000)
B = _rand(2, 30_000)


def test_nothing_in_the_store_means_everything_missing() -> None:
    est = _estimate(None, [("a", A), ("b", B), ("d/", None), ("l", ("sym", "a")), ("e", b"")])
    assert est.total_bytes == est.missing_bytes == len(A) + len(B)
    assert est.files == 2 and est.disk_bytes == len(A) + len(B)


def test_file_found_by_digest_under_any_name() -> None:
    est = _estimate([("old/name", A)], [("new/name", A), ("b", B)])
    assert est.files_found == 1
    assert est.missing_bytes == len(B) and est.total_bytes == len(A) + len(B)


def test_hard_links_need_same_owner_mode_and_xattrs() -> None:
    # make_tar writes regular files with mode 0644; tweak the OLD mode through the TOC entry.
    b, layer = _layer([("a", A)], chunk_size=0)
    entries = [e if e.name != "a" else e.replace(mode=0o600) for e in layer.entries]
    cache = StoreCache()
    cache.add_layer(entries)
    nb, new = _layer([("a", A)], chunk_size=0)
    by_digest = LayerEstimate(0, "x", 0, "partial")
    estimate_layer(new, cache, False, by_digest)
    by_fp = LayerEstimate(0, "x", 0, "partial")
    estimate_layer(new, cache, True, by_fp)
    assert by_digest.missing_bytes == 0
    assert by_fp.missing_bytes == len(A)  # single-chunk file: no chunk to fall back on
    assert by_fp.disk_bytes == len(A) and by_digest.disk_bytes == len(A)
    f = next(e for e in new.entries if e.name == "a")
    assert hard_link_fingerprint(f) != hard_link_fingerprint(next(e for e in entries if e.name == "a"))


def test_changed_file_reuses_unchanged_chunks_only_with_reflinks() -> None:
    changed = A[:8192] + b"X" * 4096 + A[12288:]
    with_reflinks = _estimate([("a", A)], [("a", changed)], reflinks=True)
    assert with_reflinks.chunks_found == 4 and with_reflinks.missing_bytes == 4096
    without = _estimate([("a", A)], [("a", changed)], reflinks=False)
    assert without.chunks_found == 0 and without.missing_bytes == len(changed)
    assert with_reflinks.fetch_bytes < without.fetch_bytes


def test_zero_chunks_are_never_missing_and_add_no_disk() -> None:
    data = _rand(3, 4096) + bytes(8192) + _rand(4, 4096)
    est = _estimate(None, [("z", data)])
    assert est.zero_chunk_bytes == 8192
    assert est.missing_bytes == len(data) - 8192
    assert est.disk_bytes == len(data) - 8192


def test_hardlinks_and_empty_files_count_for_nothing() -> None:
    est = _estimate(None, [("a", A), ("h", ("link", "a")), ("e", b"")])
    assert est.total_bytes == len(A) and est.files == 1


def test_multi_chunk_file_last_range_ends_at_next_payload_like_the_consumer() -> None:
    b, layer = _layer([("a", A), ("d/", None), ("b", B)])
    merged = merge_toc_entries(layer.entries, layer.annotations.toc.offset)
    a = next(m for m in merged if m.entry.name == "a")
    b_entry = next(m for m in merged if m.entry.name == "b").entry
    assert len(a.chunks) == 5
    # chunk entries carry no endOffset, so the consumer ends the file at the next payload start,
    # which includes the header frame of "d/" and "b"
    assert a.end_offset == b_entry.offset
    assert a.chunks[-1].end_offset == b_entry.offset
    assert [c.end_offset for c in a.chunks[:-1]] == [c.offset for c in a.chunks[1:]]


def test_range_merging_follows_merge_missing_chunks() -> None:
    parts = [
        _Part(100, 50, False, False, "a"),
        _Part(150, 50, False, False, "a"),  # same file, adjacent
        _Part(1000, 10, False, False, "b"),  # gap 800 < 1024: merged
        _Part(5000, 10, True, False, "c"),  # found locally: no request
        _Part(9000, 10, False, False, "d"),
    ]  # gap 7990 > 1024: own range
    out = [p for p in merge_missing_chunks(parts, 1024) if not p.origin and not p.hole]
    assert [(p.offset, p.length) for p in out] == [(100, 910), (9000, 10)]
    # above the target, the cheapest gaps are merged even when large
    out = [p for p in merge_missing_chunks(parts, 1) if not p.origin and not p.hole]
    assert [(p.offset, p.length) for p in out] == [(100, 8910)]


def _image(tmp_path: Path, name: str, layers_files: list) -> str:
    blobs = []
    for i, files in enumerate(layers_files):
        if files is None:  # a gzip layer
            blobs.append(make_tar([("plain", b"plain layer")]))
            continue
        b = build_chunked(make_tar(files), chunk_size=4096)
        p = tmp_path / f"{name}-{i}.zst"
        p.write_bytes(b.blob)
        blobs.append(LayerBlob(p, LAYER_ZSTD, b.diff_id, b.annotations))
    write_oci_image(tmp_path / name, "v1", blobs)
    return f"oci:{tmp_path / name}:v1"


def test_cli_json_totals_reuse_and_lower_layers(tmp_path: Path, capsys) -> None:
    base = [("bin/", None), ("bin/sh", B)]
    old = _image(tmp_path, "old", [base, [("a", A)]])
    # layer 0 identical (reused), layer 1 has A under a new name plus C, layer 2 repeats C
    # (found in NEW's own lower layer, committed before it is pulled), layer 3 is gzip (full).
    c = _rand(5, 10_000)
    new = _image(tmp_path, "new", [base, [("a2", A), ("c", c)], [("c-again", c)], None])
    rc = main(["estimate", old, new, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    rep = json.loads(out)
    modes = [x["mode"] for x in rep["layers"]]
    assert modes == ["reused", "partial", "partial", "full"]
    l1, l2, l3 = rep["layers"][1:]
    assert l1["missing_bytes"] == len(c) and l1["total_bytes"] == len(A) + len(c)
    assert l2["missing_bytes"] == 0 and l2["files_found"] == 1
    assert l3["fetch_bytes"] == l3["size"] and l3["reason"] == "not zstd:chunked"
    t = rep["total"]
    assert t["missing_bytes"] == len(c) and t["total_bytes"] == len(A) + 2 * len(c)
    assert t["fetch_bytes"] == l1["fetch_bytes"] + l2["fetch_bytes"] + l3["fetch_bytes"]
    assert t["skipped_percent"] == round(100 * (1 - len(c) / (len(A) + 2 * len(c))), 2)
    rc = main(["estimate", old, new])
    text = capsys.readouterr().out
    assert rc == 0 and "total: missing" in text and "already present" in text


def test_cli_needs_old_and_new(capsys) -> None:
    assert main(["estimate", "oci:/nonexistent"]) == 64
    assert "at least one OLD image" in capsys.readouterr().err


def test_layer_the_consumer_would_refuse_is_a_full_download(tmp_path: Path, capsys) -> None:
    b = build_chunked(make_tar([("a", A)]), mutate_toc=lambda t: t["entries"][0].update(mode=0o777))
    p = tmp_path / "bad.zst"
    p.write_bytes(b.blob)
    write_oci_image(tmp_path / "new", "v1", [LayerBlob(p, LAYER_ZSTD, b.diff_id, b.annotations)])
    old = _image(tmp_path, "old", [[("a", A)]])
    assert main(["estimate", old, f"oci:{tmp_path / 'new'}:v1", "--json"]) == 0
    layer = json.loads(capsys.readouterr().out)["layers"][0]
    assert layer["mode"] == "full" and "TOC and tar-split disagree" in layer["reason"]
    assert layer["fetch_bytes"] == layer["size"]


@pytest.mark.parametrize("value", ["linux/amd64/v9/x", "linux"])
def test_bad_platform_is_a_usage_error(tmp_path: Path, value: str, capsys) -> None:
    img = _image(tmp_path, "i", [[("a", A)]])
    assert main(["estimate", img, img, "--platform", value]) == 64


@pytest.mark.parametrize("command", ["estimate", "verify"])
def test_help_renders(command: str, capsys) -> None:
    # rich markup in option help once broke --help ("[/VARIANT]" read as a closing tag)
    assert main([command, "--help"]) == 0
    assert "Usage: zconv " + command in capsys.readouterr().out
