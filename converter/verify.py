"""`zconv verify`: prove that every zstd:chunked layer of an image is consumable.

For each layer whose descriptor claims zstd:chunked, this runs the checks
containers/storage runs before and during a partial pull, and more:

metadata (ranges only: annotations, TOC, tar-split, footer)
  - the three annotations are present and well formed, the TOC and tar-split
    are within the consumer's limits and inside the blob, in skippable frames;
  - sha256 of the compressed TOC equals the manifest-checksum; sha256 of the
    compressed tar-split equals the TOC's tarSplitDigest; both decompress to
    their declared lengths; the footer agrees with the annotations;
  - TOC entries are well typed, known types, no `..`, no duplicate paths,
    chunks tile each file, payload ranges lie before the TOC and never
    overlap; TOC and tar-split describe exactly the same entries with the
    same metadata (what ensureTOCMatchesTarSplit compares).

full (whole blob)
  - every payload range decompresses on its own to exactly its size with its
    digest; every chunk to its chunk digest; zero chunks are zeros; each
    file's crc64 equals the tar-split's;
  - the tar rebuilt from tar-split + payloads has the config's DiffID, and so
    does the whole blob decompressed as one zstd stream.

Metadata problems that make the later checks meaningless stop that layer's
checks; everything else is collected, so one run lists every problem.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, cast

import zstandard
from fastcrc import crc64

from converter.chunked.format import LAYER_MEDIA_TYPE_ZSTD, is_chunked, legacy_annotations
from converter.chunked.reader import (
    MAX_WINDOW_SIZE,
    BlobAccess,
    ChunkedLayer,
    TocFile,
    iter_decompressed,
    iter_tarsplit,
    load_layer,
    tar_size_from_tarsplit,
)
from converter.errors import BadInputError
from converter.image.model import Descriptor, ImageSource, short
from converter.imageread import config_diff_ids, iter_manifests, layer_access, layer_name
from converter.textsafe import printable_lines

# A full check decompresses the whole layer; refuse layers whose tar-split
# claims more than this (a crafted layer could claim exabytes).
MAX_LAYER_SIZE = int(os.environ.get("ZCONV_MAX_LAYER_SIZE", str(1 << 40)))
_PIECE = 1 << 20


@dataclass
class LayerVerdict:
    index: int
    digest: str
    size: int
    media_type: str
    chunked: bool
    full: bool = False
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "digest": self.digest,
            "size": self.size,
            "media_type": self.media_type,
            "chunked": self.chunked,
            "full": self.full,
            "ok": self.ok,
            "problems": self.problems,
            "checks": self.checks,
            "notes": self.notes,
            "stats": self.stats,
        }


@dataclass
class ImageVerdict:
    reference: str
    manifest: str
    platform: str | None
    layers: list[LayerVerdict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(layer.ok for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "manifest": self.manifest,
            "platform": self.platform,
            "ok": self.ok,
            "chunked_layers": sum(1 for layer in self.layers if layer.chunked),
            "problems": self.problems,
            "layers": [layer.to_json() for layer in self.layers],
        }


@dataclass
class VerifyReport:
    reference: str
    full: bool
    images: list[ImageVerdict] = field(default_factory=list)
    range_requests: str = "not used"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(i.ok for i in self.images)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "ok": self.ok,
            "full": self.full,
            "range_requests": self.range_requests,
            "problems": self.problems,
            "images": [i.to_json() for i in self.images],
        }


# ---------------------------------------------------------------- one layer


def verify_layer_metadata(access: BlobAccess, annotations: dict[str, str], v: LayerVerdict) -> ChunkedLayer | None:
    """Metadata checks (ranges only), recorded in `v`. Returns the layer when TOC and tar-split could be read."""
    name = access.name
    for k in legacy_annotations(annotations):
        v.notes.append(f"{name}: legacy annotation {k} (ignored by current consumers)")
    if v.media_type != LAYER_MEDIA_TYPE_ZSTD:
        v.problems.append(
            f"{name}: claims zstd:chunked but its media type is {v.media_type} (must be {LAYER_MEDIA_TYPE_ZSTD})"
        )
    try:
        return load_layer(access, annotations, findings=v)
    except BadInputError as e:
        v.problems.append(str(e))
        return None


class _FileChecker:
    """Decompresses each file's payload ranges on their own and checks them."""

    def __init__(self, access: BlobAccess, v: LayerVerdict) -> None:
        self.access = access
        self.v = v
        self.checked_ranges = 0
        self.failed: set[int] = set()
        self.broken = False  # the payload stream lost bytes: the rebuilt tar cannot match

    def payload(self, f: TocFile) -> Iterator[bytes]:
        """Yield the file's bytes, range by range, recording problems; always yields exactly size bytes."""
        e = f.entry
        fh = hashlib.sha256()
        ok = True
        for c in f.chunks:
            got = 0
            ch = hashlib.sha256()
            nonzero = False
            where = f"{self.access.name}: TOC entry {c.entry.index} ({e.name!r}) range {c.offset}..{c.end}"
            try:
                data = self.access.read_at(c.offset, c.end - c.offset, "payload range")
                for piece in iter_decompressed(data, c.size, where):
                    got += len(piece)
                    ch.update(piece)
                    fh.update(piece)
                    if c.zeros and not nonzero and piece.count(0) != len(piece):
                        nonzero = True
                    yield piece
            except BadInputError as err:
                self.v.problems.append(str(err))
                ok = False
            self.checked_ranges += 1
            if got != c.size:
                if ok:
                    self.v.problems.append(f"{where}: decompresses to {got} bytes, expected {c.size}")
                ok = False
                # No padding to the declared size: a crafted size could be
                # huge. The rebuilt tar is marked broken instead.
                self.broken = True
                continue
            if "sha256:" + ch.hexdigest() != c.digest:
                self.v.problems.append(
                    f"{where}: content sha256:{ch.hexdigest()} does not match "
                    f"{'chunkDigest' if len(f.chunks) > 1 else 'digest'} {c.digest}"
                )
                ok = False
            if nonzero:
                self.v.problems.append(f"{where}: chunk of type zeros holds non-zero bytes")
                ok = False
        if len(f.chunks) > 1 and "sha256:" + fh.hexdigest() != e.digest:
            self.v.problems.append(
                f"{self.access.name}: TOC entry {e.index} ({e.name!r}): file content sha256:{fh.hexdigest()} "
                f"does not match digest {e.digest}"
            )
            ok = False
        if not ok:
            self.failed.add(e.index)


