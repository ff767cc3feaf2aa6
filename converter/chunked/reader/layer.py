"""Reading one zstd:chunked layer's metadata the way the consumer does, trusting nothing.

The TOC and the tar-split are found through the annotations only (the
consumer does not read the footer; `read_footer` exists so `verify` can
check that it agrees). The TOC is trusted for files, the tar-split for the
tar stream, and the consumer refuses layers where the two disagree.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Mapping, Protocol

from converter.chunked.format import (
    SKIPPABLE_HEADER_SIZE,
    TYPE_REG,
    ChunkedAnnotations,
    parse_annotations,
)
from converter.chunked.reader.access import (
    BlobAccess,
    BlobSource,
    as_access,
    bad,
    decompress_bounded,
    decompress_to_file,
    iter_decompressed,
    read_footer,
    read_frame,
)
from converter.chunked.reader.tarsplit import check_toc_matches_tarsplit
from converter.chunked.reader.toc import (
    PayloadChunk,
    TocEntry,
    TocFile,
    group_files,
    parse_toc,
    parse_toc_entries,
    toc_entries,
)
from converter.errors import BadInputError

# A tar-split decoded in memory up to this size, then in an unlinked temporary file.
_SPOOL_IN_MEMORY = 8 << 20
# At most this many TOC/tar-split mismatches are listed one by one.
MAX_LISTED_MISMATCHES = 50


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def payload_end_of(ann: ChunkedAnnotations) -> int:
    """Payload frames all come before the TOC's and tar-split's skippable frames."""
    return min(ann.toc.offset, ann.tarsplit.offset if ann.tarsplit else ann.toc.offset) - SKIPPABLE_HEADER_SIZE


def read_toc_compressed(access: BlobAccess, ann: ChunkedAnnotations) -> bytes:
    """The compressed TOC, with the manifest-checksum checked."""
    compressed = read_frame(access, ann.toc, "TOC")
    got = _sha256(compressed)
    if got != ann.checksum:
        raise bad(
            access.name,
            f"TOC at offset {ann.toc.offset}: sha256 {got} does not match manifest-checksum {ann.checksum}",
        )
    return compressed


def _toc_length_error(access: BlobAccess, ann: ChunkedAnnotations, n: int) -> BadInputError:
    return bad(
        access.name,
        f"TOC at offset {ann.toc.offset} decompresses to {n} bytes, the annotation says {ann.toc.uncompressed_length}",
    )


def read_toc_bytes(access: BlobAccess, ann: ChunkedAnnotations) -> tuple[bytes, bytes]:
    """(compressed, uncompressed) TOC, with the manifest-checksum and declared length checked."""
    compressed = read_toc_compressed(access, ann)
    data = decompress_bounded(compressed, ann.toc.uncompressed_length, f"{access.name}: TOC at offset {ann.toc.offset}")
    if len(data) != ann.toc.uncompressed_length:
        raise _toc_length_error(access, ann, len(data))
    return compressed, data


def parse_toc_frame(
    access: BlobAccess, ann: ChunkedAnnotations, compressed: bytes
) -> tuple[list[TocEntry], str | None]:
    """(typed entries, tarSplitDigest) of the compressed TOC, decompressed and parsed piece by piece."""
    total = 0

    def pieces() -> Iterator[bytes]:
        nonlocal total
        for piece in iter_decompressed(
            compressed, ann.toc.uncompressed_length, f"{access.name}: TOC at offset {ann.toc.offset}"
        ):
            total += len(piece)
            yield piece

    gen = pieces()
    try:
        entries, tsd = parse_toc_entries(gen, access.name)
        for _ in gen:  # the parser stops at the end of the JSON; count what follows
            pass
    except BadInputError:
        for _ in gen:  # a short TOC is reported as such, not as the JSON error it causes
            pass
        if total != ann.toc.uncompressed_length:
            raise _toc_length_error(access, ann, total) from None
        raise
    if total != ann.toc.uncompressed_length:
        raise _toc_length_error(access, ann, total)
    return entries, tsd


def read_toc(
    reader: BlobSource,
    annotations: Mapping[str, str],
    *,
    size: int | None = None,
    name: str = "layer",
) -> dict[str, Any]:
    """The layer's TOC as JSON ("version", "entries" as raw dicts, "tarSplitDigest"), fully checked.

    For comparing TOCs as they are written; `load_toc` is the compact form
    for reading them. `reader` is a seekable file, a fetch_range(offset,
    length) callable (then `size` is required), or a BlobAccess.
    """
    access = as_access(reader, size, name)
    ann = parse_annotations(annotations, access.size, access.name, require_tarsplit=False)
    _, data = read_toc_bytes(access, ann)
    toc = parse_toc(data, access.name)
    entries = toc_entries(toc, access.name)
    group_files(entries, payload_end_of(ann), access.name)
    return toc


@dataclass
class Toc:
    """A layer's TOC, checked: typed entries and the regular files with payload, with their chunks."""

    annotations: ChunkedAnnotations
    compressed: bytes
    entries: list[TocEntry]
    files: list[TocFile]
    tarsplit_digest: str | None


