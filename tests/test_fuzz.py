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

Settings come from tests/support/fuzzing.py: short and derandomized in CI
(`make test`), time-bounded and random under `make fuzz` (FUZZ_SECONDS),
which also prints the number of inputs tried.

The second half of this module fuzzes through the CLI entry
(`converter.cli.main`), as a user runs zconv: layout JSON (index.json,
manifests, configs), layer tars (mutated real tars through `zconv convert`)
and zstd:chunked blobs (mutated real zconv output through `zconv verify` and
`zconv inspect`). Everywhere: no uncaught exception, an exit code from the
documented set, one error line, nothing written to the destination on failure.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import string

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from test_reader_builder import build_chunked, make_tar, sample_files

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
from support.fuzzing import fuzz_settings, tried

FUZZ = fuzz_settings()
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _count(name: str) -> None:
    tried(name)


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


@pytest.mark.fuzz
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


@pytest.mark.fuzz
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


@pytest.mark.fuzz
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


@pytest.mark.fuzz
@FUZZ
@given(_json)
def test_toc_that_is_random_json(doc) -> None:
    _count("random JSON TOCs")
    b = build_chunked(BASE.tar, toc_bytes=json.dumps(doc).encode())
    with pytest.raises(BadInputError):
        read_toc(io.BytesIO(b.blob), b.annotations, name="fuzz")
    assert not _exercise(b.blob, b.annotations).ok


_names = st.one_of(
    st.sampled_from(
        ["etc/", "etc/hostname", "usr/bin/tool", "../x", "a/../../b", "", "/abs", "x\x00y", "./etc/hostname"]
    ),
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
    "modtime": st.sampled_from(
        ["2023-11-14T22:13:20Z", "1970-01-01T00:00:00Z", "bad", "9999-12-31T23:59:59.999999999-23:59"]
    ),
    "xattrs": st.one_of(
        st.none(), st.dictionaries(st.text(max_size=5), st.sampled_from(["", "YQ==", "!!", 1]), max_size=2)
    ),
}
_edit = st.tuples(st.sampled_from(sorted(_field_values)), st.data())


@pytest.mark.fuzz
@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 100), st.sampled_from(sorted(_field_values))), min_size=1, max_size=5), st.data()
)
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


@pytest.mark.fuzz
@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, 100),
            st.sampled_from(["type", "name", "size", "payload", "position", "name_raw"]),
            st.one_of(_json, st.sampled_from(["AAAAAAAAAAA=", "", "etc/hostname"])),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_tarsplit_with_crafted_lines(edits) -> None:
    _count("crafted tar-split lines")

    def mutate(lines: list) -> None:
        for idx, key, value in edits:
            lines[idx % len(lines)][key] = value

    b = build_chunked(BASE.tar, mutate_tarsplit=mutate)
    _exercise(b.blob, b.annotations)


@pytest.mark.fuzz
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


@pytest.mark.fuzz
@FUZZ
@given(st.integers(0, 511), st.binary(min_size=1, max_size=64), st.integers(0, 2))
def test_mutated_real_headers(pos, patch, which) -> None:
    """Real ustar/GNU/PAX header blocks with bytes overwritten (checksums fixed up half the time)."""
    _count("mutated real tar headers")
    import tarfile

    tar = (
        make_tar(sample_files(), fmt=[tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT][which])
        if which
        else make_tar([f for f in sample_files() if len(f[0]) < 100], fmt=tarfile.USTAR_FORMAT)
    )
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


@pytest.mark.fuzz
@FUZZ
@given(st.integers(1, 40), st.integers(1, 5000))
def test_decompression_bombs_in_tarsplit_and_payload(mib, declared) -> None:
    """A frame that inflates to `mib` MiB where `declared` bytes are announced stops at the announcement."""
    _count("decompression bombs")
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(mib << 20))
    b = build_chunked(BASE.tar)
    # Swap the first payload frame for the bomb: the TOC still says the old size.
    e = next(e for e in b.toc["entries"] if e.get("offset"))
    blob = b.blob[: e["offset"]] + bomb + b.blob[e["endOffset"] :]
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


# ==================================================================== through the CLI

import contextlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from converter.cli import main  # noqa: E402
from converter.image.layout import _parse_layout_index  # noqa: E402
from converter.image.model import parse_config, parse_manifest_or_index  # noqa: E402
from converter.jsonload import load_json  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testdata"))
import make_sample as ms  # noqa: E402

EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 64}
REF = "org.opencontainers.image.ref.name"


