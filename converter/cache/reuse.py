"""--reuse-from: payload frames taken from an earlier zstd:chunked image.

The TOCs of the earlier image's layers say where the frame of every chunk
lies; only layers whose encoder annotation matches ours are used, because
only then is the frame the exact bytes we would write. Frames are fetched
with ranged reads: neighbours coalesced into one range, many ranges in one
request (a multi-range GET on registries), and each frame is
decompressed and checked against the chunk's sha256 before it is used;
anything else is left to the writer to compress.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import zstandard

from converter.cache import ENCODER_ANNOTATION
from converter.cache.frames import SourceStats
from converter.errors import UsageError, ZconvError
from converter.image.model import Descriptor, ImageSource, short

log = logging.getLogger("zconv")

GAP = 8 << 10  # bytes between two wanted frames still fetched as one range (a part costs ~150 bytes)
MAX_RANGE = 16 << 20  # bytes of one coalesced range
MAX_REQUEST = 16 << 20  # bytes of the ranges of one request
#: Ranges of one multi-range GET. containers/storage sends up to 1024 in one request and
#: halves them when a server answers 400; 256 keep the Range header under nginx's 8 KiB.
MAX_RANGES = 256
PARALLEL = 4  # requests in flight: a batch's requests overlap their round trips


@dataclass(frozen=True)
class _Where:
    layer: int  # index into ReuseFrames._layers
    offset: int
    end: int
    size: int


class ReuseFrames:
    """Frames of the images `refs` name (any transport), for the writer's FrameStore."""

    def __init__(self, refs: list[str], options: Any = None) -> None:
        self.stats = SourceStats()
        self.requests = 0  # reads (one multi-range GET each on a registry)
        self.ranges = 0  # coalesced byte ranges those reads carried
        self.bytes_fetched = 0
        self.rejected = 0
        self.layers_indexed = 0
        self._stack = ExitStack()
        self._layers: list[tuple[ImageSource, Descriptor, str]] = []  # source, layer, encoder
        self._where: dict[tuple[str, bytes], _Where] = {}
        self._dead: set[int] = set()  # layers whose ranged reads failed: not asked again
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="zconv-reuse")
        try:
            for ref in refs:
                self._index(ref, options)
        except BaseException:
            self.close()
            raise

    def _index(self, ref: str, options: Any) -> None:
        from converter.image.refs import open_source, parse_ref

        parsed = parse_ref(ref)  # a malformed reference is the user's to fix: it fails the run
        try:
            src = self._stack.enter_context(open_source(parsed, options))
            self._index_source(src, ref)
        except UsageError:
            raise
        except ZconvError as e:
            # The first build has no previous tag: converting without it is the right answer.
            log.warning("--reuse-from %s: not usable (%s); its frames are not reused", ref, e)

    def _index_source(self, src: ImageSource, ref: str) -> None:
        from converter.chunked.reader import group_files, parse_annotations, payload_end_of
        from converter.imageread import iter_manifests, read_layer_toc

        seen: set[str] = set()
        for _label, _desc, manifest in iter_manifests(src):
            for layer in manifest.layers:
                encoder = layer.annotations.get(ENCODER_ANNOTATION)
                if not encoder or layer.digest in seen:
                    continue
                seen.add(layer.digest)
                name = f"--reuse-from {ref}: layer {short(layer.digest)}"
                try:
                    toc, _ = read_layer_toc(src, layer)
                    ann = parse_annotations(layer.annotations, layer.size, name, require_tarsplit=False)
                    files = group_files(toc["entries"], payload_end_of(ann), name)  # typed TocEntry objects
                except ZconvError as e:
                    log.warning("%s: TOC not usable, frames not reused: %s", name, e)
                    continue
                li = len(self._layers)
                self._layers.append((src, layer, encoder))
                self.layers_indexed += 1
                for f in files:
                    for c in f.chunks:
                        try:
                            raw = bytes.fromhex(c.digest.split(":", 1)[1])
                        except (ValueError, IndexError):
                            continue
                        self._where.setdefault((encoder, raw), _Where(li, c.offset, c.end, c.size))

    def get_frames(self, encoder: str, digests: list[bytes]) -> dict[bytes, bytes]:
        wanted = [(w, d) for d in digests if (w := self._where.get((encoder, d))) is not None]
        wanted = [(w, d) for w, d in wanted if w.layer not in self._dead]
        if not wanted:
            return {}
        out: dict[bytes, bytes] = {}
        by_layer: dict[int, list[tuple[_Where, bytes]]] = {}
        for w, d in wanted:
            by_layer.setdefault(w.layer, []).append((w, d))
        jobs: list[tuple[int, list[list[tuple[_Where, bytes]]]]] = []
        for li, items in by_layer.items():
            items.sort(key=lambda t: t[0].offset)
            jobs += [(li, groups) for groups in _requests(_coalesce(items))]
        results = self._pool.map(self._fetch, jobs) if len(jobs) > 1 else map(self._fetch, jobs)
        dctx = zstandard.ZstdDecompressor()
        for (_, groups), datas in zip(jobs, results):
            self.requests += 1
            self.ranges += len(groups)
            if datas is None:
                continue
            for group, data in zip(groups, datas):
                self.bytes_fetched += len(data)
                start = group[0][0].offset
                for w, d in group:
                    frame = data[w.offset - start : w.end - start]
                    if _verify(dctx, frame, w.size, d):
                        out[d] = frame
                        self.stats.add(w.size, len(frame))
                    else:
                        self.rejected += 1
        return out

    def _fetch(self, job: tuple[int, list[list[tuple[_Where, bytes]]]]) -> list[bytes] | None:
        """The bytes of a request's ranges (one multi-range GET on a registry), None if unusable."""
        li, groups = job
        src, layer, _ = self._layers[li]
        ranges = [(g[0][0].offset, max(w.end for w, _ in g) - g[0][0].offset) for g in groups]
        try:
            datas = src.read_blob_ranges(layer, ranges)
        except ZconvError as e:
            with self._lock:
                first = li not in self._dead
                self._dead.add(li)
            if first:
                # A source that answers ranged reads unusably is not asked again in this run.
                log.warning(
                    "--reuse-from: layer %s: %d range(s) from byte %d not read (%s); its frames are compressed instead",
                    short(layer.digest),
                    len(ranges),
                    ranges[0][0],
                    e,
                )
            return None
        if len(datas) != len(ranges) or any(len(d) != n for d, (_, n) in zip(datas, ranges)):
            raise AssertionError(f"read_blob_ranges of {src.description} returned other lengths than asked")
        return datas

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._stack.close()


