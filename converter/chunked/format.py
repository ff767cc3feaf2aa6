"""Constants and small codecs of the zstd:chunked blob layout.

Shared by the writer and the reader so the two cannot drift apart.

Blob layout (see shared/zstd-chunked-format.md):

    [frame: tar headers][frame: payload chunk]...[frame: trailer]
    [skippable: zstd(TOC json)][skippable: zstd(tar-split)][skippable: footer]

"Offset" of the TOC and tar-split always means the offset of their
compressed bytes inside the skippable frame (frame start + 8).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

LAYER_MEDIA_TYPE_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
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

# Consumer limits (containers/storage pkg/chunked): larger TOCs are refused.
MAX_TOC_SIZE = 150 * 1024 * 1024
MAX_TARSPLIT_SIZE = 150 * 1024 * 1024  # we hold ourselves to the same bound


def skippable_frame(data: bytes) -> bytes:
    """Wrap `data` in a zstd skippable frame, which every decoder ignores."""
    return SKIPPABLE_MAGIC + struct.pack("<I", len(data)) + data


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
    def unpack(cls, data: bytes) -> "Footer":
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
            TARSPLIT_POSITION_KEY: f"{self.tarsplit_offset}:{self.tarsplit_length}:"
            f"{self.tarsplit_uncompressed_length}",
        }


def parse_position(value: str, fields: int) -> tuple[int, ...]:
    """Parse `a:b:c[:d]` position annotations; raises ValueError when malformed."""
    parts = value.split(":")
    if len(parts) != fields or not all(p.isdigit() for p in parts):
        raise ValueError(f"malformed position annotation {value!r}")
    return tuple(int(p) for p in parts)