def verify_layer_full(layer: ChunkedLayer, blob_file: BlobAccess, diff_id: str | None, v: LayerVerdict) -> None:
    """Payload checks, tar rebuilt from tar-split + payloads, whole-blob DiffID."""
    name = layer.name
    checker = _FileChecker(blob_file, v)
    by_name = {f.entry.name: f for f in layer.files}
    done: set[str] = set()
    rebuilt = hashlib.sha256()
    crc_bad = 0
    try:
        declared = tar_size_from_tarsplit(layer.tarsplit, name)
    except BadInputError as e:
        v.problems.append(str(e))
        return
    v.stats["tar_size"] = declared
    if declared > MAX_LAYER_SIZE:
        v.problems.append(
            f"{name}: tar-split declares a {declared}-byte tar, over the {MAX_LAYER_SIZE} limit of a full check"
        )
        return
    for t in iter_tarsplit(layer.tarsplit, name):  # streamed: the tar-split may be larger than memory
        if t.type == 2:
            rebuilt.update(t.payload or b"")
            continue
        if t.size == 0:
            continue
        f = by_name.get(t.name_str)
        if f is None or f.entry.size != t.size or t.name_str in done:
            v.problems.append(
                f"{name}: tar-split entry {t.line} ({t.name_str!r}, {t.size} bytes) has no matching regular file in the TOC; "
                "the tar cannot be rebuilt"
            )
            checker.broken = True
            continue
        done.add(t.name_str)
        crc: int | None = None
        for piece in checker.payload(f):
            rebuilt.update(piece)
            crc = crc64.go_iso(piece, crc) if crc is not None else crc64.go_iso(piece)
        if (crc or 0).to_bytes(8, "big") != t.payload:
            crc_bad += 1
            if crc_bad <= 20:
                v.problems.append(
                    f"{name}: tar-split entry {t.line} ({t.name_str!r}): crc64 of the payload does not match the tar-split"
                )
    for f in layer.files:
        if f.chunks and f.entry.name not in done:
            for _ in checker.payload(f):
                pass
    if crc_bad > 20:
        v.problems.append(f"{name}: ... {crc_bad - 20} more crc64 mismatches")
    v.stats["payload_ranges"] = checker.checked_ranges
    if not checker.failed:
        v.checks.append(f"all {checker.checked_ranges} payload ranges decompress on their own to their size and digest")
    rebuilt_digest = "sha256:" + rebuilt.hexdigest() if not checker.broken else "(not rebuildable)"
    v.stats["rebuilt_tar_digest"] = rebuilt_digest
    if checker.broken:
        v.problems.append(f"{name}: the tar cannot be rebuilt from the tar-split and the payloads")
    elif diff_id and rebuilt_digest != diff_id:
        v.problems.append(
            f"{name}: tar rebuilt from tar-split + payloads has {rebuilt_digest}, the config's DiffID is {diff_id}"
        )
    elif diff_id:
        v.checks.append("tar rebuilt from tar-split + payloads has the config's DiffID")

    # The whole blob as one zstd stream (what a non-partial pull sees).
    whole = hashlib.sha256()
    whole_size = 0
    limit = declared + 1
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        with dctx.stream_reader(
            cast(IO[bytes], _AccessStream(blob_file)), read_across_frames=True, read_size=_PIECE
        ) as r:
            while True:
                piece = r.read(_PIECE)
                if not piece:
                    break
                whole.update(piece)
                whole_size += len(piece)
                if whole_size > limit + _PIECE:
                    raise BadInputError(
                        f"{name}: blob decompresses to more than the {declared} bytes the tar-split describes"
                    )
    except zstandard.ZstdError as e:
        v.problems.append(f"{name}: blob is not a valid zstd stream after {whole_size} output bytes ({e})")
        return
    except BadInputError as e:
        v.problems.append(str(e))
        return
    whole_digest = "sha256:" + whole.hexdigest()
    v.stats["uncompressed_size"] = whole_size
    if whole_size != declared:
        v.problems.append(f"{name}: blob decompresses to {whole_size} bytes, the tar-split describes {declared}")
    if diff_id is None:
        v.notes.append(f"{name}: no DiffID in the config to compare with")
    elif whole_digest != diff_id:
        v.problems.append(f"{name}: blob decompresses to {whole_digest}, the config's DiffID is {diff_id}")
    else:
        v.checks.append("whole blob decompresses to a tar with the config's DiffID")
    if not checker.broken and whole_digest != rebuilt_digest:
        v.problems.append(f"{name}: the tar rebuilt from the tar-split differs from the decompressed blob")


