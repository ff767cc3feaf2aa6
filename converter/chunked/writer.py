"""Layer writer: a tar stream in, a zstd:chunked blob out.

Output layout (every box is an independent zstd frame unless marked):

    [headers of entries 1..k, padding of the previous payload]  <- header frame
    [payload chunk][payload chunk]...                            <- one frame per chunk
    [headers ...][payload chunk]...
    [last padding, end-of-archive blocks, trailing bytes]
    [skippable: zstd(TOC)][skippable: zstd(tar-split)][skippable: footer]

Padding travels with the *next* header because the reference writer reads
it as part of the next tar header (Go's tar reader consumes padding when it
advances), so frame contents line up with what the consumer expects; only
payload frames are addressed by the TOC.

Frames are compressed in batches by zstd's own thread pool
(`multi_compress_to_buffer`) in a background thread while the main thread
parses, hashes and chunks the next batch. Each frame is compressed on its
own with the same parameters, so the output bytes do not depend on the
thread count, and a frame's bytes depend only on its content and the
encoder: a FrameStore (a cache, an earlier image) may supply any frame of a
batch instead, which writes the same bytes with less work.

The main thread's cost is per tar entry on layers of many small files, so
its loop keeps Python work per entry small: plain headers are parsed by
the native module (_rollsum.parse_header), a small payload is hashed,
CRC'd and chunked in one piece (_rollsum.chunks, which like the block
scanner runs without the GIL on larger inputs), and each TOC entry is
encoded to its final Go-JSON bytes as soon as its frames are written
(_TocWriter), never kept as a dict; past a few MiB the encoded TOC waits
in a temporary file until the end, where it is compressed in one shot
from a mapping of that file (a streamed frame would differ from the
one-shot frame the format pins; see _compress_file).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import functools
import hashlib
import logging
import mmap
import os
import tempfile
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, BinaryIO, Callable, Protocol

import zstandard
from fastcrc import crc64

from converter.chunked import toc as tocmod
from converter.chunked.chunker import ZEROS, Chunker, _rollsum, payload_chunks
from converter.chunked.compression import detect_compression, open_tar_stream
from converter.chunked.format import (
    LAYER_MEDIA_TYPE_ZSTD,
    MAX_TOC_SIZE,
    SKIPPABLE_HEADER_SIZE,
    Footer,
    skippable_frame,
    skippable_header,
)
from converter.chunked.tarsplit import TarSplitWriter, trailing_segment_problem
from converter.chunked.tarstream import LINK, CountingReader, TarStream
from converter.errors import BadInputError, IncompatibleLayerError

__all__ = ["convert_layer", "LayerResult", "detect_compression", "DEFAULT_LEVEL", "FrameStore", "encoder_identity"]

log = logging.getLogger("zconv")

# Chosen by measurement against the reference writer (klauspost zstd at its
# default level 10, "better compression"): on a Debian root filesystem layer
# our frames are 0.33% smaller at level 7 and 0.19% larger at level 6.
DEFAULT_LEVEL = 7
READ_BLOCK = 4 << 20  # payload bytes handed to the chunker at a time
BATCH_BYTES = 4 << 20  # frames compressed together (MAX_BATCHES_IN_FLIGHT in flight at most)
BATCH_FRAMES = 2048
MAX_BATCHES_IN_FLIGHT = 4  # slack for a machine shared with other work (measured: see git log)
STREAM_FRAME = 16 << 20  # chunks larger than this are compressed as a stream
HEADER_FRAME_MAX = 8 << 20  # split very long runs of header-only entries
SMALL_INLINE = 64 << 10  # payloads up to this are hashed and chunked inline in the entry loop


def encoder_identity(level: int) -> str:
    """Everything that decides the bytes of a frame, as one string.

    Frames are compressed one-shot at `level` with python-zstandard's
    defaults (content size written, no checksum, no dictionary), so their
    bytes depend on libzstd, the binding and the level. Change the leading
    tag whenever the way frames are compressed changes.
    """
    return f"f1/zstd-{'.'.join(map(str, zstandard.ZSTD_VERSION))}/py-{zstandard.__version__}/l{level}"


class FrameStore(Protocol):
    """Where already-compressed frames may come from (a cache, an earlier image).

    Keys are the raw sha256 of a frame's uncompressed bytes (for a payload
    frame, its chunk's digest). A store returns only frames it verified for
    that content and that encoder; whatever it does not return is compressed
    here and offered back with put_frames. Frames of fewer than `min_frame`
    bytes are not asked for: compressing them costs less than a lookup.
    """

    min_frame: int

    def get_frames(self, encoder: str, digests: list[bytes]) -> dict[bytes, bytes]: ...

    def put_frames(self, encoder: str, frames: list[tuple[bytes, bytes]]) -> None: ...


@dataclass(frozen=True)
class LayerResult:
    digest: str
    size: int
    diff_id: str
    annotations: dict[str, str]
    chunked: bool
    reason: str | None
    media_type: str = LAYER_MEDIA_TYPE_ZSTD
    input_compression: str = "none"
    tar_size: int = 0
    seconds: float = 0.0
    toc_entries: int = 0


class _HashingWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.offset = 0

    def write(self, data) -> None:
        self._out.write(data)
        self.sha256.update(data)
        self.offset += len(data)


class FrameSink:
    """Compresses frames in order, writes them, and records where each lands.

    Batches go to one background thread that compresses (zstd's own worker
    threads), writes, hashes the output and digests the chunks that need it,
    so the main thread only parses, chunks and hashes payloads.
    """

    def __init__(self, out: _HashingWriter, level: int, threads: int, store: FrameStore | None = None) -> None:
        self._out = out
        self._store = store
        self._encoder = encoder_identity(level)
        # Level, not explicit parameters: libzstd then picks per frame the
        # parameter row for that frame's size, whose stronger strategies for
        # small inputs make per-file frames ~1.5% smaller.
        self._level = level
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._threads = threads
        self._batch: list[bytes] = []
        self._want: list[int] = []  # frame indexes whose sha256 is wanted
        self._shas: dict[int, bytes] = {}  # frame index -> sha256 of its content, when already known
        self._first = 0  # index of the batch's first frame
        self._batch_bytes = 0
        # Two workers: one batch can be hashed, looked up and compressed while the one before is written.
        self._pool = cf.ThreadPoolExecutor(2, thread_name_prefix="zconv-frames") if threads > 1 else None
        self._inflight: deque = deque()
        self.ends = array("q")  # end offset of every frame, by index (8 bytes each)
        self.digests: dict[int, str] = {}  # frame index -> its chunk digest, until the TOC entry takes it
        # Whole-file digests hashed by the worker too (add_hash), so the parsing thread does not:
        self.file_digests: dict[int, str] = {}  # add_hash key -> hex digest, until the TOC entry takes it
        self._hashes: list[tuple[int, Any]] = []  # this batch's (key, data) to hash
        self._nhash = 0
        self._count = 0
        self._stream: zstandard.ZstdCompressionObj | None = None

    def start_of(self, idx: int) -> int:
        return self.ends[idx - 1] if idx else 0

    def add(self, data: bytes, want_digest: bool = False, sha: bytes | None = None) -> int:
        """Queue one frame (`sha`: its content's sha256 if known); returns its index."""
        idx = self._count
        self._count += 1
        self._batch.append(data)
        if want_digest:
            self._want.append(idx)
        if sha is not None and self._store is not None:
            self._shas[idx] = sha
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_FRAMES:
            self._submit()
        return idx

    def add_hash(self, data) -> int:
        """Have the worker hash a whole payload; returns the key of its digest in `file_digests`.

        Called before the payload's frames are added, so the digest is there
        once the last of them is written (batches are processed in order).
        """
        key = self._nhash
        self._nhash += 1
        self._hashes.append((key, data))
        return key

    def _process(
        self,
        first: int,
        frames: list[bytes],
        want: list[int],
        known_shas: dict[int, bytes],
        hashes: list[tuple[int, Any]],
        prev: cf.Future | None = None,
    ) -> None:
        """Hash, look up and compress one batch; then, once batch `prev` is written, write it.

        Two batches may be in their first part at once (two workers); the writes stay in order.
        """
        for key, data in hashes:
            self.file_digests[key] = hashlib.sha256(data).hexdigest()
        # Every frame of a batch is compressed one-shot on its own, so its bytes depend
        # only on its content and the encoder: a store may supply any of them.
        shas: dict[int, bytes] = {}  # position in batch -> content sha256, for frames a store may supply
        found: dict[int, bytes] = {}  # position in batch -> frame from the store
        if self._store is not None:
            least = self._store.min_frame
            for j, f in enumerate(frames):
                if len(f) >= least:
                    shas[j] = known_shas.get(first + j) or hashlib.sha256(f).digest()
            got = self._store.get_frames(self._encoder, list(set(shas.values()))) if shas else {}
            for j, sha in shas.items():
                hit = got.get(sha)
                # The store verified the frame; its declared size is a last cheap guard.
                if hit is not None and zstandard.frame_content_size(hit) == len(frames[j]):
                    found[j] = hit
        for i in want:
            sha = shas.get(i - first) or hashlib.sha256(frames[i - first]).digest()
            self.digests[i] = "sha256:" + sha.hex()
        # A context per call: multi_compress_to_buffer runs its own threads.
        cctx = zstandard.ZstdCompressor(level=self._level)
        out: Any  # the batch's frames in order: BufferSegments (sized buffers) or a list of bytes
        if not found:
            # The stub types the argument as list[bytes | bytearray | memoryview], which list[bytes] (invariant) is not.
            out = cctx.multi_compress_to_buffer(frames, threads=self._threads)  # type: ignore[arg-type]
            made = {j: out[j].tobytes() for j in shas}
        else:
            todo = [j for j in range(len(frames)) if j not in found]
            made = {}
            if todo:
                result: Any = cctx.multi_compress_to_buffer([frames[j] for j in todo], threads=self._threads)
                made = {j: result[k].tobytes() for k, j in enumerate(todo)}
            out = [found[j] if j in found else made[j] for j in range(len(frames))]
        if prev is not None:
            prev.result()  # the batch before is written (or failed: then this one fails too)
        # One write (and one hash update) per batch, not per frame.
        ends = accumulate(map(len, out), initial=self._out.offset)
        next(ends)  # the batch's start
        self._out.write(b"".join(out))
        self.ends.extend(ends)
        new = [(shas[j], f) for j, f in made.items() if j in shas]
        if new:
            self._store.put_frames(self._encoder, new)  # type: ignore[union-attr]

    def _submit(self) -> None:
        if not self._batch and not self._hashes:
            return
        job = (self._first, self._batch, self._want, self._shas, self._hashes)
        self._first, self._batch, self._want, self._shas, self._batch_bytes = self._count, [], [], {}, 0
        self._hashes = []
        if self._pool is None:
            self._process(*job)
            return
        prev = self._inflight[-1] if self._inflight else None
        self._inflight.append(self._pool.submit(self._process, *job, prev))
        while len(self._inflight) > MAX_BATCHES_IN_FLIGHT:
            self._inflight.popleft().result()

    def drain(self) -> None:
        self._submit()
        while self._inflight:
            self._inflight.popleft().result()

    # -- large frames, compressed as a stream in order
    def stream_begin(self) -> int:
        self.drain()
        idx = self._count
        self._count += 1
        self._first = self._count
        self._stream = self._cctx.compressobj()
        return idx

    def stream_write(self, data) -> None:
        assert self._stream is not None, "stream_write outside stream_begin/stream_end"
        out = self._stream.compress(data)
        if out:
            self._out.write(out)

    def stream_end(self) -> None:
        assert self._stream is not None, "stream_end without stream_begin"
        self._out.write(self._stream.flush())
        self._stream = None
        self.ends.append(self._out.offset)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


@functools.lru_cache(maxsize=256)
def _zeros_digest(n: int) -> str:
    """Digest of a zeros chunk: holes of one size recur (sparse images, disk files)."""
    h = hashlib.sha256()
    block = bytes(min(n, 1 << 20))
    for off in range(0, n, len(block)):
        h.update(block[: min(len(block), n - off)])
    return "sha256:" + h.hexdigest()


@dataclass
class _Chunk:
    """A chunk being assembled: pieces of memory, or a stream frame once large."""

    start: int
    pieces: list = field(default_factory=list)
    size: int = 0
    frame: int = -1  # set when streaming
    sha: hashlib._Hash | None = None  # the streamed frame's content hash (set with frame)


class _PayloadWriter:
    """Cuts one file's payload into chunks and queues a frame per chunk."""

    def __init__(self, sink: FrameSink, size: int, file_sha=None) -> None:
        self.sink = sink
        self.size = size
        self.file_sha = file_sha  # the whole file's hash; complete once the last byte is taken
        self.chunks: list[tuple[int, int, str, int, str | None]] = []  # (off, size, type, frame, digest)
        self.cur = _Chunk(0)
        self.emitted = 0

    def take(self, block: memoryview, block_start: int, upto: int) -> None:
        """Append file bytes [emitted, upto) to the current chunk."""
        a = self.emitted
        if upto <= a:
            return
        while a < min(upto, block_start):  # held zeros from earlier blocks
            z = min(upto, block_start, a + READ_BLOCK) - a
            self._append(bytes(z))
            a += z
        if upto > a:
            self._append(block[a - block_start : upto - block_start])
        self.emitted = upto

    def _append(self, data) -> None:
        c = self.cur
        if c.frame >= 0:
            assert c.sha is not None  # set together with frame
            c.sha.update(data)
            self.sink.stream_write(data)
        else:
            c.pieces.append(data)
        c.size += len(data)
        if c.frame < 0 and c.size > STREAM_FRAME:
            c.frame = self.sink.stream_begin()
            sha = c.sha = hashlib.sha256()
            for p in c.pieces:
                sha.update(p)
                self.sink.stream_write(p)
            c.pieces = []

    def cut(self, typ: str) -> None:
        c = self.cur
        if c.size == 0:
            return
        single = c.start == 0 and self.emitted == self.size
        if c.frame >= 0:
            self.sink.stream_end()
            frame = c.frame
            assert c.sha is not None  # set together with frame
            digest = "sha256:" + c.sha.hexdigest()
        else:
            data = c.pieces[0] if len(c.pieces) == 1 else b"".join(c.pieces)
            data = bytes(data)
            digest = None  # one chunk: the file digest says it all
            if not single and typ == ZEROS:
                digest = _zeros_digest(len(data))
            sha = self.file_sha.digest() if single and self.file_sha is not None else None
            frame = self.sink.add(data, want_digest=not single and typ != ZEROS, sha=sha)
        self.chunks.append((c.start, c.size, typ, frame, digest))
        self.cur = _Chunk(self.emitted)


def _write_payload(tar: TarStream, sink: FrameSink, size: int):
    """Read `size` payload bytes in blocks; returns (chunks, sha256 hex, crc64)."""
    sha = hashlib.sha256()
    crc = None
    chunker = Chunker()
    pw = _PayloadWriter(sink, size, sha)
    left = size
    block = memoryview(b"")
    while left:
        data = tar.read_payload_some(min(left, READ_BLOCK))
        left -= len(data)
        sha.update(data)
        crc = crc64.go_iso(data, crc) if crc is not None else crc64.go_iso(data)
        block = memoryview(data)
        block_start = chunker.pos
        cuts, safe = chunker.feed(block)
        for end, typ in cuts:
            pw.take(block, block_start, end)
            pw.cut(typ)
        pw.take(block, block_start, safe)
    block_start = chunker.pos  # everything still held is zeros
    for end, typ in chunker.finish():
        pw.take(block[len(block) :], block_start, end)
        pw.cut(typ)
    return pw.chunks, sha.hexdigest(), crc


def _write_small_payload(tar: TarStream, sink: FrameSink, size: int):
    """The same for a payload read in one piece (at most READ_BLOCK bytes).

    The file digest is left to the sink's worker (the second item is then
    None: the one chunk's digest, or an add_hash key), off the parsing thread.
    """
    data = tar.read_payload(size)
    crc = crc64.go_iso(data)
    parts = payload_chunks(data)
    if len(parts) == 1:  # the common case: one chunk, whose digest is the file's
        return [(0, size, parts[0][2], sink.add(data, want_digest=True), None)], None, crc
    key = sink.add_hash(data)
    return _small_chunks(data, sink, parts), key, crc


def _small_chunks(data: bytes, sink: FrameSink, parts=None) -> list:
    """Queue a frame per chunk of a payload at hand (more than one chunk); returns the chunk list."""
    mv = memoryview(data)
    chunks = []
    for off, n, typ in parts or payload_chunks(data):
        zeros = typ == ZEROS
        frame = sink.add(bytes(mv[off : off + n]), want_digest=not zeros)
        chunks.append((off, n, typ, frame, _zeros_digest(n) if zeros else None))
    return chunks


def _check_hostile(h, what: str) -> None:
    if b".." in h.name and tocmod.climbs_out(h.name):
        raise BadInputError(
            f"{what}: tar entry {h.name.decode('utf-8', 'replace')!r} at offset {h.offset} "
            "climbs out of the layer root with '..'"
        )
    if h.typeflag == LINK and tocmod.climbs_out(h.linkname):
        raise BadInputError(
            f"{what}: hardlink {h.name.decode('utf-8', 'replace')!r} at offset {h.offset} "
            f"points outside the layer root ({h.linkname.decode('utf-8', 'replace')!r})"
        )


class _TocWriter:
    """TOC entries encoded to their final JSON bytes as soon as their frames are written.

    An entry waits (as a small tuple) only until the sink has written its
    last frame, which fixes its offsets and chunk digests; then it is
    appended to one bytearray, so the TOC costs its JSON size in memory and
    no Python object per entry.
    """

    SPILL = 4 << 20  # encoded entries beyond this go to a temporary file until the end

    def __init__(self, sink: FrameSink) -> None:
        self.sink = sink
        self.raw = bytearray(tocmod.TOC_HEAD)
        self.count = 0
        self._pending: deque = deque()  # (last frame or -1, head, name json, digest, chunks)
        self._spill: Any = None  # a temporary file once the TOC outgrows SPILL
        self._spilled = 0
        self._started = False

    def add(self, head: bytes, name: bytes, digest: str | int | None = None, chunks=None) -> None:
        """One entry; `digest`: the file's hex digest, an add_hash key, or None for the one chunk's."""
        self._pending.append((chunks[-1][3] if chunks else -1, head, name, digest, chunks))
        self.count += 1 + (len(chunks) - 1 if chunks else 0)

    def flush(self) -> None:
        """Encode the entries whose frames are all written."""
        q = self._pending
        done = len(self.sink.ends)
        while q and q[0][0] < done:
            self._encode(*q.popleft())
        if len(self.raw) > self.SPILL:
            # Many small files make a large TOC: keep it on disk while the
            # layer is converted, so the peak is not TOC + working set.
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="zconv-toc-")
            self._spill.write(self.raw)
            self._spilled += len(self.raw)
            self.raw = bytearray()

    def _encode(self, last: int, head: bytes, name: bytes, digest: str | int | None, chunks) -> None:
        out = self.raw
        if self._started:
            out += b","
        self._started = True
        out += head
        if chunks is None:
            out += b"}"
            return
        ends, start_of, digests = self.sink.ends, self.sink.start_of, self.sink.digests
        if digest is None:  # one chunk: the file's digest is its frame's, hashed by the sink
            full = digests.pop(chunks[0][3])
        else:
            full = "sha256:" + (self.sink.file_digests.pop(digest) if isinstance(digest, int) else digest)
        out += b',"digest":"%s","offset":%d,"endOffset":%d' % (
            full.encode(),
            start_of(chunks[0][3]),
            ends[last],
        )
        if len(chunks) > 1:
            for i, (off, size, typ, frame, cdigest) in enumerate(chunks):
                if i:
                    out += b'},{"type":"chunk","name":%s,"offset":%d' % (name, start_of(frame))
                out += b',"chunkSize":%d' % size
                if off:
                    out += b',"chunkOffset":%d' % off
                out += b',"chunkDigest":"%s"' % (cdigest or digests.pop(frame)).encode()
                if typ == ZEROS:
                    out += b',"chunkType":"zeros"'
        out += b"}"

    def finish(self, tarsplit_digest: str) -> int:
        """Complete the TOC (in memory, or at the end of the spill file); returns its size."""
        self.flush()
        assert not self._pending, "TOC entries left without their frames"
        if not self.count:
            self.raw = bytearray(tocmod.toc_json([], tarsplit_digest))
            return len(self.raw)
        self.raw += tocmod.toc_tail(tarsplit_digest)
        if self._spill is None:
            return len(self.raw)
        self._spill.write(self.raw)
        self._spilled += len(self.raw)
        self.raw = bytearray()
        self._spill.flush()
        return self._spilled

    def compress(self, cctx: zstandard.ZstdCompressor) -> bytes:
        """The finished TOC compressed in one shot (what the format pins: a streamed frame differs)."""
        if self._spill is None:
            return cctx.compress(self.raw)
        return _compress_file(cctx, self._spill, self._spilled)

    def close(self) -> None:
        self.raw = bytearray()
        if self._spill is not None:
            self._spill.close()
            self._spill = None


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):  # not glibc, or no dlopen(NULL)
        return None


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing).

    What the entry loop freed (batches, the worker threads' buffers) stays
    in glibc's arenas otherwise: about 15 MiB on a layer of 600,000 files,
    under the TOC's compressed copy.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


DROP_EVERY = 0.05  # seconds between drops of the TOC's mapped pages while it is compressed


def _compress_file(cctx: zstandard.ZstdCompressor, f: BinaryIO, size: int) -> bytes:
    """cctx.compress() of a file's `size` bytes, without holding them in process memory.

    The one-shot compression needs its whole input as one buffer, and
    libzstd's streaming API writes other bytes (measured: levels 1 to 7
    differ, the default among them). So the file is mapped, not read, and
    while zstd (which releases the GIL) compresses the mapping, a thread
    drops its pages from the process every DROP_EVERY seconds (MADV_DONTNEED
    on a shared file mapping: the next access maps them again from the page
    cache or the file, so the bytes zstd reads never change). The peak
    memory is then the output and the few MiB read since the last drop, not
    the whole TOC (up to 150 MiB on a layer of ~600,000 files).
    """
    dontneed = getattr(mmap, "MADV_DONTNEED", None)
    try:
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # no mapping here: read it (the same bytes, in memory)
        f.seek(0)
        data = f.read(size)
        if len(data) != size:
            raise OSError("temporary TOC file came back short") from None
        return cctx.compress(data)
    stop = threading.Event()
    dropper = None
    if dontneed is not None:
        advice: int = dontneed

        def drop() -> None:
            while not stop.wait(DROP_EVERY):
                mm.madvise(advice)

        dropper = threading.Thread(target=drop, name="zconv-toc-drop", daemon=True)
    try:
        if dropper is not None:
            dropper.start()
        with memoryview(mm) as view:
            return cctx.compress(view)
    finally:
        stop.set()
        if dropper is not None:
            dropper.join()
        mm.close()


def _write_chunked(
    tar: TarStream, out: _HashingWriter, level: int, threads: int, what: str, store: FrameStore | None = None
) -> tuple[dict, int]:
    """The whole chunked encoding; raises NotRepresentable to ask for plain zstd."""
    sink = FrameSink(out, level, threads, store)
    cctx = zstandard.ZstdCompressor(level=level)
    tsw = TarSplitWriter(cctx)
    toc = _TocWriter(sink)
    header = bytearray()
    nentries = 0
    # The loop runs once per tar entry: names bound locally, the one-chunk
    # small file (the common entry of a many-files layer) handled inline.
    tar_next, sink_add, toc_add, tsw_entry = tar.next, sink.add, toc.add, tsw.entry
    read_payload, encode_head, go_iso = tar.read_payload, tocmod.encode_head, crc64.go_iso
    scan = _rollsum.chunks if _rollsum is not None else None
    try:
        while True:
            h = tar_next()
            if h is None:
                header += tar.trailer
                tsw.segment(tar.trailer)
                break
            raw = tar.raw
            if b".." in h.name or h.typeflag == LINK:
                _check_hostile(h, what)
            head, name = encode_head(h)
            n = tar.payload_remaining
            nentries += 1
            if nentries & 63 == 0:
                toc.flush()
            if n == 0:
                header += raw
                tsw_entry(raw, h.name, h.size, 0 if h.size > 0 else None)
                toc_add(head, name)
                if len(header) > HEADER_FRAME_MAX:
                    sink_add(bytes(header))
                    header.clear()
                continue
            if header:
                header += raw
                sink_add(bytes(header))
                header.clear()
            else:
                sink_add(raw)
            if n <= SMALL_INLINE and scan is not None:
                data = read_payload(n)
                crc = go_iso(data)
                # The digests are the sink worker's to compute (this thread sets the pace).
                if len(scan(data)) == 1:  # one chunk: its digest is the file's
                    digest = None
                    chunks = [(0, n, "", sink_add(data, True), None)]
                else:
                    digest = sink.add_hash(data)
                    chunks = _small_chunks(data, sink)
            elif n <= READ_BLOCK:
                chunks, digest, crc = _write_small_payload(tar, sink, n)
            else:
                chunks, digest, crc = _write_payload(tar, sink, n)
            tsw_entry(raw, h.name, h.size, crc)
            toc_add(head, name, digest, chunks)
        trail_head = bytearray()  # the first 1024 bytes after the end-of-archive blocks
        trail_len = 0
        for piece in tar.read_trailing():
            if len(trail_head) < 1024:
                trail_head += piece[: 1024 - len(trail_head)]
            trail_len += len(piece)
            header += piece
            tsw.segment(piece)
            if len(header) > HEADER_FRAME_MAX:
                sink.add(bytes(header))
                header.clear()
        problem = trailing_segment_problem(bytes(trail_head), trail_len)
        if problem is not None:
            raise tocmod.NotRepresentable(problem)
        if header:
            sink.add(bytes(header))
        sink.drain()
    except BaseException:
        tsw.close()  # abandoned half way: stop its worker (finish() does it otherwise)
        toc.close()
        raise
    finally:
        sink.close()
    tarsplit = None
    try:
        tarsplit, tarsplit_size, tarsplit_digest = tsw.finish(check=False)  # names checked below
        toc_len = toc.finish(tarsplit_digest)
        sink.ends = array("q")  # every TOC entry is encoded: the frame offsets are not needed any more
        _trim_heap()  # before the TOC's compressed copy is made, the peak of a many-entry layer
        # The consumer's only size limit (maxTocSize in containers/storage
        # pkg/chunked/compression_linux.go), on the TOC compressed and uncompressed.
        if toc_len > MAX_TOC_SIZE:
            raise tocmod.NotRepresentable(f"TOC of {toc_len} bytes exceeds the consumer's 150 MiB limit")
        toc_z = toc.compress(cctx)
        toc.close()
        if len(toc_z) > MAX_TOC_SIZE:
            raise tocmod.NotRepresentable(f"compressed TOC of {len(toc_z)} bytes exceeds the consumer's 150 MiB limit")
        # Each skippable frame written as its header then its data, not joined into one more copy.
        toc_off = out.offset + SKIPPABLE_HEADER_SIZE
        out.write(skippable_header(len(toc_z)))
        out.write(toc_z)
        toc_z_len = len(toc_z)
        toc_digest = "sha256:" + hashlib.sha256(toc_z).hexdigest()
        del toc_z
        ts_off = out.offset + SKIPPABLE_HEADER_SIZE
        out.write(skippable_header(tarsplit_size))
        while block := tarsplit.read(READ_BLOCK):
            out.write(block)
        if out.offset != ts_off + tarsplit_size:
            raise OSError("temporary tar-split file came back short")
        # Last, so that its moment of memory (sorting a hash per name) and the TOC's do not add up.
        tsw.check_names()  # NotRepresentable if a path appears twice: the layer is then written again
    finally:
        if tarsplit is not None:
            tarsplit.close()
        toc.close()
    footer = Footer(toc_off, toc_z_len, toc_len, ts_off, tarsplit_size, tsw.uncompressed_size)
    out.write(skippable_frame(footer.pack()))
    annotations = footer.annotations(toc_digest)
    return annotations, toc.count


def _write_plain(tar: TarStream, out: _HashingWriter, level: int) -> None:
    """Plain zstd of the tar, still parsing it so hostile entries are refused."""
    cobj = zstandard.ZstdCompressor(level=level).compressobj()

    def tap(data: bytes) -> None:
        b = cobj.compress(data)
        if b:
            out.write(b)

    tar.src.tap = tap
    while True:
        h = tar.next()
        if h is None:
            break
        _check_hostile(h, tar.src.what)
        while tar.payload_remaining:
            tar.read_payload(READ_BLOCK)
    for _ in tar.read_trailing():
        pass
    out.write(cobj.flush())


def convert_layer(
    open_src: Callable[[], BinaryIO],
    out: BinaryIO,
    *,
    level: int | None = None,
    threads: int = 0,
    strict: bool = False,
    name: str = "layer",
    frames: FrameStore | None = None,
) -> LayerResult:
    """Convert one layer blob (gzip, zstd or plain tar) to zstd:chunked.

    `open_src` is called again if the layer has to be written as plain zstd
    after all (then `out` is truncated and rewritten). `frames` may supply
    frames already compressed (same bytes, less work). Raises BadInputError
    for corrupt or hostile input and IncompatibleLayerError under `strict`
    when zstd:chunked cannot represent the layer.
    """
    level = DEFAULT_LEVEL if level is None else level
    if threads <= 0:
        threads = os.cpu_count() or 1
    t0 = time.monotonic()

    def one_pass(write) -> tuple[str, str, int, _HashingWriter]:
        """Run `write(tar, out)` over a fresh read of the source."""
        with open_src() as raw:
            stream, kind = open_tar_stream(raw, name)
            src = CountingReader(stream, name, sha256=stream.sha256)
            try:
                w = _HashingWriter(out)
                write(TarStream(src), w)
                return kind, "sha256:" + src.sha256.hexdigest(), src.offset, w
            finally:
                stream.close()

    reason = None
    result: dict = {}

    def chunked(tar: TarStream, w: _HashingWriter) -> None:
        result["annotations"], result["entries"] = _write_chunked(tar, w, level, threads, name, frames)

    try:
        kind, diff_id, tar_size, w = one_pass(chunked)
    except tocmod.NotRepresentable as e:
        reason = str(e)
        if strict:
            raise IncompatibleLayerError(f"{name}: cannot be written as zstd:chunked: {reason}") from None
        log.warning("%s: written as plain zstd, not zstd:chunked: %s", name, reason)
        out.seek(0)
        out.truncate()
        kind, diff_id, tar_size, w = one_pass(lambda tar, w: _write_plain(tar, w, level))
    out.flush()
    return LayerResult(
        digest="sha256:" + w.sha256.hexdigest(),
        size=w.offset,
        diff_id=diff_id,
        annotations=result.get("annotations", {}),
        chunked=reason is None,
        reason=reason,
        input_compression=kind,
        tar_size=tar_size,
        seconds=time.monotonic() - t0,
        toc_entries=result.get("entries", 0),
    )
