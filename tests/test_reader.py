"""converter/chunked/reader/: reading zstd:chunked metadata, and refusing bad blobs with a precise error."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
import zstandard
from test_reader_builder import build_chunked, make_tar, sample_files

from converter.chunked.format import (
    MANIFEST_CHECKSUM_KEY,
    MANIFEST_POSITION_KEY,
    MAX_TOC_SIZE,
    TARSPLIT_POSITION_KEY,
)
from converter.chunked.reader import (
    BlobAccess,
    check_toc_matches_tarsplit,
    decompress_bounded,
    expected_toc_fields,
    go_clean,
    iter_tarsplit,
    iter_tarsplit_headers,
    load_layer,
    parse_rfc3339,
    parse_tar_header,
    read_chunk,
    read_toc,
    tar_size_from_tarsplit,
)
from converter.chunked.writer import convert_layer
from converter.errors import BadInputError
from support import tarcases


def _fetcher(blob: bytes, calls: list | None = None):
    def fetch(off: int, n: int) -> bytes:
        if calls is not None:
            calls.append((off, n))
        return blob[off : off + n]

    return fetch


@pytest.fixture(scope="module")
def built():
    return build_chunked(make_tar(sample_files(), trailing=bytes(1024)), chunk_size=4096)


# ------------------------------------------------------------ good input


def test_read_toc_through_range_callable_and_file_give_the_same_toc(built) -> None:
    calls: list = []
    toc = read_toc(_fetcher(built.blob, calls), built.annotations, size=len(built.blob))
    assert toc == read_toc(io.BytesIO(built.blob), built.annotations)
    assert [e["name"] for e in toc["entries"] if e["type"] != "chunk"][:3] == ["etc/", "etc/hostname", "etc/empty"]
    assert len(calls) == 1  # only the TOC frame is read, nothing else


def test_load_layer_payloads_decompress_to_the_files(built) -> None:
    layer = load_layer(io.BytesIO(built.blob), built.annotations)
    with tarfile.open(fileobj=io.BytesIO(built.tar)) as tf:
        want = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}
    for f in layer.files:
        data = b"".join(read_chunk(layer.access, c) for c in f.chunks)
        assert data == want[f.entry.name]
    assert tar_size_from_tarsplit(layer.tarsplit) == len(built.tar)
    tool = next(f for f in layer.files if f.entry.name == "usr/bin/tool")
    assert len(tool.chunks) == 5 and [c.chunk_offset for c in tool.chunks] == [0, 4096, 8192, 12288, 16384]


def _convert_with_writer(tar: bytes, tmp_path: Path, name: str):
    out_path = tmp_path / f"{name}.zst"
    with open(out_path, "w+b") as out:
        res = convert_layer(lambda: io.BytesIO(tar), out, name=name)
    return res, out_path.read_bytes()


@pytest.mark.parametrize("case", sorted(tarcases.all_cases()))
def test_writer_output_passes_the_consumer_checks(case: str, tmp_path: Path) -> None:
    """The lead's writer and this reader parse tars independently (Go semantics both):
    for every edge-case tar, the TOC the writer emits matches the tar-split headers
    as the reader parses them, and every payload range has its digest."""
    tar = tarcases.all_cases()[case]
    res, blob = _convert_with_writer(tar, tmp_path, case)
    assert res.chunked, res.reason
    layer = load_layer(io.BytesIO(blob), res.annotations, name=case)  # raises on any mismatch
    for f in layer.files:
        data = b"".join(read_chunk(layer.access, c) for c in f.chunks)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == f.entry.digest or not f.chunks


def _headers(tar: bytes) -> list:
    """Parse every entry's header segment of `tar` with the reader's Go-semantics parser."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
    return [expected_toc_fields(parse_tar_header(tar[m.offset : m.offset_data])) for m in members], members


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_go_tar_semantics_directory_slash_and_long_names(fmt: int) -> None:
    hdrs, members = _headers(make_tar(sample_files(), fmt=fmt))
    names = [h["name"] for h in hdrs]
    assert "etc/" in names and "etc" not in names  # Go keeps the directory's slash; tarfile drops it
    long_name = next(m.name for m in members if len(m.name) > 100)
    assert long_name in names  # GNU 'L' records and PAX path records both resolved
    link = next(h for h in hdrs if h["type"] == "hardlink")
    assert link["linkname"] == "usr/bin/tool" and link["size"] == 0  # no payload, so no padding