def _requests(groups: list[list[tuple[_Where, bytes]]]) -> list[list[list[tuple[_Where, bytes]]]]:
    """Coalesced ranges of one layer packed into requests: at most MAX_RANGES ranges and
    MAX_REQUEST bytes each, so a big batch still keeps PARALLEL requests in flight."""
    out: list[list[list[tuple[_Where, bytes]]]] = []
    size = 0
    for g in groups:
        n = max(w.end for w, _ in g) - g[0][0].offset
        if not out or len(out[-1]) >= MAX_RANGES or size + n > MAX_REQUEST:
            out.append([])
            size = 0
        out[-1].append(g)
        size += n
    return out


def _coalesce(items: list[tuple[_Where, bytes]]) -> list[list[tuple[_Where, bytes]]]:
    groups: list[list[tuple[_Where, bytes]]] = []
    for it in items:
        w = it[0]
        if groups:
            g = groups[-1]
            g_start, g_end = g[0][0].offset, max(x.end for x, _ in g)
            if w.offset - g_end <= GAP and max(g_end, w.end) - g_start <= MAX_RANGE:
                g.append(it)
                continue
        groups.append([it])
    return groups


def _verify(dctx: zstandard.ZstdDecompressor, frame: bytes, size: int, digest: bytes) -> bool:
    """One whole frame that decompresses to exactly the chunk's bytes."""
    try:
        if zstandard.frame_content_size(frame) != size:
            return False
        dobj = dctx.decompressobj()
        data = dobj.decompress(frame)
    except zstandard.ZstdError:
        return False
    # Exactly one frame: trailing bytes would change the blob we write.
    return dobj.eof and not dobj.unused_data and len(data) == size and hashlib.sha256(data).digest() == digest
