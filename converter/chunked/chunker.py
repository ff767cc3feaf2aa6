"""Content-defined chunk boundaries, identical to the reference writer's.

Rules (containers/storage pkg/chunked/compressor, see the format spec §3):
a fresh bup-style rolling checksum runs over each file's payload; after a
data byte is rolled in, the chunk ends when the low 16 bits of s2 are all
ones. Maximal runs of at least 1024 zero bytes are holes: the data chunk
ends where the run starts, the run is one `zeros` chunk, and no split is
tested inside it (its bytes are still rolled into the checksum, so the
checksum after a hole is the same as if the zeros had been data).

Two scanners give the same chunks: the native one (_rollsum.c, built at
install) and a numpy one (chunker_numpy.py) used when no C compiler was
available. Both feed a file's payload in blocks: `feed()` returns the chunk
ends now decided, as (end_offset, type), and the offset up to which bytes
are final (a zero run at the end of a block may go on in the next one, so
it is held back); `finish()` returns the remaining ends, the last one at
the file size. `payload_chunks()` chunks a payload at hand in one call.

The native scanner releases the GIL on blocks of 8 KiB or more and rolls
eight bytes at a time (SSE2) where no split, hole or pending decision can
occur, byte by byte elsewhere.
"""

from __future__ import annotations

from converter.chunked.format import CHAR_OFFSET, WINDOW
from converter.chunked.format import CHUNK_TYPE_DATA as DATA
from converter.chunked.format import CHUNK_TYPE_ZEROS as ZEROS


class NativeChunker:
    """The same interface over the C scanner (converter/chunked/_rollsum.c)."""

    def __init__(self) -> None:
        # (s1, s2, window offset, window, zero run, position, pending splits)
        self._state = (WINDOW * CHAR_OFFSET, WINDOW * (WINDOW - 1) * CHAR_OFFSET, 0, bytes(WINDOW), 0, 0, ())

    @property
    def pos(self) -> int:
        return self._state[5]

    def feed(self, data) -> tuple[list[tuple[int, str]], int]:
        cuts, self._state = _rollsum.scan(data, self._state)
        return [(end, ZEROS if z else DATA) for end, z in cuts], self._state[5] - self._state[4]

    def finish(self) -> list[tuple[int, str]]:
        cuts, self._state = _rollsum.finish(self._state)
        out = [(end, ZEROS if z else DATA) for end, z in cuts]
        out.append((self.pos, DATA))
        return out


try:
    from converter.chunked import _rollsum
except ImportError:  # built without a C compiler: same chunks, numpy speed
    _rollsum = None


def default_chunker():
    """The native scanner when built; numpy (imported only then) otherwise."""
    if _rollsum is not None:
        return NativeChunker
    from converter.chunked.chunker_numpy import NumpyChunker

    return NumpyChunker


Chunker = default_chunker()


def chunk_boundaries(data: bytes, block: int = 1 << 22, impl=None) -> list[tuple[int, int, str]]:
    """All chunks of one payload as (offset, size, type); empty payload -> []."""
    ch = (impl or Chunker)()
    ends: list[tuple[int, str]] = []
    mv = memoryview(data)
    for i in range(0, len(data), block):
        ends.extend(ch.feed(mv[i : i + block])[0])
    ends.extend(ch.finish())
    return normalize(ends)


def payload_chunks(data) -> list[tuple[int, int, str]]:
    """chunk_boundaries() of a payload at hand in one piece: one call into the native scanner."""
    if _rollsum is None:
        return chunk_boundaries(data)
    return [(off, n, ZEROS if z else DATA) for off, n, z in _rollsum.chunks(data)]


def normalize(ends: list[tuple[int, str]]) -> list[tuple[int, int, str]]:
    """Turn a sorted list of chunk ends into chunks, dropping empty ones.

    Several ends can fall on one offset (a split right before a hole, or on
    the last byte): only the first makes a chunk, as in the reference, where
    an empty chunk is never recorded.
    """
    out: list[tuple[int, int, str]] = []
    start = 0
    for end, typ in ends:
        if end > start:
            out.append((start, end - start, typ))
            start = end
    return out