def test_pax_xattrs_become_base64_of_the_raw_bytes() -> None:
    hdrs, members = _headers(tarcases.python_pax_xattrs())
    with_x = [(h, m) for h, m in zip(hdrs, members) if h["xattrs"]]
    assert with_x
    import base64

    for h, m in with_x:
        for k, v in h["xattrs"].items():
            raw = m.pax_headers["SCHILY.xattr." + k].encode("utf-8", "surrogateescape")
            assert base64.b64decode(v) == raw


def test_time_parsing_and_go_path_clean() -> None:
    assert parse_rfc3339("2023-11-14T22:13:20Z") == (1_700_000_000, 0)
    assert parse_rfc3339("2023-11-14T23:13:20.5+01:00") == (1_700_000_000, 500_000_000)
    assert parse_rfc3339("0001-01-01T00:00:00Z") == (-62135596800, 0)
    with pytest.raises(ValueError):
        parse_rfc3339("2023-02-30T00:00:00Z")
    assert go_clean("./a//b/../c/") == "a/c"
    assert go_clean("/../x") == "/x"
    assert go_clean("") == "."


# ------------------------------------------------------------ bad input


def _ann(built, **kw) -> dict:
    a = dict(built.annotations)
    a.update(kw)
    return a


def test_missing_annotation_is_named(built) -> None:
    ann = dict(built.annotations)
    del ann[TARSPLIT_POSITION_KEY]
    # The TOC alone (what `inspect` reads) does not need the tar-split position...
    assert read_toc(io.BytesIO(built.blob), ann)["entries"]
    # ...a partial pull does: the consumer falls back without it.
    with pytest.raises(BadInputError, match="^layer 3: annotation .*tarsplit-position is missing"):
        load_layer(io.BytesIO(built.blob), ann, name="layer 3")
    del ann[MANIFEST_POSITION_KEY]
    with pytest.raises(BadInputError, match="manifest-position is missing"):
        read_toc(io.BytesIO(built.blob), ann, name="layer 3")


def test_oversized_toc_is_refused_before_reading_anything(built) -> None:
    calls: list = []
    off, ln, _uln, t = built.annotations[MANIFEST_POSITION_KEY].split(":")
    ann = _ann(built, **{MANIFEST_POSITION_KEY: f"{off}:{ln}:{MAX_TOC_SIZE + 1}:{t}"})
    with pytest.raises(BadInputError, match="exceeds the consumer's limit"):
        read_toc(_fetcher(built.blob, calls), ann, size=len(built.blob))
    assert calls == []


def test_position_past_the_end_names_offset(built) -> None:
    ann = _ann(built, **{MANIFEST_POSITION_KEY: f"{len(built.blob) - 10}:100:100:1"})
    with pytest.raises(BadInputError, match=rf"offset {len(built.blob) - 10} length 100 ends past"):
        read_toc(io.BytesIO(built.blob), ann)


@pytest.mark.parametrize("value", ["1:2:3", "a:2:3:1", "-1:2:3:1", "1:2:3:2", "+1:2:3:1", "1:2:3:1:5"])
def test_malformed_manifest_position(built, value: str) -> None:
    with pytest.raises(BadInputError, match="manifest-position|manifest type"):
        read_toc(io.BytesIO(built.blob), _ann(built, **{MANIFEST_POSITION_KEY: value}))


def test_manifest_checksum_mismatch(built) -> None:
    ann = _ann(built, **{MANIFEST_CHECKSUM_KEY: "sha256:" + "0" * 64})
    with pytest.raises(BadInputError, match="does not match manifest-checksum"):
        read_toc(io.BytesIO(built.blob), ann)


