"""Hostile and broken zstd:chunked blobs: every one ends in a clear error, never a crash or a hang.

Hypothesis feeds the reader, `verify` (full checks) and `estimate` with
truncated, bit-flipped and crafted blobs: crafted annotations (oversized
lengths, offsets past the end), crafted TOCs (random JSON, entries with
random field values, `..` names, overlapping and out-of-range offsets, huge
sizes), crafted tar-splits and tar headers, and decompression bombs.

The property everywhere: the only exception is BadInputError (whose message
is one line), and verify reports a problem unless the blob still decodes to
the same tar. Time and memory stay bounded because every size is checked
before use and every decompression is capped (see test_reader.py for the
bomb and memory checks).

Default runs are short (ZCONV_FUZZ_EXAMPLES, default 150 per test); set it
higher for a long run. The number of inputs tried is printed at the end of
the module (visible with -s) and written to $ZCONV_FUZZ_REPORT when set.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import string

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converter.chunked.format import (
    MANIFEST_CHECKSUM_KEY,
    MANIFEST_POSITION_KEY,
    TARSPLIT_POSITION_KEY,
)
from converter.chunked.reader import (
    BlobAccess,
    _HeaderError,
    check_toc_matches_tarsplit,
    iter_tarsplit,
    iter_tarsplit_headers,
    load_layer,
    parse_tar_header,
    read_toc,
)
from converter.errors import BadInputError
from converter.estimate import LayerEstimate, StoreCache, estimate_layer
from converter.image.model import Descriptor
from converter.verify import verify_layer
from test_reader_builder import build_chunked, make_tar, sample_files

EXAMPLES = int(os.environ.get("ZCONV_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    derandomize=os.environ.get("ZCONV_FUZZ_RANDOM") is None,  # CI: reproducible; long runs: new inputs
    database=None,
)
TRIED: dict[str, int] = {}
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(TRIED.values())
    lines = [f"fuzz inputs tried: {total}"] + [f"  {k}: {v}" for k, v in sorted(TRIED.items())]
    print("\n" + "\n".join(lines))
    path = os.environ.get("ZCONV_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"total": total, "per_test": TRIED}, f, indent=1)


BASE = build_chunked(make_tar(sample_files(), trailing=bytes(512)), chunk_size=4096)


def _exercise(blob: bytes, annotations: dict, diff_id: str | None = BASE.diff_id):
    """Reader, full verify and estimate on one input; returns the verify verdict."""
    try:
        layer = load_layer(io.BytesIO(blob), annotations, name="fuzz")
    except BadInputError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz")
        layer = None
    if layer is not None:
        est = LayerEstimate(0, "sha256:" + "0" * 64, len(blob), "partial")
        cache = StoreCache()
        cache.add_layer(layer.entries)
        estimate_layer(layer, cache, True, est)
        assert 0 <= est.missing_bytes <= est.total_bytes
    desc = Descriptor(ZSTD, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob), annotations)
    v = verify_layer(BlobAccess(io.BytesIO(blob), name="fuzz"), desc, 0, diff_id, full=True)
    for p in v.problems:
        assert isinstance(p, str) and "\n" not in p
    return v


def _whole(blob: bytes) -> bytes | None:
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True) as r:
            return r.read(len(BASE.tar) + 1)
    except zstandard.ZstdError:
        return None


def test_base_blob_is_clean() -> None:
    v = _exercise(BASE.blob, BASE.annotations)
    assert v.ok, v.problems


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(BASE.blob) - 1), st.integers(0, 7)), min_size=1, max_size=6))
def test_bit_flips_are_detected_or_harmless(flips) -> None:
    _count("bit flips")
    blob = bytearray(BASE.blob)
    for pos, bit in flips:
        blob[pos] ^= 1 << bit
    v = _exercise(bytes(blob), BASE.annotations)
    if v.ok:
        # Only flips that change nothing a consumer sees may pass (e.g. a zstd
        # window size that is still large enough); the blob digest in the
        # manifest catches those anyway.
        assert _whole(bytes(blob)) == BASE.tar


@FUZZ
@given(st.integers(0, len(BASE.blob) - 1))
def test_truncated_blobs_are_refused(n) -> None:
    _count("truncations")
    v = _exercise(BASE.blob[:n], BASE.annotations)
    assert not v.ok


_num = st.one_of(st.integers(0, 2**70), st.integers(-5, 200), st.sampled_from([0, 8, 2**63 - 1, 2**63, 2**64]))
_pos_text = st.one_of(
    st.builds(lambda a, b, c, d: f"{a}:{b}:{c}:{d}", _num, _num, _num, st.sampled_from([1, 1, 0, 2])),
    st.builds(lambda a, b, c: f"{a}:{b}:{c}", _num, _num, _num),
    st.text(alphabet=string.digits + ":+- x", max_size=30),
)


@FUZZ
@given(
    st.one_of(_pos_text, st.just(BASE.annotations[MANIFEST_POSITION_KEY])),
    st.one_of(_pos_text, st.just(BASE.annotations[TARSPLIT_POSITION_KEY])),
    st.one_of(st.just(BASE.annotations[MANIFEST_CHECKSUM_KEY]), st.text(max_size=80)),
)
def test_crafted_annotations(toc_pos, ts_pos, checksum) -> None:
    _count("crafted annotations")
    ann = {MANIFEST_POSITION_KEY: toc_pos, TARSPLIT_POSITION_KEY: ts_pos, MANIFEST_CHECKSUM_KEY: checksum}
    v = _exercise(BASE.blob, ann)
    if ann != BASE.annotations:
        assert not v.ok


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=30,
)


@FUZZ
@given(_json)
def test_toc_that_is_random_json(doc) -> None:
    _count("random JSON TOCs")
    b = build_chunked(BASE.tar, toc_bytes=json.dumps(doc).encode())
    with pytest.raises(BadInputError):
        read_toc(io.BytesIO(b.blob), b.annotations, name="fuzz")
    assert not _exercise(b.blob, b.annotations).ok


_names = st.one_of(
    st.sampled_from(["etc/", "etc/hostname", "usr/bin/tool", "../x", "a/../../b", "", "/abs", "x\x00y", "./etc/hostname"]),
    st.text(max_size=12),
)
_ints = st.one_of(st.integers(-3, 70000), st.integers(0, 2**64), st.sampled_from([0, 1, 4096, 2**63 - 1]))
_field_values = {
    "type": st.sampled_from(["reg", "dir", "symlink", "hardlink", "chunk", "char", "block", "fifo", "whiteout", "", 3]),
    "name": _names,
    "linkName": _names,
    "mode": _ints,
    "size": _ints,
    "uid": _ints,
    "gid": _ints,
    "offset": _ints,
    "endOffset": _ints,
    "chunkSize": _ints,
    "chunkOffset": _ints,
    "digest": st.sampled_from(["", "sha256:" + "0" * 64, "sha256:xyz", hashlib.sha256(b"zconv\n").hexdigest()]),
    "chunkDigest": st.sampled_from(["", "sha256:" + "1" * 64, "sha256:"]),
    "chunkType": st.sampled_from(["", "zeros", "data", 7]),
    "modtime": st.sampled_from(["2023-11-14T22:13:20Z", "1970-01-01T00:00:00Z", "bad", "9999-12-31T23:59:59.999999999-23:59"]),
    "xattrs": st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.sampled_from(["", "YQ==", "!!", 1]), max_size=2)),
}
_edit = st.tuples(st.sampled_from(sorted(_field_values)), st.data())


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 100), st.sampled_from(sorted(_field_values))), min_size=1, max_size=5), st.data())
def test_toc_with_crafted_entry_fields(edits, data) -> None:
    """Valid checksums, hostile content: the TOC is rewritten and re-signed."""
    _count("crafted TOC entries")

    def mutate(toc: dict) -> None:
        entries = toc["entries"]
        for idx, key in edits:
            e = entries[idx % len(entries)]
            e[key] = data.draw(_field_values[key])
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(entries) - 1))
            entries.insert(data.draw(st.integers(0, len(entries))), dict(entries[i]))

    b = build_chunked(BASE.tar, chunk_size=4096, mutate_toc=mutate)
    v = _exercise(b.blob, b.annotations)
    if v.ok:
        # Edits that leave the metadata consistent (e.g. an equal value) must really be harmless.
        assert load_layer(io.BytesIO(b.blob), b.annotations).entries


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 100), st.sampled_from(["type", "name", "size", "payload", "position", "name_raw"]),
                          st.one_of(_json, st.sampled_from(["AAAAAAAAAAA=", "", "etc/hostname"]))),
                min_size=1, max_size=4))
def test_tarsplit_with_crafted_lines(edits) -> None:
    _count("crafted tar-split lines")

    def mutate(lines: list) -> None:
        for idx, key, value in edits:
            lines[idx % len(lines)][key] = value

    b = build_chunked(BASE.tar, mutate_tarsplit=mutate)
    _exercise(b.blob, b.annotations)


@FUZZ
@given(st.binary(min_size=0, max_size=3000))
def test_random_tar_header_segments(seg) -> None:
    _count("random tar header segments")
    try:
        parse_tar_header(seg)
    except _HeaderError:
        pass
    line = json.dumps({"type": 2, "payload": base64.b64encode(seg).decode(), "position": 0}).encode()
    try:
        list(iter_tarsplit_headers(iter_tarsplit(line, "fuzz"), "fuzz"))
    except BadInputError:
        pass


@FUZZ
@given(st.integers(0, 511), st.binary(min_size=1, max_size=64), st.integers(0, 2))
def test_mutated_real_headers(pos, patch, which) -> None:
    """Real ustar/GNU/PAX header blocks with bytes overwritten (checksums fixed up half the time)."""
    _count("mutated real tar headers")
    import tarfile

    tar = make_tar(sample_files(), fmt=[tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT][which]
                   ) if which else make_tar([f for f in sample_files() if len(f[0]) < 100], fmt=tarfile.USTAR_FORMAT)
    seg = bytearray(tar[:2048])
    seg[pos : pos + len(patch)] = patch[: 512 - pos] if pos + len(patch) > 512 else patch
    seg = seg[:2048]
    if pos % 2:
        blk = seg[:512]
        blk[148:156] = b" " * 8
        seg[148:156] = b"%06o\x00 " % (sum(blk) & 0o777777)
    try:
        h = parse_tar_header(bytes(seg))
    except _HeaderError:
        return
    if h is not None:
        assert isinstance(h.name, bytes) and isinstance(h.size, int)


@FUZZ
@given(st.integers(1, 40), st.integers(1, 5000))
def test_decompression_bombs_in_tarsplit_and_payload(mib, declared) -> None:
    """A frame that inflates to `mib` MiB where `declared` bytes are announced stops at the announcement."""
    _count("decompression bombs")
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(mib << 20))
    b = build_chunked(BASE.tar)
    # Swap the first payload frame for the bomb: the TOC still says the old size.
    e = next(e for e in b.toc["entries"] if e.get("offset"))
    blob = b.blob[: e["offset"]] + bomb + b.blob[e["endOffset"]:]
    v = _exercise(blob, b.annotations)
    assert not v.ok
    # And as the tar-split itself, announced as `declared` bytes.
    ts_bomb = zstandard.ZstdCompressor(level=3).compress(b"\n" * (mib << 20))
    toc = dict(b.toc, tarSplitDigest="sha256:" + hashlib.sha256(ts_bomb).hexdigest())
    rebuilt = build_chunked(BASE.tar, toc_bytes=json.dumps(toc).encode())
    head_end = int(rebuilt.annotations[TARSPLIT_POSITION_KEY].split(":")[0]) - 8
    from converter.chunked.format import Footer, skippable_frame

    toc_off, toc_len, toc_ulen, _ = (int(x) for x in rebuilt.annotations[MANIFEST_POSITION_KEY].split(":"))
    blob = rebuilt.blob[:head_end] + skippable_frame(ts_bomb)
    blob += skippable_frame(Footer(toc_off, toc_len, toc_ulen, head_end + 8, len(ts_bomb), declared).pack())
    ann = dict(rebuilt.annotations)
    ann[TARSPLIT_POSITION_KEY] = f"{head_end + 8}:{len(ts_bomb)}:{declared}"
    with pytest.raises(BadInputError, match="decompresses to more than"):
        load_layer(io.BytesIO(blob), ann, name="fuzz")


def test_toc_and_tarsplit_check_never_raises_unexpected_types() -> None:
    """Deterministic corner: a TOC entry whose tar-split header has an unknown type flag."""
    layer = load_layer(io.BytesIO(BASE.blob), BASE.annotations)
    assert check_toc_matches_tarsplit(layer.entries, layer.tarsplit, "fuzz") == []
