"""`zconv estimate OLD... NEW`: what a partial pull of NEW costs a client that has OLD.

This replays containers/storage's decisions (pkg/chunked/storage_linux.go
ApplyDiff, cache_linux.go) on the images' TOCs, without pulling anything:

* A layer whose blob digest or TOC digest is already in the store is not
  pulled at all (c/image reuses it).
* A layer without zstd:chunked annotations, or whose TOC / tar-split the
  consumer would refuse, is downloaded whole.
* Otherwise, for each regular file of the layer (in TOC order):
  - it is found whole in a layer of the store, by its digest (or, with
    use_hard_links, by its "hard link fingerprint": digest, uid, gid, mode,
    xattrs) -> nothing to fetch;
  - else each chunk is found by chunk digest in the store (a chunk digest or
    a file digest there), or is a `zeros` chunk -> nothing to fetch for it;
  - else the chunk's compressed range is fetched.
  The consumer logs "Missing X bytes out of Y": Y sums the sizes of the
  layer's regular files (and devices/fifos), X the sizes of what was not
  found. Hard links, directories, symlinks and empty files count for nothing.
* Chunk reuse: containers/storage v1.65+ reuses chunks only when the
  store's filesystem can reflink (btrfs, XFS); elsewhere every chunk of a
  file not found whole is fetched. `reflinks` selects which to model.
* "The store" is every zstd:chunked layer of OLD that a partial pull would
  have accepted (only those leave a TOC behind for the cache) plus NEW's own
  lower layers, because layers are committed in order as they arrive (exact
  for serial pulls; with parallel downloads a lower layer may not be
  committed yet, and then the consumer finds less).
* Compressed bytes to fetch: TOC + tar-split, plus the missing ranges after
  the consumer's range merging (mergeMissingChunks: neighbouring ranges of a
  file, then the cheapest gaps until at most 1024 ranges remain, and gaps
  under 1 KiB always). A multi-chunk file's last range ends where the next
  payload starts, as the consumer computes it.
* Disk a hard-link-deduplicating store adds: the regular files not found by
  fingerprint, minus their zero chunks (written as holes).

Known approximations: a digest present in the cache both as a whole file and
as a chunk at a non-zero offset is taken as found (the consumer's lookup may
pick the chunk entry and miss it); OSTree repositories and additional image
stores are not modelled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from converter.chunked.format import (
    CHUNK_TYPE_ZEROS,
    MANIFEST_CHECKSUM_KEY,
    SHA256_EMPTY,
    TYPE_CHUNK,
    TYPE_REG,
    is_chunked,
)
from converter.chunked.reader import ChunkedLayer, TocEntry, load_layer
from converter.errors import BadInputError, UsageError
from converter.image.model import Descriptor, ImageSource, Index, Manifest, Platform, short
from converter.imageread import Node, layer_access, layer_name, parse_platform, pick_instance, walk
from converter.progress import human
from converter.textsafe import printable_lines

MAX_NUMBER_MISSING_CHUNKS = 1024  # maxNumberMissingChunks
AUTO_MERGE_PARTS_THRESHOLD = 1024  # autoMergePartsThreshold
_U64 = (1 << 64) - 1


# ----------------------------------------------------------- the store cache


def hard_link_fingerprint(e: TocEntry) -> str:
    """calculateHardLinkFingerprint: digest, uid:gid:mode (octal), sorted xattrs."""
    h = hashlib.sha256()
    h.update(e.digest.encode())
    h.update(f"{e.uid}:{e.gid}:{e.mode:o}".encode())
    for k in sorted(e.xattrs):
        h.update(k.encode("utf-8", "surrogateescape"))
        h.update(e.xattrs[k].encode("utf-8", "surrogateescape"))
    return "sha256:" + h.hexdigest()


@dataclass
class StoreCache:
    """What the consumer's layers cache can find: file digests, fingerprints, chunk digests."""

    file_digests: set[str] = field(default_factory=set)
    fingerprints: set[str] = field(default_factory=set)
    chunk_digests: set[str] = field(default_factory=set)
    blob_digests: set[str] = field(default_factory=set)
    toc_digests: set[str] = field(default_factory=set)

    def add_layer(self, entries: Iterable[TocEntry]) -> None:
        for e in entries:
            digest = e.digest
            if e.type == TYPE_REG and e.size == 0 and not digest:
                digest = SHA256_EMPTY  # unmarshalToc does this
            if digest:
                self.file_digests.add(digest)
                self.fingerprints.add(hard_link_fingerprint(e) if digest == e.digest else _fp_with(e, digest))
            if e.chunk_digest:
                self.chunk_digests.add(e.chunk_digest)

    def has_file(self, e: TocEntry, hard_links: bool) -> bool:
        if hard_links:
            return hard_link_fingerprint(e) in self.fingerprints
        return e.digest in self.file_digests

    def has_chunk(self, chunk_digest: str) -> bool:
        if not chunk_digest:
            return False
        return chunk_digest in self.chunk_digests or chunk_digest in self.file_digests