def load_toc(
    reader: BlobSource,
    annotations: Mapping[str, str],
    *,
    size: int | None = None,
    name: str = "layer",
) -> Toc:
    """The layer's TOC, fully checked, in compact form (what `inspect` reads)."""
    access = as_access(reader, size, name)
    ann = parse_annotations(annotations, access.size, access.name, require_tarsplit=False)
    compressed = read_toc_compressed(access, ann)
    entries, tsd = parse_toc_frame(access, ann, compressed)
    files = group_files(entries, payload_end_of(ann), access.name)
    return Toc(ann, compressed, entries, files, tsd)


def read_tarsplit(access: BlobAccess, ann: ChunkedAnnotations, tarsplit_digest: str | None) -> tuple[bytes, IO[bytes]]:
    """(compressed tar-split, decoded tar-split in a temporary file), checked against the TOC's tarSplitDigest.

    The consumer decodes the tar-split to a temporary file
    (readZstdChunkedManifest: openTmpFile + decodeAndValidateBlobToStream)
    and has no limit on its size; so do we, except that we never write
    more than the declared uncompressed length.
    """
    if ann.tarsplit is None:
        raise bad(access.name, "no tar-split position")
    if not tarsplit_digest:
        raise bad(
            access.name,
            "TOC has no tarSplitDigest (the consumer cannot authenticate the tar-split and falls back to a full pull)",
        )
    compressed = read_frame(access, ann.tarsplit, "tar-split")
    got = _sha256(compressed)
    if got != tarsplit_digest:
        raise bad(
            access.name,
            f"tar-split at offset {ann.tarsplit.offset}: sha256 {got} does not match the TOC's tarSplitDigest {tarsplit_digest}",
        )
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, prefix="zconv-tarsplit-")
    try:
        n = decompress_to_file(
            compressed,
            out,
            ann.tarsplit.uncompressed_length,
            f"{access.name}: tar-split at offset {ann.tarsplit.offset}",
        )
        if n != ann.tarsplit.uncompressed_length:
            raise bad(
                access.name,
                f"tar-split at offset {ann.tarsplit.offset} decompresses to {n} bytes, "
                f"the annotation says {ann.tarsplit.uncompressed_length}",
            )
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return compressed, out


def read_tarsplit_bytes(
    access: BlobAccess, ann: ChunkedAnnotations, tarsplit_digest: str | None
) -> tuple[bytes, bytes]:
    """(compressed, uncompressed) tar-split in memory; prefer `read_tarsplit` for large ones."""
    compressed, f = read_tarsplit(access, ann, tarsplit_digest)
    with f:
        return compressed, f.read()


@dataclass
class ChunkedLayer:
    """Everything the metadata of one zstd:chunked layer holds, checked.

    `tarsplit` is the decoded tar-split as a binary file (in memory when
    small, else an unlinked temporary file); `close()` releases it.
    """

    name: str
    access: BlobAccess
    annotations: ChunkedAnnotations
    toc_compressed: bytes
    toc: dict[str, Any]  # "version" and "tarSplitDigest"; the entries are `entries`
    entries: list[TocEntry]
    files: list[TocFile]
    tarsplit_compressed: bytes
    tarsplit: IO[bytes]
    problems: list[str] = field(default_factory=list)

    @property
    def toc_digest(self) -> str:
        return self.annotations.checksum

    def close(self) -> None:
        self.tarsplit.close()

    def __enter__(self) -> ChunkedLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Findings(Protocol):
    """Where `load_layer` records what it checked and found (verify's LayerVerdict is one)."""

    problems: list[str]
    checks: list[str]
    stats: dict[str, Any]