def test_tarsplit_digest_mismatch_is_found() -> None:
    b = build_chunked(make_tar(sample_files()), mutate_toc=lambda t: t.update(tarSplitDigest="sha256:" + "1" * 64))
    with pytest.raises(BadInputError, match="does not match the TOC's tarSplitDigest"):
        load_layer(io.BytesIO(b.blob), b.annotations)


def _set(entry_name: str, **fields):
    def mutate(toc: dict) -> None:
        for e in toc["entries"]:
            if e["name"] == entry_name and e["type"] != "chunk":
                e.update(fields)

    return mutate


def test_toc_and_tarsplit_metadata_mismatch_is_reported_per_field() -> None:
    b = build_chunked(make_tar(sample_files()), mutate_toc=_set("etc/hostname", mode=0o600, uid=7))
    layer = load_layer(io.BytesIO(b.blob), b.annotations, check_match=False)
    problems = check_toc_matches_tarsplit(layer.entries, layer.tarsplit, "L")
    assert any("'etc/hostname'" in p and "mode: TOC 600 != tar 644" in p for p in problems), problems
    assert any("uid: TOC 7 != tar 0" in p for p in problems), problems
    with pytest.raises(BadInputError, match="TOC and tar-split disagree"):
        load_layer(io.BytesIO(b.blob), b.annotations)


def test_time_zero_and_epoch_count_as_absent_like_the_consumer() -> None:
    b = build_chunked(make_tar(sample_files()), mutate_toc=_set("etc/hostname", accesstime="1970-01-01T00:00:00Z"))
    layer = load_layer(io.BytesIO(b.blob), b.annotations)  # no error: epoch == absent
    assert layer.entries


def test_entry_missing_from_tarsplit() -> None:
    b = build_chunked(
        make_tar(sample_files()),
        mutate_toc=lambda t: t["entries"].append({"type": "dir", "name": "ghost/"}),
    )
    layer = load_layer(io.BytesIO(b.blob), b.annotations, check_match=False)
    problems = check_toc_matches_tarsplit(layer.entries, layer.tarsplit, "L")
    assert problems == [f"L: TOC entry {len(layer.entries) - 1} (dir 'ghost/'): entry is missing from the tar-split"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t["entries"].append(dict(t["entries"][1])), "path appears twice"),
        (_set("etc/hostname", name="../../etc/passwd"), "contains '..'"),
        (_set("etc/hostname", type="whiteout"), "unknown entry type 'whiteout'"),
        (_set("etc/hostname", size=-5), "size=-5 is out of range"),
        (_set("etc/hostname", mode="644"), "mode is not an integer"),
        (_set("etc/hostname", modtime="yesterday"), "not an RFC 3339 time"),
        (_set("etc/hostname", digest="md5:abc"), "not a sha256 digest"),
        (_set("etc/hostname", endOffset=10**12), "past the frames' end"),
        (lambda t: t["entries"].insert(0, {"type": "chunk", "name": "x"}), "chunk entry without a preceding"),
        (lambda t: t.update(version=2), "version 2 is not 1"),
        (lambda t: t.update(entries={"a": 1}), "entries is not a list"),
    ],
)
def test_crafted_toc_is_refused_with_entry_named(mutate, message: str) -> None:
    b = build_chunked(make_tar(sample_files()), chunk_size=4096, mutate_toc=mutate)
    with pytest.raises(BadInputError, match=message):
        read_toc(io.BytesIO(b.blob), b.annotations, name="layer 0")


def test_overlapping_payload_ranges_are_refused() -> None:
    def overlap(toc: dict) -> None:
        regs = [e for e in toc["entries"] if e.get("offset")]
        regs[1]["offset"] = regs[0]["offset"]
        regs[1].pop("chunkSize", None)

    b = build_chunked(make_tar(sample_files()), mutate_toc=overlap)
    with pytest.raises(BadInputError, match="overlaps entry"):
        read_toc(io.BytesIO(b.blob), b.annotations)