def _fp_with(e: TocEntry, digest: str) -> str:
    return hard_link_fingerprint(e.replace(digest=digest))


# ----------------------------------------------------- replaying ApplyDiff


@dataclass
class _Chunk:
    offset: int
    end_offset: int
    chunk_size: int
    chunk_digest: str
    chunk_type: str


@dataclass
class _Merged:
    entry: TocEntry
    end_offset: int
    chunks: list[_Chunk]


def merge_toc_entries(entries: list[TocEntry], toc_offset: int) -> list[_Merged]:
    """mergeTocEntries: files with their chunks, and the consumer's end offsets."""
    merged: list[_Merged] = []
    i = 0
    n = len(entries)
    while i < n:
        e = entries[i]
        if e.type == TYPE_CHUNK:
            raise BadInputError(f"TOC entry {e.index}: chunk type without a regular file")
        chunks: list[_Chunk] = []
        end = e.end_offset
        if e.type == TYPE_REG:
            j = i + 1
            while j < n and entries[j].type == TYPE_CHUNK:
                j += 1
            for k in range(i, j):
                c = entries[k]
                chunks.append(_Chunk(c.offset, c.end_offset, c.chunk_size, c.chunk_digest, c.chunk_type))
            # The file's end is the *last* part's endOffset; chunk entries
            # written by the reference writer have none, so it becomes 0 and
            # is filled in below from the next payload's offset.
            end = entries[j - 1].end_offset
            i = j
        else:
            i += 1
        merged.append(_Merged(e, end, chunks))
    last = toc_offset
    for m in reversed(merged):
        if m.end_offset == 0:
            m.end_offset = last
        if m.entry.offset != 0:
            last = m.entry.offset
        last_chunk = m.end_offset
        for part in reversed(m.chunks):
            part.end_offset = last_chunk
            last_chunk = part.offset
    return merged


@dataclass
class _Part:
    offset: int
    length: int
    origin: bool  # found in the store
    hole: bool  # zeros chunk
    name: str
    chunks: int = 1


def merge_missing_chunks(parts: list[_Part], target: int) -> list[_Part]:
    """mergeMissingChunks: the ranges the consumer really requests."""
    if not parts:
        return []
    parts = [_Part(p.offset, p.length, p.origin, p.hole, p.name, p.chunks) for p in parts]

    def gap(a: _Part, b: _Part) -> int:
        return (b.offset - (a.offset + a.length)) & _U64

    out = [parts[0]]
    for p in parts[1:]:
        prev = out[-1]
        if (
            gap(prev, p) == 0
            and not prev.origin
            and not p.origin
            and not prev.hole
            and not p.hole
            and prev.chunks == 1
            and p.chunks == 1
            and prev.name == p.name
        ):
            prev.length += p.length
        else:
            out.append(p)
    parts = out
    gaps: list[tuple[int, int, int, int]] = []  # (cost, order, from, to)
    last = -1
    network = 0
    for i, p in enumerate(parts):
        if p.origin or p.hole:
            continue
        network += 1
        if last >= 0:
            gaps.append((gap(parts[last], p), len(gaps), last, i))
        last = i
    gaps.sort(key=lambda g: g[0])  # Go's sort.Slice is not stable; ties rarely matter
    to_merge = [False] * len(parts)
    remaining = network - target
    for cost, _, frm, to in gaps:
        if remaining < 0 and cost > AUTO_MERGE_PARTS_THRESHOLD:
            continue
        for k in range(frm + 1, to + 1):
            to_merge[k] = True
        remaining -= 1
    out = [parts[0]]
    for i in range(1, len(parts)):
        if not to_merge[i]:
            out.append(parts[i])
            continue
        prev = out[-1]
        # Go measures the gap between the original neighbours.
        g = gap(parts[i - 1], parts[i])
        prev.length = (prev.length + g + parts[i].length) & _U64
        prev.hole = False
        prev.origin = False
        prev.chunks += parts[i].chunks + (1 if g else 0)
    return out