def run_cli(*argv: str) -> tuple[int, str]:
    """zconv ARGV in-process: the exit code is documented, an error is one line, never a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    e = err.getvalue()
    assert rc in EXIT_CODES, (rc, e)
    assert "Traceback" not in e, e
    if rc not in (0, 6):  # verify prints its findings and exits 6; everything else: one error line
        errors = [ln for ln in e.splitlines() if ln.startswith("zconv: error:")]
        assert len(errors) == 1, e
    return rc, e


def tiny_tar() -> bytes:
    return ms.make_tar(
        [
            ms.Entry("etc/", kind="dir", mode=0o755),
            ms.Entry("etc/hostname", data=b"zconv\n"),
            ms.Entry("etc/motd", data=b"hello " * 300),
            ms.Entry("bin/", kind="dir", mode=0o755),
            ms.Entry("bin/sh", data=bytes(range(256)) * 40, mode=0o755),
            ms.Entry("bin/ash", kind="symlink", target="sh"),
            ms.Entry("bin/dash", kind="hardlink", target="bin/sh"),
        ]
    )


TINY_TAR = tiny_tar()


@contextlib.contextmanager
def workdir():
    d = tempfile.mkdtemp(prefix="zconv-fuzz-")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_image(root: Path, index: bytes, blobs: list[bytes]) -> Path:
    layout = root / "src"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    for b in blobs:
        (layout / "blobs" / "sha256" / hashlib.sha256(b).hexdigest()).write_bytes(b)
    (layout / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_bytes(index)
    return layout


def convert_and_check(root: Path, src_ref: str) -> int:
    dst = root / "out"
    rc, err = run_cli("convert", "-q", src_ref, f"oci:{dst}")
    if rc != 0:
        assert not dst.exists(), err
    assert not [p for p in root.iterdir() if p.name.startswith(".out.zconv-")]
    return rc


def _desc(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data), **extra}


def _image_docs(tar: bytes, layer_mt: str = ms.OCI_LAYER_TAR) -> tuple[dict, dict, dict]:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [ms.sha256(tar)]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": ms.OCI_MANIFEST,
        "config": _desc(ms.OCI_CONFIG, ms.dumps(config)),
        "layers": [_desc(layer_mt, tar)],
    }
    index = {
        "schemaVersion": 2,
        "mediaType": ms.OCI_INDEX,
        "manifests": [_desc(ms.OCI_MANIFEST, ms.dumps(manifest), annotations={REF: "v1"})],
    }
    return index, manifest, config


# JSON values hostile in type, size, depth and text.
_hostile_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.sampled_from([2**63 - 1, 2**63, -1, 0, 1.5, 1e308]),
    st.text(max_size=12),
    st.sampled_from(["\ud800", "\udfff x", "sha256:" + "0" * 64, "../../etc/passwd", "\x1b[31m"]),
)
_hostile_json = st.recursive(
    _hostile_scalar,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=12,
)
_KEYS = [
    "mediaType",
    "digest",
    "size",
    "annotations",
    "platform",
    "urls",
    "artifactType",
    "schemaVersion",
    "manifests",
    "layers",
    "config",
    "subject",
    "os",
    "architecture",
    "variant",
    "os.version",
    "features",
    "os.features",
    "rootfs",
    "diff_ids",
    REF,
]


def _paths(doc, prefix=()):
    """Every (path, container) in a JSON document, for picking a place to edit."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _mutate_doc(data: st.DataObject, doc) -> object:
    """Replace, add or delete a few fields anywhere in a copy of `doc`."""
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths))
        if not path:
            doc = data.draw(_hostile_json)
            continue
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
        except (KeyError, IndexError, TypeError):
            continue
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(_hostile_json)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(_KEYS))] = data.draw(_hostile_json)
        elif isinstance(parent, list):
            parent.append(data.draw(_hostile_json))
    return doc