class _AccessStream(io.RawIOBase):
    def __init__(self, access: BlobAccess) -> None:
        self.access = access
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.access.size - self.pos)
        if n <= 0:
            return 0
        data = self.access.read_at(self.pos, n, "blob")
        b[:n] = data
        self.pos += n
        return n


def verify_layer(
    access: BlobAccess,
    desc: Descriptor,
    index: int,
    diff_id: str | None,
    full: bool,
    full_access: BlobAccess | None = None,
) -> LayerVerdict:
    """All checks of one layer. `full_access` (a local copy) is used for the full checks when given."""
    v = LayerVerdict(index, desc.digest, desc.size, desc.media_type, is_chunked(desc.annotations), full=full)
    if not v.chunked:
        if legacy_annotations(desc.annotations):
            v.notes.append(f"{access.name}: only legacy zstd:chunked annotations; consumers pull it whole")
        return v
    layer = None
    try:
        layer = verify_layer_metadata(access, dict(desc.annotations), v)
        if full and layer is not None:
            verify_layer_full(layer, full_access or access, diff_id, v)
    except BadInputError as e:  # anything the checks above did not foresee still ends as a finding
        v.problems.append(str(e))
    finally:
        if layer is not None:
            layer.close()
    return v


# ---------------------------------------------------------------- images


