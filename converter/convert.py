"""Image -> image: every layer to zstd:chunked, manifests to OCI.

Walks what the source reference designates (every tag when none is given,
every platform of an index), converts each distinct input layer once with the
layer writer, keeps config blobs byte for byte (the DiffIDs do not change),
and writes OCI manifests and indexes to the sink children first, tags last.

It only knows the ImageSource/ImageSink interfaces, not where images live,
and only the writer's result, not the layer format.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Callable, cast

import zstandard
from isal import isal_zlib

from converter.cache import ENCODER_ANNOTATION
from converter.chunked.format import CHUNKED_ANNOTATIONS, LEGACY_PREFIX, is_chunked
from converter.chunked.writer import DEFAULT_LEVEL, convert_layer, encoder_identity
from converter.errors import BadInputError, UsageError, ZconvError
from converter.image.model import (
    DOCKER_CONFIG,
    FOREIGN_LAYER_TYPES,
    INDEX_TYPES,
    INDEX_ZSTD_ANNOTATION,
    LAYER_TYPES,
    MANIFEST_TYPES,
    MAX_CONFIG_SIZE,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    ImageSink,
    ImageSource,
    Index,
    Manifest,
    VerifyingReader,
    descriptor_for,
    parse_config,
    short,
)
from converter.imageread import DOCKER_REFERENCE_TYPE, Node, config_diff_ids, config_platform, layer_name, walk
from converter.progress import Progress

# What the decoders (gzip, zstd, tar) raise on a corrupt or truncated layer: bad input, exit 2.
# BadGzipFile is an OSError, so it must be caught before OSError (local trouble, exit 1).
_DECODER_ERRORS: tuple[type[Exception], ...] = (
    EOFError,
    zlib.error,
    isal_zlib.error,
    zstandard.ZstdError,
    gzip.BadGzipFile,
    tarfile.TarError,
    ValueError,
)  # type: ignore[assignment]  # isal's stubs declare its error class as an Exception instance

# With ConvertOptions.record_source, every manifest and index we write names the
# digest of the source manifest or index it was converted from, so `zconv sync`
# can tell with one manifest GET that a destination is already up to date.
SOURCE_DIGEST_ANNOTATION = "io.github.zconv.source.digest"


@dataclass(frozen=True)
class ConvertOptions:
    level: int | None = None
    threads: int = 0
    strict: bool = False
    force: bool = False  # re-encode layers that are already zstd:chunked
    dual: bool = False  # index with the original and the zstd:chunked instances
    record_source: bool = False  # SOURCE_DIGEST_ANNOTATION on written manifests and indexes
    # OS/ARCH[/VARIANT]: of a multi-platform source convert only that instance and
    # write it as a plain manifest (skopeo's --multi-arch system with --override-*);
    # None: every instance, the index kept (--all).
    platform: str | None = None
    cache: bool = True  # frame cache and layer memo (converter/cache)
    cache_dir: str | None = None  # None: $ZCONV_CACHE_DIR, $XDG_CACHE_HOME/zconv or ~/.cache/zconv
    cache_max_size: int | None = None
    reuse_from: tuple[str, ...] = ()  # earlier zstd:chunked images whose frames may be reused


@dataclass
class LayerReport:
    image: str
    index: int
    old_digest: str
    old_size: int
    old_media_type: str
    new_digest: str
    new_size: int
    new_media_type: str
    diff_id: str | None
    chunked: bool
    reason: str | None
    seconds: float
    # "converted", "kept" (already zstd:chunked), "reused" (same input converted before), "foreign",
    # "present" / "mounted" (converted by an earlier run and already at / mounted into the destination)
    action: str

    @classmethod
    def of(
        cls,
        old: Descriptor,
        new: Descriptor,
        name: str,
        index: int,
        diff_id: str | None,
        chunked: bool,
        reason: str | None,
        started: float,
        action: str,
    ) -> LayerReport:
        """The report of layer `old` (`index` of image `name`) written as `new`, timed from `started`."""
        return cls(
            name,
            index,
            old.digest,
            old.size,
            old.media_type,
            new.digest,
            new.size,
            new.media_type,
            diff_id,
            chunked,
            reason,
            time.monotonic() - started,
            action,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.image,
            "layer": self.index,
            "old_digest": self.old_digest,
            "old_size": self.old_size,
            "old_media_type": self.old_media_type,
            "new_digest": self.new_digest,
            "new_size": self.new_size,
            "new_media_type": self.new_media_type,
            "diff_id": self.diff_id,
            "chunked": self.chunked,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "action": self.action,
        }


@dataclass
class ImageReport:
    tag: str | None
    source_digest: str
    digest: str
    media_type: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "source_digest": self.source_digest,
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
        }


@dataclass
class ConvertReport:
    images: list[ImageReport] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)
    range_check: dict[str, Any] | None = None  # registries only
    frames: dict[str, Any] | None = None  # chunks and bytes from the cache, from --reuse-from, compressed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "images": [i.to_json() for i in self.images],
            "layers": [r.to_json() for r in self.layers],
        }
        if self.range_check is not None:
            out["range_check"] = self.range_check
        if self.frames is not None:
            out["frames"] = self.frames
        return out


# A converted manifest or index, and for a manifest its config bytes (the --dual index needs its platform).
_Converted = tuple[Descriptor, "bytes | None"]


def _where(desc: Descriptor, label: str) -> str:
    """How conversion errors name a manifest or index document."""
    kind = "index" if desc.media_type in INDEX_TYPES else "manifest"
    return f"{label} {kind} {short(desc.digest)}"


class _CountingReader:
    """Passes reads through and tells the progress display how far the layer is."""

    def __init__(self, inner: VerifyingReader, progress: Progress) -> None:
        self.inner = inner
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self._progress.advance(len(data))
        return data

    def readinto(self, b: Any) -> int:
        n = self.inner.readinto(b)
        self._progress.advance(n or 0)
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        # The converter closes the inner reader itself, after checking that
        # the whole blob was read and matched its digest.
        pass

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *a: Any) -> None:
        self.close()


class Converter:
    def __init__(
        self,
        src: ImageSource,
        dst: ImageSink,
        options: ConvertOptions,
        progress: Progress | None = None,
        frames: Any = None,
        memo: Any = None,
    ) -> None:
        self.src = src
        self.frames = frames  # converter.cache.sources.FrameSources (the writer's FrameStore) or None
        self.memo = memo  # converter.cache.memo.LayerMemo or None
        self.dst = dst
        self.opts = options
        self.progress = progress or Progress(enabled=False)
        self.report = ConvertReport()
        self._layers: dict[str, tuple[Descriptor, LayerReport]] = {}  # input digest -> output
        self._manifests: dict[str, Descriptor] = {}  # input manifest digest -> output manifest
        self._copied: set[str] = set()

    # ------------------------------------------------------------------ top level

    def run(self) -> ConvertReport:
        targets = self.src.targets()
        if self.dst.reference_tag is not None and len(targets) > 1:
            tags = ", ".join(t or "(untagged)" for t, _ in targets)
            raise UsageError(
                f"{self.src.description} holds {len(targets)} images ({tags}); "
                f"the destination {self.dst.description} names one tag: name a tag in the source too, or none in the destination"
            )
        results: list[tuple[str | None, Descriptor]] = []
        for tag, desc in targets:
            label = (
                f"{self.src.description}"
                if tag is None or tag == self.src.reference_tag
                else f"{self.src.description} (tag {tag})"
            )
            new = self._convert_top(desc, label)
            out_tag = self.dst.reference_tag if self.dst.reference_tag is not None else tag
            if out_tag is not None and out_tag.startswith("@"):
                out_tag = None  # a by-digest source has no tag to carry over
            results.append((out_tag, new))
            self.report.images.append(ImageReport(out_tag, desc.digest, new.digest, new.media_type, new.size))
        for out_tag, new in results:
            self.dst.tag(out_tag, new)
        self.dst.commit()
        self._check_ranges()
        return self.report

    def _check_ranges(self) -> None:
        """On registries: partial pulls need HTTP Range answers; warn clearly when they are wrong."""
        layer = next((r for r in self.report.layers if r.chunked), None)
        if layer is None:
            return
        check = self.dst.check_range_requests(Descriptor(media_type="", digest=layer.new_digest, size=layer.new_size))
        if check is not None:
            self.report.range_check = {"ok": check.ok, "message": check.message}
            if not check.ok:
                self.progress.warning(check.message)

    def _choose_instance(self, desc: Descriptor, label: str) -> tuple[Descriptor, str]:
        """The instance of an index for opts.platform, ranked as containers/image's chooseInstance."""
        from converter.imageread import choose_instance

        return choose_instance(self.src, desc, label, self.opts.platform or "")

    def _convert_top(self, desc: Descriptor, label: str) -> Descriptor:
        if desc.media_type in INDEX_TYPES and self.opts.platform:
            desc, label = self._choose_instance(desc, label)
        if desc.media_type not in INDEX_TYPES and desc.media_type not in MANIFEST_TYPES:
            raise BadInputError(f"{label}: unknown media type {desc.media_type!r} for the top-level manifest")
        new, config = walk(self.src, desc, label, self._convert_manifest, self._convert_index, where=_where)
        if config is None or not self.opts.dual or new.digest == desc.digest:
            return replace(new, annotations={}, platform=None) if config is not None else new
        # One image, both encodings: wrap them in an index as podman's add_compression does.
        self._copy_tree(desc, label)
        plat = config_platform(config)
        orig = Descriptor(desc.media_type, desc.digest, desc.size, platform=plat)
        zstd = Descriptor(
            new.media_type, new.digest, new.size, annotations={INDEX_ZSTD_ANNOTATION: "true"}, platform=plat
        )
        return self._put_index(Index(OCI_INDEX, (orig, zstd), self._source_annotation({}, desc)))

    def _source_annotation(self, annotations: Any, source: Descriptor) -> Any:
        if not self.opts.record_source:
            return annotations
        return {**annotations, SOURCE_DIGEST_ANNOTATION: source.digest}

    # ------------------------------------------------------------------ indexes

    def _put_index(self, index: Index) -> Descriptor:
        data = index.to_bytes()
        d = descriptor_for(OCI_INDEX, data)
        self.dst.put_manifest(d, data)
        return d

    def _convert_index(self, node: Node, descend: Callable[[Descriptor, str], _Converted]) -> _Converted:
        desc, label, index = node.desc, node.label, node.doc
        assert isinstance(index, Index)
        if desc.media_type in MANIFEST_TYPES:
            raise BadInputError(f"{_where(desc, label)}: descriptor says manifest but the document is an index")
        originals: list[Descriptor] = []
        converted: list[Descriptor] = []
        for i, child in enumerate(index.manifests):
            plat = f" {child.platform}" if child.platform else ""
            child_label = f"{label}{plat} (manifest {i + 1}/{len(index.manifests)})"
            if DOCKER_REFERENCE_TYPE in child.annotations:
                # Attestations point at image manifests by digest: keep them as they are.
                self._copy_tree(child, child_label, node.depth + 1)
                converted.append(child)
                continue
            if child.media_type not in INDEX_TYPES and child.media_type not in MANIFEST_TYPES:
                raise BadInputError(
                    f"{child_label}: unknown media type {child.media_type!r} in index {short(desc.digest)}"
                )
            new, _ = descend(child, child_label)
            if self.opts.dual and new.digest != child.digest:
                self._copy_tree(child, child_label, node.depth + 1)
                originals.append(child)
            entry = Descriptor(
                new.media_type,
                new.digest,
                new.size,
                annotations={**child.annotations, INDEX_ZSTD_ANNOTATION: "true"},
                platform=child.platform,
                artifact_type=child.artifact_type,
            )
            converted.append(entry)
        new_index = Index(
            OCI_INDEX,
            tuple(originals + converted),
            self._source_annotation(index.annotations, desc),
            index.subject,
            index.artifact_type,
        )
        return self._put_index(new_index), None

    # ------------------------------------------------------------------ manifests

    def _convert_manifest(self, node: Node) -> _Converted:
        desc, label, manifest = node.desc, node.label, node.doc
        assert isinstance(manifest, Manifest)
        where = _where(desc, label)
        if desc.media_type in INDEX_TYPES:
            raise BadInputError(f"{where}: descriptor says index but the document is a manifest")
        config_data = self.src.read_blob(manifest.config, MAX_CONFIG_SIZE)
        # An image config that is not JSON is an error, not something to pass on.
        parse_config(config_data, manifest.config.media_type, f"{where} config {short(manifest.config.digest)}")
        if desc.digest in self._manifests:
            return self._manifests[desc.digest], config_data
        diff_ids = config_diff_ids(config_data)
        if diff_ids is not None and len(diff_ids) != len(manifest.layers):
            raise BadInputError(f"{where}: {len(manifest.layers)} layers but the config lists {len(diff_ids)} diff_ids")
        new_layers = []
        for i, layer in enumerate(manifest.layers):
            name = layer_name(label, i, len(manifest.layers), layer)
            new_layers.append(self._convert_layer(layer, name, i, diff_ids[i] if diff_ids else None))
        config_mt = OCI_CONFIG if manifest.config.media_type == DOCKER_CONFIG else manifest.config.media_type
        config = replace(manifest.config, media_type=config_mt)
        if not self.dst.has_blob(config):
            self.dst.put_blob_bytes(config, config_data)
        new_manifest = Manifest(
            OCI_MANIFEST,
            config,
            tuple(new_layers),
            self._source_annotation(manifest.annotations, desc),
            manifest.subject,
            manifest.artifact_type,
        )
        data = new_manifest.to_bytes()
        new = descriptor_for(OCI_MANIFEST, data)
        self.dst.put_manifest(new, data)
        self._manifests[desc.digest] = new
        return new, config_data

    # ------------------------------------------------------------------ layers

    def _open_named(self, desc: Descriptor, name: str) -> VerifyingReader:
        """open_blob, with errors naming the image and layer rather than just the blob."""
        try:
            r = self.src.open_blob(desc)
        except BadInputError as e:
            msg = e.message
            prefix = f"{self.src.description}: "
            raise BadInputError(f"{name}: {msg[len(prefix) :] if msg.startswith(prefix) else msg}") from None
        r.what = name
        return r

    def _copy_blob(self, desc: Descriptor, what: str) -> None:
        if desc.digest in self._copied or self.dst.has_blob(desc):
            return
        with self._open_named(desc, what) as r:
            self.dst.put_blob(desc, cast(BinaryIO, r))  # a RawIOBase, which typeshed does not call BinaryIO
            r.finish()
        self._copied.add(desc.digest)

    def _copy_tree(self, desc: Descriptor, label: str, depth: int = 0) -> None:
        """Copy a manifest or index and everything under it unchanged, children first."""

        def put(node: Node) -> None:
            self.dst.put_manifest(node.desc, node.data)
            self._copied.add(node.desc.digest)

        def on_manifest(node: Node) -> None:
            doc = node.doc
            assert isinstance(doc, Manifest)
            self._copy_blob(doc.config, f"{label} config {short(doc.config.digest)}")
            for i, layer in enumerate(doc.layers):
                if layer.media_type in FOREIGN_LAYER_TYPES and layer.urls:
                    continue
                self._copy_blob(layer, layer_name(label, i, len(doc.layers), layer))
            put(node)

        def on_index(node: Node, descend: Callable[[Descriptor, str], None]) -> None:
            assert isinstance(node.doc, Index)
            for child in node.doc.manifests:
                if child.digest not in self._copied:
                    descend(child, label)
            put(node)

        if desc.digest not in self._copied:
            walk(
                self.src,
                desc,
                label,
                on_manifest,
                on_index,
                where=lambda d, _: f"{label} {short(d.digest)}",
                depth=depth,
            )

    def _convert_layer(self, layer: Descriptor, name: str, index: int, diff_id: str | None) -> Descriptor:
        if layer.digest in self._layers:
            new, first = self._layers[layer.digest]
            self.report.layers.append(replace(first, image=name, index=index, seconds=0.0, action="reused"))
            return new
        mt = layer.media_type
        if mt not in LAYER_TYPES:
            raise BadInputError(f"{name}: unknown layer media type {mt!r}")
        started = time.monotonic()
        if mt in FOREIGN_LAYER_TYPES:
            # Non-distributable layers are fetched by clients from their URLs; leave them alone.
            if not layer.urls:
                self._copy_blob(layer, name)
            rep = LayerReport.of(
                layer, layer, name, index, diff_id, False, "non-distributable layer kept as is", started, "foreign"
            )
            self._layers[layer.digest] = (layer, rep)
            self.report.layers.append(rep)
            return layer
        if is_chunked(layer) and not self.opts.force:
            self._copy_blob(layer, name)
            new = replace(layer, media_type=OCI_LAYER_ZSTD)
            rep = LayerReport.of(layer, new, name, index, diff_id, True, None, started, "kept")
            self._layers[layer.digest] = (new, rep)
            self.report.layers.append(rep)
            self.progress.note(f"{name}: already zstd:chunked, copied")
            return new

        level = DEFAULT_LEVEL if self.opts.level is None else self.opts.level
        encoder = encoder_identity(level)
        memo_key = None
        if self.memo is not None:
            from converter.cache.memo import LayerMemo

            memo_key = LayerMemo.key(layer.digest, encoder, {"level": level})
            known = self._from_memo(layer, name, index, diff_id, memo_key, started)
            if known is not None:
                return known
        readers: list[VerifyingReader] = []
        self.progress.layer_start(name, layer.size)

        def open_src() -> BinaryIO:
            self.progress.restart()
            r = self._open_named(layer, name)
            r.what = name
            readers.append(r)
            return _CountingReader(r, self.progress)  # type: ignore[return-value]

        fd, tmp = tempfile.mkstemp(dir=self.dst.temp_dir(), prefix=".layer-")
        try:
            with os.fdopen(fd, "w+b") as out:
                try:
                    result = convert_layer(
                        open_src,
                        out,
                        level=self.opts.level,
                        threads=self.opts.threads,
                        strict=self.opts.strict,
                        name=name,
                        frames=self.frames,
                    )
                    if readers:
                        readers[-1].finish()  # checks size and digest even if the writer stopped early
                except ZconvError:
                    raise
                except _DECODER_ERRORS as e:
                    raise BadInputError(f"{name}: {type(e).__name__}: {e}") from None
                except OSError as e:  # disk full, permissions: not the input's fault
                    raise ZconvError(f"{name}: {e}") from None
                finally:
                    for r in readers:
                        r.close()
            if diff_id is not None and result.diff_id != diff_id:
                raise BadInputError(
                    f"{name}: uncompressed content {result.diff_id} does not match the config's diff_id {diff_id}"
                )
            ann = {
                k: v
                for k, v in layer.annotations.items()
                if k not in CHUNKED_ANNOTATIONS and not k.startswith(LEGACY_PREFIX)
            }
            ann.update(result.annotations)
            if result.chunked:
                ann[ENCODER_ANNOTATION] = encoder
            new = Descriptor(
                result.media_type or OCI_LAYER_ZSTD, result.digest, result.size, annotations=ann, urls=layer.urls
            )
            self.dst.put_blob_file(new, tmp)
            if self.memo is not None and memo_key is not None:
                from converter.cache.memo import MemoLayer

                self.memo.put(
                    memo_key,
                    MemoLayer(
                        new.digest,
                        new.size,
                        result.diff_id,
                        new.media_type,
                        {**result.annotations, **({ENCODER_ANNOTATION: encoder} if result.chunked else {})},
                        result.chunked,
                        result.reason,
                        result.tar_size,
                    ),
                )
                self._remember(new)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        rep = LayerReport.of(
            layer, new, name, index, result.diff_id, result.chunked, result.reason, started, "converted"
        )
        self._layers[layer.digest] = (new, rep)
        self.report.layers.append(rep)
        self.progress.layer_done(rep.old_size, rep.new_size, rep.chunked, rep.reason, rep.seconds)
        return new

    # ------------------------------------------------------------------ memo

    def _remember(self, desc: Descriptor) -> None:
        loc = self.dst.blob_location()
        if loc is not None and self.memo is not None:
            self.memo.remember_blob(loc[0], loc[1], desc.digest)

    def _from_memo(
        self, layer: Descriptor, name: str, index: int, diff_id: str | None, key: str, started: float
    ) -> Descriptor | None:
        """An earlier run converted this layer: if the destination holds (or can mount) the result, use it unread."""
        hit = self.memo.get(key)
        if hit is None or (self.opts.strict and not hit.chunked):
            return None
        if diff_id is not None and hit.diff_id != diff_id:
            return None
        ann = {
            k: v
            for k, v in layer.annotations.items()
            if k not in CHUNKED_ANNOTATIONS and not k.startswith(LEGACY_PREFIX)
        }
        ann.update(hit.annotations)
        new = Descriptor(hit.media_type, hit.digest, hit.size, annotations=ann, urls=layer.urls)
        if self.dst.has_blob(new):
            action = "present"
        else:
            loc = self.dst.blob_location()
            repos = self.memo.repositories(loc[0], new.digest) if loc is not None else []
            if not repos or not self.dst.mount_from(new, repos):
                return None
            action = "mounted"
        self._remember(new)
        rep = LayerReport.of(layer, new, name, index, hit.diff_id, hit.chunked, hit.reason, started, action)
        self._layers[layer.digest] = (new, rep)
        self.report.layers.append(rep)
        self.progress.note(
            f"{name}: converted before, {'already at the destination' if action == 'present' else 'mounted'}"
        )
        return new


