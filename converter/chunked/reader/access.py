"""Random access to a blob, and bounded zstd decompression.

Every read is checked against the blob's size and every decompression is
bounded before it allocates, so a hostile blob costs at most its declared
sizes in memory and time.
"""

from __future__ import annotations

import io
import struct
from typing import IO, BinaryIO, Callable, Iterator, Union

import zstandard

from converter.chunked.format import (
    FOOTER_FRAME_SIZE,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    SKIPPABLE_HEADER_SIZE,
    SKIPPABLE_MAGIC,
    Footer,
    Position,
)
from converter.errors import BadInputError

FetchRange = Callable[[int, int], bytes]
BlobSource = Union[BinaryIO, FetchRange, "BlobAccess"]

# Decompression works in pieces this large, so output is bounded to the
# limit plus one piece whatever a frame header claims.
READ_PIECE = 1 << 20
# libzstd's default window limit (2^27); a frame asking for more is refused
# instead of making the decoder allocate it.
MAX_WINDOW_SIZE = 1 << 27


def bad(where: str, what: str) -> BadInputError:
    return BadInputError(f"{where}: {what}")


class BlobAccess:
    """Random access to a blob of known size; counts requests and bytes.

    `src` is a seekable binary file or a `fetch_range(offset, length)`
    callable. For a callable, `size` (the descriptor's) is required; for a
    file it defaults to the file's length.
    """

    def __init__(self, src: BinaryIO | FetchRange, size: int | None = None, name: str = "layer") -> None:
        self.name = name
        self.requests = 0
        self.bytes_read = 0
        if hasattr(src, "seek") and hasattr(src, "read"):
            f: BinaryIO = src  # type: ignore[assignment]
            if size is None:
                size = f.seek(0, io.SEEK_END)

            def fetch(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)

            self._fetch: FetchRange = fetch
        elif callable(src):
            if size is None:
                raise ValueError("BlobAccess: a fetch_range callable needs the blob size")
            self._fetch = src
        else:
            raise TypeError(f"BlobAccess: cannot read from {type(src).__name__}")
        if size < 0:
            raise BadInputError(f"{name}: negative blob size {size}")
        self.size = size

    def read_at(self, offset: int, length: int, what: str = "range") -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise bad(
                self.name,
                f"{what} at offset {offset} length {length} lies outside the blob of {self.size} bytes",
            )
        if length == 0:
            return b""
        self.requests += 1
        data = self._fetch(offset, length)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("fetch_range must return bytes")
        data = bytes(data)
        self.bytes_read += len(data)
        if len(data) != length:
            raise bad(self.name, f"{what} at offset {offset}: got {len(data)} of {length} bytes (blob truncated?)")
        return data


def as_access(src: BlobSource, size: int | None = None, name: str = "layer") -> BlobAccess:
    if isinstance(src, BlobAccess):
        return src
    return BlobAccess(src, size, name)


def _dctx() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)


def iter_decompressed(data: bytes, max_output_size: int, what: str, piece: int = READ_PIECE) -> Iterator[bytes]:
    """All frames in `data` decompressed, in pieces; refuses more than `max_output_size` bytes of output.

    Output grows piece by piece, so a frame that expands enormously (or a
    frame header that lies about its content size) never allocates beyond
    the bound.
    """
    total = 0
    try:
        reader = _dctx().stream_reader(io.BytesIO(data), read_across_frames=True, read_size=READ_PIECE)
        while True:
            chunk = reader.read(min(piece, max_output_size + 1 - total))
            if not chunk:
                return
            total += len(chunk)
            if total > max_output_size:
                raise BadInputError(f"{what}: decompresses to more than {max_output_size} bytes")
            yield chunk
    except zstandard.ZstdError as e:
        raise BadInputError(f"{what}: not valid zstd ({e})") from None


def decompress_bounded(data: bytes, max_output_size: int, what: str) -> bytes:
    """Decompress all frames in `data`; refuse more than `max_output_size` bytes of output."""
    return b"".join(iter_decompressed(data, max_output_size, what))


def decompress_to_file(data: bytes, out: IO[bytes], max_output_size: int, what: str) -> int:
    """Decompress `data` into `out`, never writing more than `max_output_size` bytes; returns the count."""
    n = 0
    for piece in iter_decompressed(data, max_output_size, what):
        out.write(piece)
        n += len(piece)
    return n


def read_frame(access: BlobAccess, pos: Position, what: str) -> bytes:
    """The compressed bytes at `pos`, checking the skippable frame header before them."""
    raw = access.read_at(pos.offset - SKIPPABLE_HEADER_SIZE, pos.length + SKIPPABLE_HEADER_SIZE, what)
    magic, ln = raw[:4], struct.unpack("<I", raw[4:8])[0]
    if magic != SKIPPABLE_MAGIC:
        raise bad(access.name, f"{what} at offset {pos.offset} is not inside a zstd skippable frame")
    if ln != pos.length:
        raise bad(
            access.name,
            f"{what} skippable frame at offset {pos.offset - 8} holds {ln} bytes, the annotation says {pos.length}",
        )
    return raw[SKIPPABLE_HEADER_SIZE:]


def read_footer(access: BlobAccess) -> Footer:
    if access.size < FOOTER_FRAME_SIZE:
        raise bad(access.name, f"blob of {access.size} bytes is too small for a zstd:chunked footer")
    raw = access.read_at(access.size - FOOTER_FRAME_SIZE, FOOTER_FRAME_SIZE, "footer")
    if raw[:4] != SKIPPABLE_MAGIC or struct.unpack("<I", raw[4:8])[0] != FOOTER_SIZE:
        raise bad(access.name, f"no 64-byte skippable footer frame at offset {access.size - FOOTER_FRAME_SIZE}")
    if raw[8 + 56 :] != FOOTER_MAGIC:
        raise bad(access.name, f"footer at offset {access.size - FOOTER_SIZE} lacks the GNUlInUx magic")
    return Footer.unpack(raw[8:])