def verify_source(src: ImageSource, full: bool | None = None, reference: str | None = None) -> VerifyReport:
    """Verify every image the source designates.

    full None: full checks for local sources (layouts, archives: reading is
    cheap), metadata checks through range requests for registries.
    """
    if full is None:
        full = not src.remote
    report = VerifyReport(reference or src.description, full)
    range_checked = False
    tmpdir: str | None = None
    try:
        for label, mdesc, m in iter_manifests(src):
            iv = ImageVerdict(label, mdesc.digest, str(mdesc.platform) if mdesc.platform else None)
            report.images.append(iv)
            diff_ids = config_diff_ids(src.read_blob(m.config))
            if diff_ids is None:
                iv.problems.append(f"{label}: config {short(m.config.digest)} has no rootfs.diff_ids")
            elif len(diff_ids) != len(m.layers):
                iv.problems.append(f"{label}: config lists {len(diff_ids)} DiffIDs for {len(m.layers)} layers")
            for i, desc in enumerate(m.layers):
                name = layer_name(label, i, len(m.layers), desc)
                diff_id = diff_ids[i] if diff_ids and i < len(diff_ids) else None
                chunked = is_chunked(desc.annotations)
                if chunked and src.remote and not range_checked:
                    # The consumer fetches TOC, tar-split and chunks with
                    # (multi-)range requests; without them it pulls whole layers.
                    range_checked = True
                    rc = src.check_range_requests(desc)
                    report.range_requests = rc.message if rc else "not checked"
                    if rc and not rc.ok:
                        report.problems.append(rc.message)

                access = layer_access(src, desc, name)
                full_access = None
                copy_path = None
                fh = None
                if full and chunked:
                    if tmpdir is None:
                        tmpdir = tempfile.mkdtemp(prefix="zconv-verify-")
                    copy_path = os.path.join(tmpdir, desc.digest.replace(":", "-"))
                    try:
                        # open_blob verifies the blob's size and digest while it streams.
                        with src.open_blob(desc) as r, open(copy_path, "wb") as out:
                            shutil.copyfileobj(r, out, _PIECE)
                            r.finish()
                    except BadInputError as e:
                        lv = LayerVerdict(i, desc.digest, desc.size, desc.media_type, True, full=True)
                        lv.problems.append(f"{name}: {e}")
                        iv.layers.append(lv)
                        os.unlink(copy_path)
                        continue
                    fh = open(copy_path, "rb")
                    full_access = BlobAccess(fh, desc.size, name)
                    # With the verified copy at hand, read the metadata from it too.
                    access = full_access
                try:
                    t0 = time.monotonic()
                    lv = verify_layer(access, desc, i, diff_id, full, full_access)
                    lv.stats["seconds"] = round(time.monotonic() - t0, 3)
                    lv.stats["reads"] = access.requests
                finally:
                    if fh is not None:
                        fh.close()
                    if copy_path:
                        os.unlink(copy_path)
                iv.layers.append(lv)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    if not src.remote:
        report.range_requests = "local source (reads by seeking)"
    elif not range_checked:
        report.range_requests = "not checked (no zstd:chunked layer)"
    return report


def format_report(report: VerifyReport) -> str:
    lines = []
    for iv in report.images:
        n_chunked = sum(1 for layer in iv.layers if layer.chunked)
        lines.append(f"{iv.reference} {short(iv.manifest)}: {len(iv.layers)} layers, {n_chunked} zstd:chunked")
        for p in iv.problems:
            lines.append(f"  FAIL {p}")
        for layer in iv.layers:
            tag = "ok  " if layer.ok else "FAIL"
            kind = "zstd:chunked" if layer.chunked else f"not chunked ({layer.media_type.rsplit('.', 1)[-1]})"
            extra = ""
            if layer.chunked:
                extra = f", {layer.stats.get('entries', '?')} entries" + (
                    ", full check" if layer.full else ", metadata only"
                )
            lines.append(f"  {tag} layer {layer.index + 1}/{len(iv.layers)} {short(layer.digest)} {kind}{extra}")
            for p in layer.problems:
                lines.append(f"       - {p}")
            for nte in layer.notes:
                lines.append(f"       note: {nte}")
        if n_chunked == 0:
            lines.append("  note: no layer claims zstd:chunked; consumers will pull this image whole")
    lines.append(f"range requests: {report.range_requests}")
    for p in report.problems:
        lines.append(f"FAIL {p}")
    lines.append("verdict: " + ("OK, every zstd:chunked layer is consumable" if report.ok else "NOT consumable"))
    return printable_lines(lines)