def open_frame_sources(options: ConvertOptions, reuse_options: Any = None) -> tuple[Any, Any]:
    """(FrameSources or None, LayerMemo or None) for a run with `options`."""
    from converter.cache.frames import DEFAULT_MAX_SIZE, FrameCache, default_cache_dir
    from converter.cache.memo import LayerMemo
    from converter.cache.sources import FrameSources

    cache: Any = None
    memo: Any = None
    if options.cache:
        root = options.cache_dir or default_cache_dir()
        try:
            cache = FrameCache(root, options.cache_max_size or DEFAULT_MAX_SIZE)
            memo = LayerMemo(root)
        except (OSError, sqlite3.Error) as e:
            import logging

            logging.getLogger("zconv").warning("cache %s not usable (%s); converting without it", root, e)
            cache = memo = None
    remotes: list[Any] = []
    if options.reuse_from:
        from converter.cache.reuse import ReuseFrames

        remotes.append(ReuseFrames(list(options.reuse_from), reuse_options))
    frames = FrameSources(cache, remotes) if (cache is not None or remotes) else None
    return frames, memo


def convert_image(
    src: ImageSource,
    dst: ImageSink,
    options: ConvertOptions = ConvertOptions(),
    progress: Progress | None = None,
    reuse_options: Any = None,
) -> ConvertReport:
    """Convert what `src` designates into `dst`; on any error `dst` is left as it was."""
    frames, memo = open_frame_sources(options, reuse_options)
    try:
        with dst:
            conv = Converter(src, dst, options, progress, frames=frames, memo=memo)
            report = conv.run()
    finally:
        if frames is not None:
            frames.close()
        if memo is not None:
            memo.close()
    if frames is not None:
        report.frames = frames.stats()
    return report


def convert_refs(
    src_ref: str,
    dst_ref: str,
    options: ConvertOptions = ConvertOptions(),
    progress: Progress | None = None,
    src_options: Any = None,
    dst_options: Any = None,
    on_sink: Callable[[ImageSink], None] | None = None,
) -> ConvertReport:
    from converter.image.refs import open_sink, open_source, parse_ref

    s, d = parse_ref(src_ref), parse_ref(dst_ref)
    with open_source(s, src_options) as src:
        sink = open_sink(d, dst_options)
        if on_sink is not None:
            on_sink(sink)
        return convert_image(src, sink, options, progress, reuse_options=src_options)