@dataclass
class LayerEstimate:
    index: int
    digest: str
    size: int
    mode: str  # "reused", "partial", "full"
    reason: str | None = None
    missing_bytes: int = 0
    total_bytes: int = 0
    fetch_bytes: int = 0
    disk_bytes: int | None = 0
    files: int = 0
    files_found: int = 0
    chunks_found: int = 0
    zero_chunk_bytes: int = 0
    ranges: int = 0

    @property
    def skipped_percent(self) -> float | None:
        if self.mode != "partial" or not self.total_bytes:
            return None
        return round(100.0 * (self.total_bytes - self.missing_bytes) / self.total_bytes, 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "digest": self.digest,
            "size": self.size,
            "mode": self.mode,
            "reason": self.reason,
            "missing_bytes": self.missing_bytes,
            "total_bytes": self.total_bytes,
            "skipped_percent": self.skipped_percent,
            "fetch_bytes": self.fetch_bytes,
            "disk_bytes": self.disk_bytes,
            "files": self.files,
            "files_found": self.files_found,
            "chunks_found": self.chunks_found,
            "zero_chunk_bytes": self.zero_chunk_bytes,
            "ranges": self.ranges,
        }


def estimate_layer(
    layer: ChunkedLayer, cache: StoreCache, hard_links: bool, est: LayerEstimate, reflinks: bool = True
) -> None:
    """Fill `est` for a layer the consumer pulls partially.

    reflinks False: the store's filesystem cannot reflink, and current
    containers/storage (v1.65+) then skips chunk reuse altogether (it clones
    a source file before reading chunks from it).
    """
    merged = merge_toc_entries(layer.entries, layer.annotations.toc.offset)
    parts: list[_Part] = []
    disk = 0
    for m in merged:
        e = m.entry
        if e.type in ("dir", "symlink", "hardlink"):
            continue
        if e.type == TYPE_REG and e.size == 0:
            continue
        est.total_bytes += e.size
        if e.type != TYPE_REG:
            continue
        est.files += 1
        # A hard-link-deduplicating store links files it finds by fingerprint
        # and writes the rest (zero chunks as holes).
        linked = cache.has_file(e, True)
        if not linked:
            disk += e.size
        if cache.has_file(e, hard_links):
            est.files_found += 1
            continue
        est.missing_bytes += e.size
        remaining = e.size
        holes = 0
        for c in m.chunks:
            size = c.chunk_size if c.chunk_size > 0 else remaining
            remaining -= size
            p = _Part(c.offset, (c.end_offset - c.offset) & _U64, False, False, e.name)
            if c.chunk_type == "":
                if reflinks and cache.has_chunk(c.chunk_digest):
                    est.missing_bytes -= size
                    est.chunks_found += 1
                    p.origin = True
            elif c.chunk_type == CHUNK_TYPE_ZEROS:
                est.missing_bytes -= size
                est.zero_chunk_bytes += size
                holes += size
                p.hole = True
            parts.append(p)
        if not linked:
            disk -= holes
    requested = [p for p in merge_missing_chunks(parts, MAX_NUMBER_MISSING_CHUNKS) if not p.origin and not p.hole]
    est.ranges = len(requested)
    meta = layer.annotations.toc.length + (layer.annotations.tarsplit.length if layer.annotations.tarsplit else 0)
    est.fetch_bytes = meta + sum(p.length for p in requested)
    est.disk_bytes = disk


# ---------------------------------------------------------------- images


def select_image(src: ImageSource, plat: Platform) -> tuple[str, Manifest]:
    """The one image (manifest) a reference designates, choosing the platform in an index."""
    targets = src.targets()
    if len(targets) != 1:
        raise UsageError(f"{src.description}: holds {len(targets)} tagged images; name one with :TAG")
    _, desc = targets[0]

    def on_manifest(node: Node) -> tuple[str, Manifest]:
        assert isinstance(node.doc, Manifest)
        return node.label, node.doc

    def on_index(node: Node, descend: Callable[[Descriptor, str], tuple[str, Manifest]]) -> tuple[str, Manifest]:
        assert isinstance(node.doc, Index)
        child = pick_instance(node.doc.manifests, plat)
        if child is None:
            have = ", ".join(str(m.platform) for m in node.doc.manifests if m.platform) or "none"
            raise UsageError(f"{node.label}: no image for {plat} (has: {have}); use --platform")
        return descend(child, f"{src.description} [{child.platform}]" if child.platform else node.label)

    return walk(src, desc, src.description, on_manifest, on_index)


def _load(src: ImageSource, desc: Descriptor, name: str) -> ChunkedLayer:
    layer = load_layer(layer_access(src, desc, name), dict(desc.annotations))
    layer.close()  # the estimate needs the TOC; the tar-split was only checked against it
    return layer