def _encode(data: st.DataObject, doc) -> bytes:
    """Serialise, sometimes with byte-level damage (truncation, flips, deep nesting spliced in)."""
    raw = json.dumps(doc, ensure_ascii=data.draw(st.booleans())).encode("utf-8", "surrogatepass")
    how = data.draw(st.sampled_from(["as is", "as is", "truncate", "flip", "nest"]))
    if how == "truncate" and raw:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip" and raw:
        b = bytearray(raw)
        b[data.draw(st.integers(0, len(b) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        raw = bytes(b)
    elif how == "nest":
        n = data.draw(st.sampled_from([63, 64, 65, 1000, 100_000]))
        pos = data.draw(st.integers(0, len(raw)))
        raw = raw[:pos] + b"[" * n + b"]" * n + raw[pos:]
    return raw


BASE_INDEX, BASE_MANIFEST, BASE_CONFIG = _image_docs(TINY_TAR)


@pytest.mark.fuzz
@FUZZ
@given(st.data())
def test_layout_json_parsers(data) -> None:
    """The parsers of index.json, manifests and configs directly (fast: many inputs per second)."""
    _count("layout JSON (parsers)")
    which = data.draw(st.sampled_from(["index", "manifest", "config"]))
    base = {"index": BASE_INDEX, "manifest": BASE_MANIFEST, "config": BASE_CONFIG}[which]
    raw = _encode(data, _mutate_doc(data, base))
    try:
        if which == "index":
            for d in _parse_layout_index(raw, "fuzz"):
                d.to_dict()
        elif which == "manifest":
            parse_manifest_or_index(raw, None, "fuzz").to_bytes()
        else:
            doc = parse_config(raw, ms.OCI_CONFIG, "fuzz")
            json.dumps(doc, ensure_ascii=False).encode()
    except BadInputError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz")
    try:
        load_json(raw, "fuzz", max_size=1 << 20, max_depth=8)
    except BadInputError as e:
        assert "\n" not in str(e)


@pytest.mark.fuzz
@FUZZ
@given(st.data())
def test_layout_json_through_convert_and_inspect(data) -> None:
    """Mutated index.json, manifest or config in a layout (digests kept consistent), through the CLI."""
    _count("layout JSON (CLI)")
    which = data.draw(st.sampled_from(["index", "manifest", "config"]))
    index, manifest, config = BASE_INDEX, BASE_MANIFEST, BASE_CONFIG
    config_raw = ms.dumps(config)
    if which == "config":
        config_raw = _encode(data, _mutate_doc(data, config))
        manifest = dict(manifest, config=_desc(ms.OCI_CONFIG, config_raw))
    manifest_raw = ms.dumps(manifest)
    if which == "manifest":
        manifest_raw = _encode(data, _mutate_doc(data, manifest))
    index = dict(index, manifests=[_desc(ms.OCI_MANIFEST, manifest_raw, annotations={REF: "v1"})])
    index_raw = ms.dumps(index)
    if which == "index":
        index_raw = _encode(data, _mutate_doc(data, index))
    with workdir() as root:
        src = write_image(root, index_raw, [TINY_TAR, config_raw, manifest_raw])
        convert_and_check(root, f"oci:{src}")
        run_cli("inspect", f"oci:{src}")


def _mutate_bytes(data: st.DataObject, blob: bytes) -> bytes:
    b = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "overwrite", "truncate", "splice", "zero block"]))
        if not b:
            break
        pos = data.draw(st.integers(0, len(b) - 1))
        if how == "flip":
            b[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "overwrite":
            patch = data.draw(st.binary(min_size=1, max_size=16))
            b[pos : pos + len(patch)] = patch
        elif how == "truncate":
            del b[pos:]
        elif how == "splice":
            b[pos:pos] = data.draw(st.binary(min_size=1, max_size=600))
        else:
            start = pos - pos % 512
            b[start : start + 512] = bytes(512)
    return bytes(b)


@pytest.mark.fuzz
@FUZZ
@given(st.data())
def test_layer_tars_through_convert(data) -> None:
    """Real small tars with bytes flipped, overwritten, cut or spliced (header checksums sometimes fixed)."""
    _count("layer tars (CLI)")
    tar = _mutate_bytes(data, TINY_TAR)
    if data.draw(st.booleans()):  # fix up checksums so the damage reaches the field parsers
        b = bytearray(tar)
        for off in range(0, len(b) - 511, 512):
            blk = b[off : off + 512]
            if any(blk) and blk[257:262] == b"ustar":
                blk[148:156] = b" " * 8
                b[off + 148 : off + 156] = b"%06o\x00 " % (sum(blk) & 0o777777)
        tar = bytes(b)
    compress = data.draw(st.sampled_from([None, "gzip", "zstd"]))
    layer, mt = tar, ms.OCI_LAYER_TAR
    if compress == "gzip":
        layer, mt = ms.gzip_bytes(tar), ms.OCI_LAYER_GZIP
    elif compress == "zstd":
        layer, mt = zstandard.ZstdCompressor(level=1).compress(tar), ZSTD
    index, manifest, config = _image_docs(tar, mt)
    manifest["layers"] = [_desc(mt, layer)]
    manifest["config"] = _desc(ms.OCI_CONFIG, ms.dumps(config))
    index["manifests"] = [_desc(ms.OCI_MANIFEST, ms.dumps(manifest), annotations={REF: "v1"})]
    with workdir() as root:
        src = write_image(root, ms.dumps(index), [layer, ms.dumps(config), ms.dumps(manifest)])
        rc = convert_and_check(root, f"oci:{src}")
        if rc == 0 and data.draw(st.booleans()):
            rc, err = run_cli("verify", f"oci:{root / 'out'}")
            assert rc == 0, err  # what zconv wrote must be consumable


def _chunked_base() -> tuple[bytes, dict, bytes, bytes]:
    """A real zconv output of the tiny image: (layer blob, layer descriptor, config, tar)."""
    index, manifest, config = _image_docs(TINY_TAR)
    with workdir() as root:
        src = write_image(root, ms.dumps(index), [TINY_TAR, ms.dumps(config), ms.dumps(manifest)])
        rc, err = run_cli("convert", "-q", f"oci:{src}", f"oci:{root / 'out'}")
        assert rc == 0, err
        out = root / "out"
        entry = json.loads((out / "index.json").read_bytes())["manifests"][0]
        m = json.loads((out / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
        layer = m["layers"][0]
        blob = (out / "blobs" / "sha256" / layer["digest"][7:]).read_bytes()
        cfg = (out / "blobs" / "sha256" / m["config"]["digest"][7:]).read_bytes()
    return blob, layer, cfg, TINY_TAR


CHUNKED_BLOB, CHUNKED_DESC, CHUNKED_CONFIG, _ = _chunked_base()


@pytest.mark.fuzz
@FUZZ
@given(st.data())
def test_chunked_blobs_through_verify_and_inspect(data) -> None:
    """A real zconv output with its layer damaged (and sometimes its annotations), through verify and inspect."""
    _count("zstd:chunked blobs (CLI)")
    blob = _mutate_bytes(data, CHUNKED_BLOB) if data.draw(st.integers(0, 4)) else CHUNKED_BLOB
    ann = dict(CHUNKED_DESC["annotations"])
    if data.draw(st.integers(0, 3)) == 0:
        key = data.draw(st.sampled_from(sorted(ann)))
        ann[key] = data.draw(st.one_of(_pos_text, st.text(max_size=30)))
    layer = dict(CHUNKED_DESC, annotations=ann, **{k: v for k, v in _desc(ZSTD, blob).items() if k != "mediaType"})
    manifest = {
        "schemaVersion": 2,
        "mediaType": ms.OCI_MANIFEST,
        "config": _desc(ms.OCI_CONFIG, CHUNKED_CONFIG),
        "layers": [layer],
    }
    index = {"schemaVersion": 2, "manifests": [_desc(ms.OCI_MANIFEST, ms.dumps(manifest), annotations={REF: "v1"})]}
    with workdir() as root:
        src = write_image(root, ms.dumps(index), [blob, CHUNKED_CONFIG, ms.dumps(manifest)])
        rc, err = run_cli("verify", f"oci:{src}")
        if blob != CHUNKED_BLOB or ann != CHUNKED_DESC["annotations"]:
            if rc == 0:  # only harmless damage may pass: the layer still decodes to the same tar
                assert _whole_tar(blob) == TINY_TAR, err
        else:
            assert rc == 0, err
        run_cli("inspect", f"oci:{src}")


def _whole_tar(blob: bytes) -> bytes | None:
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True) as r:
            return r.read(len(TINY_TAR) + 1)
    except zstandard.ZstdError:
        return None


def _archives() -> dict[str, bytes]:
    index, manifest, config = _image_docs(TINY_TAR)
    with workdir() as root:
        src = write_image(root, ms.dumps(index), [TINY_TAR, ms.dumps(config), ms.dumps(manifest)])
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for p in sorted(src.rglob("*")):
                tf.add(str(p), str(p.relative_to(src)), recursive=False)
        img = ms.make_image([TINY_TAR], docker=True, compress=False)
        ms.write_docker_archive(str(root / "d.tar"), [(img, ["x:1"])])
        return {"oci-archive": buf.getvalue(), "docker-archive": (root / "d.tar").read_bytes()}


ARCHIVES = _archives()


@pytest.mark.fuzz
@FUZZ
@given(st.data())
def test_archives_through_convert(data) -> None:
    """oci-archive and docker-archive tars with bytes damaged (member headers, names, link types, data)."""
    _count("archives (CLI)")
    kind = data.draw(st.sampled_from(sorted(ARCHIVES)))
    arc = _mutate_bytes(data, ARCHIVES[kind])
    with workdir() as root:
        (root / "a.tar").write_bytes(arc)
        convert_and_check(root, f"{kind}:{root / 'a.tar'}")