def test_toc_that_is_not_json_or_not_a_toc() -> None:
    for raw, msg in (
        (b"\xff\xfe not json", "not valid JSON"),
        (b"[1,2,3]", "not an object"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply|not valid JSON"),
        (b'{"version":1,"entries":[]} trailing', "not valid JSON"),
    ):
        b = build_chunked(make_tar(sample_files()), toc_bytes=raw)
        with pytest.raises(BadInputError, match=msg):
            read_toc(io.BytesIO(b.blob), b.annotations)


def test_decompression_bomb_in_toc_is_stopped_at_the_declared_size() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b'{"version":1,"entries":[' + b" " * (200 << 20) + b"]}")
    b = build_chunked(make_tar(sample_files()), toc_bytes=b"{}")
    # Re-wrap: put the bomb where the TOC is, with a small declared size and the right checksum.
    from converter.chunked.format import Footer, skippable_frame

    head = b.blob[: int(b.annotations[MANIFEST_POSITION_KEY].split(":")[0]) - 8]
    blob = head + skippable_frame(bomb)
    ts_frame = skippable_frame(b"\x28\xb5\x2f\xfd" + bytes(10))
    toc_off = len(head) + 8
    blob += ts_frame
    blob += skippable_frame(Footer(toc_off, len(bomb), 1000, toc_off + len(bomb) + 8, 14, 10).pack())
    ann = {
        MANIFEST_CHECKSUM_KEY: "sha256:" + hashlib.sha256(bomb).hexdigest(),
        MANIFEST_POSITION_KEY: f"{toc_off}:{len(bomb)}:1000:1",
        TARSPLIT_POSITION_KEY: f"{toc_off + len(bomb) + 8}:14:10",
    }
    tracemalloc.start()
    try:
        with pytest.raises(BadInputError, match="decompresses to more than 1000 bytes"):
            read_toc(io.BytesIO(blob), ann)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(bomb) < 100_000
    assert peak < 16 << 20  # the 200 MiB document never materialises


def test_decompress_bounded_refuses_oversized_output_and_garbage() -> None:
    data = zstandard.ZstdCompressor().compress(bytes(5 << 20))
    with pytest.raises(BadInputError, match="more than 4096 bytes"):
        decompress_bounded(data, 4096, "x")
    with pytest.raises(BadInputError, match="not valid zstd"):
        decompress_bounded(b"\x28\xb5\x2f\xfd garbage", 4096, "x")


def test_tarsplit_crafted_lines_are_refused() -> None:
    good = build_chunked(make_tar(sample_files())).tarsplit
    lines = good.splitlines()
    cases = [
        (b"\n".join([lines[0], lines[0]]), "position 0, expected 1"),
        (b'{"type":3,"position":0}', "unknown entry type 3"),
        (b'{"type":2,"payload":"!!!","position":0}', "not valid base64"),
        (b'{"type":1,"name":"a","size":5,"payload":null,"position":0}', "without a crc64"),
        (b'{"type":1,"name":"a","position":0}\n{"type":1,"name":"./a","position":1}', "appears twice"),
        (b'{"type":2,"payload":"' + __import__("base64").b64encode(b"x" * 600) + b'","position":0}', "bad tar header"),
    ]
    for data, msg in cases:
        with pytest.raises(BadInputError, match=msg):
            list(iter_tarsplit_headers(iter_tarsplit(data, "L"), "L"))


def test_blob_access_refuses_short_reads() -> None:
    acc = BlobAccess(lambda o, n: b"abc", size=100, name="L")
    with pytest.raises(BadInputError, match="got 3 of 10 bytes"):
        acc.read_at(0, 10)
    with pytest.raises(BadInputError, match="outside the blob"):
        acc.read_at(95, 10)


def test_tarsplit_file_name_without_toc_file_is_reported() -> None:
    def rename(lines: list) -> None:
        for d in lines:
            if d["type"] == 1 and d["name"] == "etc/hostname":
                d["name"] = "etc/hostname.bak"

    b = build_chunked(make_tar(sample_files()), mutate_tarsplit=rename)
    layer = load_layer(io.BytesIO(b.blob), b.annotations, check_match=False)
    problems = check_toc_matches_tarsplit(layer.entries, layer.tarsplit, "L")
    assert any("'etc/hostname.bak', 6 bytes) has no regular file" in p for p in problems), problems