@dataclass
class Estimate:
    new: str
    old: list[str]
    hard_links: bool
    reflinks: bool = True
    layers: list[LayerEstimate] = field(default_factory=list)
    old_layers: int = 0
    old_chunked_layers: int = 0

    def total(self) -> dict[str, Any]:
        partial = [x for x in self.layers if x.mode == "partial"]
        missing = sum(x.missing_bytes for x in partial)
        total = sum(x.total_bytes for x in partial)
        fetch = sum(x.fetch_bytes for x in self.layers)
        blob = sum(x.size for x in self.layers)
        return {
            "missing_bytes": missing,
            "total_bytes": total,
            "skipped_percent": round(100.0 * (total - missing) / total, 2) if total else None,
            "fetch_bytes": fetch,
            "blob_bytes": blob,
            "fetch_percent_of_blobs": round(100.0 * fetch / blob, 2) if blob else None,
            "disk_bytes": sum(x.disk_bytes or 0 for x in self.layers),
            "layers": len(self.layers),
            "reused_layers": sum(1 for x in self.layers if x.mode == "reused"),
            "partial_layers": len(partial),
            "full_layers": sum(1 for x in self.layers if x.mode == "full"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "new": self.new,
            "old": self.old,
            "hard_links": self.hard_links,
            "reflinks": self.reflinks,
            "old_layers": self.old_layers,
            "old_chunked_layers": self.old_chunked_layers,
            "layers": [x.to_json() for x in self.layers],
            "total": self.total(),
        }


def estimate_sources(
    olds: list[ImageSource],
    new: ImageSource,
    hard_links: bool = False,
    platform: str | None = None,
    reflinks: bool = True,
) -> Estimate:
    plat = parse_platform(platform)
    cache = StoreCache()
    res = Estimate(new.description, [o.description for o in olds], hard_links, reflinks)
    loaded: set[str] = set()
    for src in olds:
        label, m = select_image(src, plat)
        for i, desc in enumerate(m.layers):
            res.old_layers += 1
            cache.blob_digests.add(desc.digest)
            if not is_chunked(desc.annotations) or desc.digest in loaded:
                continue
            try:
                layer = _load(src, desc, layer_name(label, i, len(m.layers), desc))
            except BadInputError:
                continue  # pulled whole: leaves no TOC for the cache
            res.old_chunked_layers += 1
            cache.add_layer(layer.entries)
            cache.toc_digests.add(layer.toc_digest)
            loaded.add(desc.digest)
    label, m = select_image(new, plat)
    for i, desc in enumerate(m.layers):
        est = LayerEstimate(i, desc.digest, desc.size, "full")
        res.layers.append(est)
        toc_digest = desc.annotations.get(MANIFEST_CHECKSUM_KEY)
        if desc.digest in cache.blob_digests or (toc_digest and toc_digest in cache.toc_digests):
            est.mode = "reused"
            est.reason = "already in the store"
            est.disk_bytes = 0
            continue
        cache.blob_digests.add(desc.digest)
        if not is_chunked(desc.annotations):
            est.reason = "not zstd:chunked"
            est.fetch_bytes = desc.size
            est.disk_bytes = None
            continue
        try:
            layer = _load(new, desc, layer_name(label, i, len(m.layers), desc))
        except BadInputError as e:
            est.reason = f"the consumer would refuse its metadata: {e}"
            est.fetch_bytes = desc.size
            est.disk_bytes = None
            continue
        est.mode = "partial"
        estimate_layer(layer, cache, hard_links, est, reflinks)
        # Committed before the next layer is pulled: its files are in the store now.
        cache.add_layer(layer.entries)
        cache.toc_digests.add(layer.toc_digest)
    return res


def _skipped(percent: float | None) -> str:
    return "nothing to fetch" if percent is None else f"{percent}% skipped"


def format_estimate(res: Estimate) -> str:
    lines = [
        f"{res.new} for a client with {', '.join(res.old)} "
        f"({'hard-link dedup' if res.hard_links else 'copies'}, chunk reuse {'on' if res.reflinks else 'off (no reflinks)'}):"
    ]
    for x in res.layers:
        head = f"  layer {x.index + 1}/{len(res.layers)} {short(x.digest)}"
        if x.mode == "reused":
            lines.append(f"{head}: already present, nothing to fetch")
        elif x.mode == "full":
            lines.append(f"{head}: full download of {human(x.size)} ({x.reason})")
        else:
            lines.append(
                f"{head}: missing {x.missing_bytes} bytes out of {x.total_bytes} ({_skipped(x.skipped_percent)}), "
                f"fetch {human(x.fetch_bytes)} of {human(x.size)} in {x.ranges} ranges, disk +{human(x.disk_bytes)}"
            )
    t = res.total()
    lines.append(
        f"total: missing {t['missing_bytes']} bytes out of {t['total_bytes']} ({_skipped(t['skipped_percent'])}); "
        f"fetch {human(t['fetch_bytes'])} of {human(t['blob_bytes'])} compressed; disk +{human(t['disk_bytes'])}"
    )
    return printable_lines(lines)