def _footer_findings(access: BlobAccess, ann: ChunkedAnnotations, out: Findings) -> None:
    # The footer is not read by the consumer, but other readers (and `zstd
    # --list`-style tools) rely on it; it must say what the annotations say.
    try:
        footer = read_footer(access)
    except BadInputError as e:
        out.problems.append(str(e))
        return
    pairs = [
        ("TOC offset", footer.toc_offset, ann.toc.offset),
        ("TOC length", footer.toc_length, ann.toc.length),
        ("TOC uncompressed length", footer.toc_uncompressed_length, ann.toc.uncompressed_length),
        ("manifest type", footer.manifest_type, ann.manifest_type),
    ]
    if ann.tarsplit:
        pairs += [
            ("tar-split offset", footer.tarsplit_offset, ann.tarsplit.offset),
            ("tar-split length", footer.tarsplit_length, ann.tarsplit.length),
            ("tar-split uncompressed length", footer.tarsplit_uncompressed_length, ann.tarsplit.uncompressed_length),
        ]
    bad_ = [f"{what} {a} != annotation {b}" for what, a, b in pairs if a != b]
    for b in bad_:
        out.problems.append(f"{access.name}: footer at offset {access.size - 64} disagrees with the annotations: {b}")
    if not bad_:
        out.checks.append("footer agrees with the annotations")


def load_layer(
    reader: BlobSource,
    annotations: Mapping[str, str],
    *,
    size: int | None = None,
    name: str = "layer",
    check_match: bool = True,
    findings: Findings | None = None,
) -> ChunkedLayer:
    """Read and check a layer's TOC and tar-split.

    Without `findings`, raises BadInputError on the first problem. With it,
    every problem is recorded there (with the checks passed and the sizes
    seen, and the footer compared with the annotations), and BadInputError
    is raised only when a problem leaves nothing to check further; the
    layer is returned when TOC and tar-split could be read, even when they
    disagree. With check_match (default), TOC and tar-split must describe
    the same entries, as the consumer requires.
    """
    access = as_access(reader, size, name)
    name = access.name
    ann = parse_annotations(annotations, access.size, name)
    if findings is not None:
        findings.checks.append("annotations well formed, within limits and inside the blob")
        findings.stats.update(toc_compressed=ann.toc.length, toc_uncompressed=ann.toc.uncompressed_length)
        if ann.tarsplit:
            findings.stats.update(
                tarsplit_compressed=ann.tarsplit.length, tarsplit_uncompressed=ann.tarsplit.uncompressed_length
            )
    toc_c = read_toc_compressed(access, ann)
    if findings is not None:
        _footer_findings(access, ann, findings)
    entries, tsd = parse_toc_frame(access, ann, toc_c)
    if findings is not None:
        findings.checks.append("TOC sha256 equals manifest-checksum; decompresses to its declared length")
    files = group_files(entries, payload_end_of(ann), name)
    if findings is not None:
        findings.checks.append(
            "TOC entries well formed: known types, no '..', no duplicate paths, chunks tile files, ranges disjoint"
        )
        regular = sum(1 for e in entries if e.type == TYPE_REG)
        findings.stats.update(entries=len(entries), files=regular, chunks=sum(len(f.chunks) for f in files))
    ts_c, ts = read_tarsplit(access, ann, tsd)
    layer = ChunkedLayer(name, access, ann, toc_c, {"version": 1, "tarSplitDigest": tsd}, entries, files, ts_c, ts)
    try:
        if findings is not None:
            findings.checks.append(
                "tar-split sha256 equals the TOC's tarSplitDigest; decompresses to its declared length"
            )
        if check_match:
            problems = check_toc_matches_tarsplit(entries, ts, name)
            if findings is not None:
                if problems:
                    findings.problems.extend(problems[:MAX_LISTED_MISMATCHES])
                    if len(problems) > MAX_LISTED_MISMATCHES:
                        findings.problems.append(
                            f"{name}: ... {len(problems) - MAX_LISTED_MISMATCHES} more TOC/tar-split mismatches"
                        )
                else:
                    findings.checks.append("TOC and tar-split describe the same entries with the same metadata")
            elif problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise BadInputError(problems[0] + more)
    except BaseException:
        layer.close()
        raise
    return layer


def read_chunk(access: BlobAccess, chunk: PayloadChunk, max_output: int | None = None) -> bytes:
    """Decompress one payload range on its own; must give exactly chunk.size bytes."""
    e = chunk.entry
    what = f"{access.name}: TOC entry {e.index} ({e.name!r}) range {chunk.offset}..{chunk.end}"
    data = access.read_at(chunk.offset, chunk.end - chunk.offset, what)
    out = decompress_bounded(data, chunk.size if max_output is None else max_output, what)
    if len(out) != chunk.size:
        raise BadInputError(f"{what}: decompresses to {len(out)} bytes, expected {chunk.size}")
    return out