def test_load_layer_collects_every_problem_when_given_findings() -> None:
    """verify's mode: every mismatch recorded with the checks passed, the layer still returned."""

    def retime(lines: list) -> None:
        for d in lines:
            if d["type"] == 1 and d["name"] in ("etc/hostname", "usr/bin/tool"):
                d["name"] += ".renamed"

    b = build_chunked(make_tar(sample_files()), mutate_tarsplit=retime)
    with pytest.raises(BadInputError, match=r"\(and \d+ more\)"):
        load_layer(io.BytesIO(b.blob), b.annotations)
    found = SimpleNamespace(problems=[], checks=[], stats={})
    with load_layer(io.BytesIO(b.blob), b.annotations, findings=found) as layer:
        assert layer.entries
    assert sum("has no regular file of that size" in p for p in found.problems) == 2, found.problems
    assert "TOC sha256 equals manifest-checksum; decompresses to its declared length" in found.checks
    assert "TOC and tar-split describe the same entries with the same metadata" not in found.checks
    assert found.stats["entries"] == len(layer.entries) and found.stats["tarsplit_uncompressed"] == len(b.tarsplit)


def test_tarsplit_streamed_in_small_pieces_reads_the_same(monkeypatch) -> None:
    """Values cut at any read boundary (1 MiB in production) are read whole, from bytes or a file."""
    import converter.chunked.reader.tarsplit as ts_mod

    b = build_chunked(make_tar(sample_files()))
    whole = list(iter_tarsplit(b.tarsplit, "L"))
    monkeypatch.setattr(ts_mod, "_READ", 7)
    assert list(iter_tarsplit(io.BytesIO(b.tarsplit), "L")) == whole
    assert tar_size_from_tarsplit(io.BytesIO(b.tarsplit)) == len(b.tar)
    with pytest.raises(BadInputError, match="not valid JSON"):
        list(iter_tarsplit(io.BytesIO(b.tarsplit[:-20]), "L"))


def test_toc_parsed_in_small_pieces_equals_the_json_parse() -> None:
    """The streaming TOC parser accepts and types exactly what json.loads + toc_entries do."""
    from converter.chunked.reader import parse_toc, parse_toc_entries, toc_entries

    b = build_chunked(make_tar(sample_files()))
    raw = json.dumps(b.toc).encode()
    pieces = [raw[i : i + 5] for i in range(0, len(raw), 5)]
    entries, tsd = parse_toc_entries(iter(pieces), "L")
    assert entries == toc_entries(parse_toc(raw, "L"), "L") and tsd == b.toc["tarSplitDigest"]
    for bad_json, msg in (
        (raw[:-1], "not valid JSON"),
        (raw + b"x", "extra data"),
        (b"[1]", "not an object"),
        (b'{"version":1,"entries":5}', "not a list"),
        (b'{"version":2}', "version 2"),
    ):
        with pytest.raises(BadInputError, match=msg):
            parse_toc_entries(iter([bad_json]), "L")


def test_pending_paths_behave_like_the_consumers_map() -> None:
    """ensureTOCMatchesTarSplit fills a map path -> entry in TOC order: a repeated path stands
    for its last entry, each path is taken once, what is left keeps first-appearance order."""
    from converter.chunked.reader import TocEntry
    from converter.chunked.reader.tarsplit import _Pending

    es = [TocEntry(i, "dir", n) for i, n in enumerate(["b", "a", "b", "c", "a", "d"])]
    p = _Pending(es)
    assert list(p.duplicates()) == [es[2], es[4]]
    assert p.pop("a") is es[4] and p.pop("a") is None and p.pop("x") is None
    assert p.left(20) == (3, [es[2], es[3], es[5]])
    assert p.left(1) == (3, [es[2]])
