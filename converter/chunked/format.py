"""Everything zconv knows about the zstd:chunked format, in one place.

Constants, media types, annotation keys, TOC type names, the consumer's
limits, and the one strict parser of the position annotations; shared by
the writer, the reader, verify, inspect and convert so they cannot drift
apart (containers/storage keeps the same knowledge in pkg/chunked/internal/minimal).

Blob layout (see shared/zstd-chunked-format.md):

    [frame: tar headers][frame: payload chunk]...[frame: trailer]
    [skippable: zstd(TOC json)][skippable: zstd(tar-split)][skippable: footer]

"Offset" of the TOC and tar-split always means the offset of their
compressed bytes inside the skippable frame (frame start + 8).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any, Mapping

from converter.chunked.tarstream import BLOCKDEV, CHAR, DIR, FIFO, LINK, REG, SYMLINK
from converter.errors import BadInputError

LAYER_MEDIA_TYPE_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYER_MEDIA_TYPE_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
# Media types whose layers can be zstd:chunked (the blob is a zstd stream).
ZSTD_LAYER_MEDIA_TYPES = (LAYER_MEDIA_TYPE_ZSTD, LAYER_MEDIA_TYPE_ND_ZSTD)
LAYER_MEDIA_TYPE_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_MEDIA_TYPE_TAR = "application/vnd.oci.image.layer.v1.tar"

MANIFEST_CHECKSUM_KEY = "io.github.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION_KEY = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_POSITION_KEY = "io.github.containers.zstd-chunked.tarsplit-position"
CHUNKED_ANNOTATIONS = (MANIFEST_CHECKSUM_KEY, MANIFEST_POSITION_KEY, TARSPLIT_POSITION_KEY)
# Written by old writers; current consumers ignore them.
LEGACY_PREFIX = "io.containers.zstd-chunked."
# Index entries of converted manifests carry this, as podman's add_compression does.
INDEX_ZSTD_ANNOTATION = "io.github.containers.compression.zstd"

# TOC entry types (minimal.Type*): one per tar type the consumer accepts,
# plus "chunk" for the second and later chunks of a regular file.
TYPE_REG = "reg"
TYPE_CHUNK = "chunk"
TOC_TYPES = (TYPE_REG, "dir", "symlink", "hardlink", "char", "block", "fifo")
# The TOC type of each tar typeflag the consumer accepts.
TYPE_NAMES = {
    REG: TYPE_REG,
    LINK: "hardlink",
    SYMLINK: "symlink",
    CHAR: "char",
    BLOCKDEV: "block",
    DIR: "dir",
    FIFO: "fifo",
}
# PAX records that carry extended attributes (the TOC's xattrs).
XATTR_PREFIX = b"SCHILY.xattr."
# chunkType values (minimal.ChunkType*): "" for data, "zeros" for a hole.
CHUNK_TYPE_DATA = ""
CHUNK_TYPE_ZEROS = "zeros"
CHUNK_TYPES = (CHUNK_TYPE_DATA, CHUNK_TYPE_ZEROS)

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
SHA256_EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()
INT64_MAX = (1 << 63) - 1

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"  # 0x184D2A50 little-endian
SKIPPABLE_HEADER_SIZE = 8
FOOTER_MAGIC = b"GNUlInUx"
FOOTER_SIZE = 64
FOOTER_FRAME_SIZE = SKIPPABLE_HEADER_SIZE + FOOTER_SIZE
MANIFEST_TYPE_CRFS = 1

# Chunking parameters of the reference writer (containers/storage compressor):
# bup rollsum window and char offset, split bits, minimum zero run of a hole.
WINDOW = 64
CHAR_OFFSET = 31
ROLLSUM_BITS = 16
HOLES_THRESHOLD = 1024

# The consumer's one size limit (containers/storage pkg/chunked/compression_linux.go,
# maxTocSize, checked in readZstdChunkedManifest): a TOC over 150 MiB, compressed
# or uncompressed, makes it fall back to a full pull. The tar-split has no such
# limit there: it is decoded to a temporary file (openTmpFile +
# decodeAndValidateBlobToStream) and read as a stream.
MAX_TOC_SIZE = 150 * 1024 * 1024


def skippable_header(size: int) -> bytes:
    """The 8 bytes that start a zstd skippable frame of `size` bytes of content."""
    return SKIPPABLE_MAGIC + struct.pack("<I", size)


def skippable_frame(data: bytes) -> bytes:
    """Wrap `data` in a zstd skippable frame, which every decoder ignores."""
    return skippable_header(len(data)) + data


@dataclass(frozen=True)
class Footer:
    toc_offset: int
    toc_length: int
    toc_uncompressed_length: int
    tarsplit_offset: int
    tarsplit_length: int
    tarsplit_uncompressed_length: int
    manifest_type: int = MANIFEST_TYPE_CRFS

    def pack(self) -> bytes:
        return (
            struct.pack(
                "<7Q",
                self.toc_offset,
                self.toc_length,
                self.toc_uncompressed_length,
                self.manifest_type,
                self.tarsplit_offset,
                self.tarsplit_length,
                self.tarsplit_uncompressed_length,
            )
            + FOOTER_MAGIC
        )

    @classmethod
    def unpack(cls, data: bytes) -> Footer:
        """Parse the 64 footer bytes (without the skippable frame header)."""
        if len(data) != FOOTER_SIZE or data[56:] != FOOTER_MAGIC:
            raise ValueError("zstd:chunked footer magic GNUlInUx not found")
        off, ln, uln, mtype, ts_off, ts_ln, ts_uln = struct.unpack("<7Q", data[:56])
        return cls(off, ln, uln, ts_off, ts_ln, ts_uln, mtype)

    def annotations(self, toc_digest: str) -> dict[str, str]:
        return {
            MANIFEST_CHECKSUM_KEY: toc_digest,
            MANIFEST_POSITION_KEY: f"{self.toc_offset}:{self.toc_length}:"
            f"{self.toc_uncompressed_length}:{self.manifest_type}",
            TARSPLIT_POSITION_KEY: f"{self.tarsplit_offset}:{self.tarsplit_length}:{self.tarsplit_uncompressed_length}",
        }


# --------------------------------------------------------------- annotations


@dataclass(frozen=True)
class Position:
    offset: int
    length: int
    uncompressed_length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class ChunkedAnnotations:
    checksum: str
    toc: Position
    tarsplit: Position | None
    manifest_type: int


def is_chunked(obj: Any) -> bool:
    """True when a layer is zstd:chunked.

    Given a descriptor (anything with `media_type` and `annotations`): its
    media type is a zstd one and it carries the manifest-checksum annotation.
    Given an annotations mapping (or None): it carries the manifest-checksum
    annotation, the one key the consumer decides a partial pull on
    (getProperDiffer in pkg/chunked/storage_linux.go).
    """
    if hasattr(obj, "annotations") and hasattr(obj, "media_type"):
        return obj.media_type in ZSTD_LAYER_MEDIA_TYPES and is_chunked(obj.annotations)
    return bool(obj) and MANIFEST_CHECKSUM_KEY in obj


def legacy_annotations(annotations: Mapping[str, str] | None) -> list[str]:
    return sorted(k for k in (annotations or {}) if k.startswith(LEGACY_PREFIX))


def parse_position(value: Any, fields: int, key: str = "position annotation") -> tuple[int, ...]:
    """Parse a `a:b:c[:d]` position annotation strictly; ValueError names the key when malformed.

    Plain decimal digits only (Python's int() would also take "+1", " 1",
    "1_0"), each within int64 as Go's Sscanf("%d") into uint64 offsets is
    used for int64 ranges.
    """
    if not isinstance(value, str):
        raise ValueError(f"annotation {key} is not a string")
    parts = value.split(":")
    if len(parts) != fields or not all(p and len(p) <= 20 and p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"annotation {key}={value!r} is malformed (want {fields} decimal numbers separated by ':')")
    nums = tuple(int(p) for p in parts)
    if any(n > INT64_MAX for n in nums):
        raise ValueError(f"annotation {key}={value!r} has a number beyond 2^63")
    return nums


def _bad(where: str, what: str) -> BadInputError:
    return BadInputError(f"{where}: {what}")


def parse_annotations(
    annotations: Mapping[str, str] | None,
    blob_size: int | None = None,
    name: str = "layer",
    max_toc_size: int = MAX_TOC_SIZE,
    require_tarsplit: bool = True,
) -> ChunkedAnnotations:
    """Parse and bound-check the three zstd:chunked annotations (the one parser of them).

    Limits are checked before anything is read, and they are the consumer's:
    a TOC over 150 MiB compressed or uncompressed is refused; the tar-split
    has no size limit beyond lying inside the blob.
    """
    ann = annotations or {}
    required = (MANIFEST_CHECKSUM_KEY, MANIFEST_POSITION_KEY) + ((TARSPLIT_POSITION_KEY,) if require_tarsplit else ())
    for key in required:
        if key not in ann:
            raise _bad(name, f"annotation {key} is missing")
    checksum = ann[MANIFEST_CHECKSUM_KEY]
    if not isinstance(checksum, str) or not DIGEST_RE.match(checksum):
        raise _bad(name, f"annotation {MANIFEST_CHECKSUM_KEY}={checksum!r} is not a sha256 digest")
    try:
        off, ln, uln, mtype = parse_position(ann[MANIFEST_POSITION_KEY], 4, MANIFEST_POSITION_KEY)
        tarsplit: Position | None = None
        if TARSPLIT_POSITION_KEY in ann:
            ts_off, ts_ln, ts_uln = parse_position(ann[TARSPLIT_POSITION_KEY], 3, TARSPLIT_POSITION_KEY)
            tarsplit = Position(ts_off, ts_ln, ts_uln)
    except ValueError as e:
        raise _bad(name, str(e)) from None
    if mtype != MANIFEST_TYPE_CRFS:
        raise _bad(name, f"manifest type {mtype} in {MANIFEST_POSITION_KEY} is not {MANIFEST_TYPE_CRFS}")
    toc = Position(off, ln, uln)
    if toc.length > max_toc_size or toc.uncompressed_length > max_toc_size:
        raise _bad(
            name,
            f"TOC of {toc.length} bytes compressed / {toc.uncompressed_length} uncompressed "
            f"exceeds the consumer's limit of {max_toc_size} bytes",
        )
    for what, pos in (("TOC", toc), ("tar-split", tarsplit)):
        if pos is None:
            continue
        if pos.length == 0:
            raise _bad(name, f"{what} position declares an empty frame")
        if pos.offset < SKIPPABLE_HEADER_SIZE:
            raise _bad(name, f"{what} offset {pos.offset} leaves no room for its skippable frame header")
        if blob_size is not None and pos.end > blob_size:
            raise _bad(
                name,
                f"{what} at offset {pos.offset} length {pos.length} ends past the blob's {blob_size} bytes",
            )
    if tarsplit and toc.offset < tarsplit.end and tarsplit.offset < toc.end:
        raise _bad(name, f"TOC ({toc.offset}+{toc.length}) and tar-split ({tarsplit.offset}+{tarsplit.length}) overlap")
    return ChunkedAnnotations(checksum, toc, tarsplit, mtype)
