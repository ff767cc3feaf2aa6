"""Image -> registry, blobs untouched: the library half of `zconv push`.

Every blob keeps its bytes and digest; what the registry already has is
skipped (HEAD), what another repository of the same registry holds is
mounted, the rest is uploaded (in resumable chunks when large). Manifests go
up by digest, children first; the tag is PUT last, so no reader ever sees the
tag pointing at something incomplete, and a failed push leaves it where it was.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, cast

from converter.chunked.format import is_chunked
from converter.errors import BadInputError, UsageError
from converter.image.model import (
    FOREIGN_LAYER_TYPES,
    INDEX_TYPES,
    Descriptor,
    ImageSource,
    Index,
    Manifest,
    TransportOptions,
    short,
)
from converter.image.registry import (
    DEFAULT_CHUNK_SIZE,
    DockerSink,
    DockerSource,
    RegistryClient,
    RetryPolicy,
    parse_reference,
)
from converter.imageread import Node, choose_instance, layer_name, walk


@dataclass
class PushReport:
    source: str
    destination: str
    digest: str = ""
    media_type: str = ""
    manifests: int = 0
    blobs: dict[str, int] = field(default_factory=lambda: {"uploaded": 0, "mounted": 0, "skipped": 0})
    bytes_uploaded: int = 0
    retries: int = 0
    resumed_uploads: int = 0
    seconds: float = 0.0
    range_check: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "digest": self.digest,
            "mediaType": self.media_type,
            "manifests": self.manifests,
            "blobs": dict(self.blobs),
            "bytesUploaded": self.bytes_uploaded,
            "retries": self.retries,
            "resumedUploads": self.resumed_uploads,
            "seconds": round(self.seconds, 3),
            "rangeCheck": self.range_check,
        }


def _local_blob_path(src: ImageSource, digest: str) -> str | None:
    """A file holding the blob when the source is a layout directory (so uploads can seek and resume)."""
    from converter.image.layout import LayoutSource, blob_relpath

    if isinstance(src, LayoutSource):
        p = os.path.join(src.path, blob_relpath(digest))
        if os.path.isfile(p):
            return p
    return None


class _Pusher:
    def __init__(self, src: ImageSource, sink: DockerSink, log: Callable[[str], None], jobs: int = 1) -> None:
        self.src = src
        self.sink = sink
        self.log = log
        self.jobs = jobs
        self.done: set[str] = set()
        self.manifests = 0
        self.chunked_layers: list[Descriptor] = []
        self.memo: Any = None  # converter.cache.memo.LayerMemo: where blobs were pushed before

    def blob(self, desc: Descriptor, what: str) -> None:
        if desc.digest in self.done:
            return
        self._blob(desc, what)
        if self.memo is not None:
            self.memo.remember_blob(self.sink.host, self.sink.repository, desc.digest)

    def _blob(self, desc: Descriptor, what: str) -> None:
        repos = (
            []
            if self.memo is None
            else [r for r in self.memo.repositories(self.sink.host, desc.digest) if r != self.sink.repository]
        )
        if repos:
            # Pushed to another repository of this registry before: mount it unless it is already here.
            if self.sink.has_blob(desc):
                self.sink.results[desc.digest] = "skipped"
                self.sink.client.count("skipped")
                return
            if self.sink.mount_from(desc, repos):
                return
        path = _local_blob_path(self.src, desc.digest)
        if path is not None:
            size = os.path.getsize(path)
            if size != desc.size:
                raise BadInputError(f"{self.src.description}: {what} is {size} bytes, its descriptor says {desc.size}")
            self.sink.put_blob_file(desc, path)  # the registry checks the digest on upload
        elif self.sink.has_blob(desc):
            self.sink.results[desc.digest] = "skipped"
            self.sink.client.count("skipped")
        elif self.sink.try_mount(desc):
            pass
        else:
            with self.src.open_blob(desc) as r:
                self.sink.put_blob(desc, cast(BinaryIO, r))  # a RawIOBase, which typeshed does not call BinaryIO
                r.finish()
        self.done.add(desc.digest)

    def _where(self, desc: Descriptor, label: str) -> str:
        return f"{self.src.description} {short(desc.digest)}"

    def preflight(self, desc: Descriptor) -> None:
        """For layout directories: every blob must be there before anything is uploaded."""
        from converter.image.layout import LayoutSource

        if not isinstance(self.src, LayoutSource):
            return  # other sources are checked as they are read

        def on_manifest(node: Node) -> None:
            assert isinstance(node.doc, Manifest)
            for i, b in enumerate((node.doc.config, *node.doc.layers)):
                if i and b.media_type in FOREIGN_LAYER_TYPES and b.urls:
                    continue
                if _local_blob_path(self.src, b.digest) is None:
                    what = "config" if i == 0 else f"layer {i}"
                    raise BadInputError(
                        f"{self.src.description}: blob {b.digest} ({what} of manifest {short(node.desc.digest)}) "
                        "is missing from the layout"
                    )

        def on_index(node: Node, descend: Callable[[Descriptor, str], None]) -> None:
            assert isinstance(node.doc, Index)
            for child in node.doc.manifests:
                descend(child, node.label)

        walk(self.src, desc, self.src.description, on_manifest, on_index, where=self._where)

    def blobs(self, items: list[tuple[Descriptor, str]]) -> None:
        """The blobs of one manifest, `jobs` at a time (largest first); the first error stops the rest."""
        todo: dict[str, tuple[Descriptor, str]] = {}
        for d, what in items:
            if d.digest not in self.done:
                todo.setdefault(d.digest, (d, what))
        work = sorted(todo.values(), key=lambda t: -t[0].size)
        if self.jobs <= 1 or len(work) <= 1:
            for d, what in work:
                self.blob(d, what)
            return
        self.sink.client.ping()  # once, before the threads
        with ThreadPoolExecutor(max_workers=min(self.jobs, len(work)), thread_name_prefix="zconv-push") as ex:
            futures = [ex.submit(self.blob, d, what) for d, what in work]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            for f in futures:
                f.result()

    def tree(self, desc: Descriptor, label: str) -> None:
        """Push a manifest tree children first; each manifest goes up after everything it names."""

        def put(node: Node) -> None:
            self.sink.put_manifest(node.desc, node.data)
            self.manifests += 1
            self.done.add(node.desc.digest)

        def on_manifest(node: Node) -> None:
            doc = node.doc
            assert isinstance(doc, Manifest)
            items = [(doc.config, f"{node.label} config {short(doc.config.digest)}")]
            for i, layer in enumerate(doc.layers):
                if layer.media_type in FOREIGN_LAYER_TYPES and layer.urls:
                    continue  # non-distributable: clients fetch it from its URLs
                items.append((layer, layer_name(node.label, i, len(doc.layers), layer)))
                if is_chunked(layer.annotations):
                    self.chunked_layers.append(layer)
            self.blobs(items)
            put(node)

        def on_index(node: Node, descend: Callable[[Descriptor, str], None]) -> None:
            assert isinstance(node.doc, Index)
            for child in node.doc.manifests:
                if child.digest not in self.done:
                    descend(child, f"{node.label} {child.platform or short(child.digest)}")
            put(node)

        if desc.digest not in self.done:
            walk(self.src, desc, label, on_manifest, on_index, where=self._where)


def push_image(
    src_ref: str,
    dst_ref: str,
    *,
    options: TransportOptions = TransportOptions(),
    src_options: TransportOptions | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    check_ranges: bool = True,
    jobs: int = 3,
    log: Callable[[str], None] = lambda m: None,
    warn: Callable[[str], None] = logging.getLogger("zconv").warning,
    platform: str | None = None,
) -> PushReport:
    """Copy what `src_ref` names to the registry reference `dst_ref`, blobs byte for byte.

    Retries and the request timeout come from `options` (and `src_options` for
    a source on another registry), as for every other command; `retry` and
    `timeout`, when given, override both. With `platform` (OS/ARCH[/VARIANT])
    only that instance of a multi-platform source is pushed, as a plain
    manifest under the tag (convert --platform's semantics); its manifest bytes
    are kept, so the digest is the instance's digest in the source index.
    """
    from converter.image.refs import is_valid_tag, open_source, parse_ref

    started = time.monotonic()
    if not dst_ref.startswith("docker://"):
        raise UsageError(f"push destination {dst_ref!r} must be a registry reference docker://HOST/REPO[:TAG]")
    dest = parse_reference(dst_ref)
    if dest.tag and dest.digest:
        raise UsageError(f"{dst_ref}: a destination takes a tag or a digest, not both")
    s = parse_ref(src_ref)

    def client_args(o: TransportOptions) -> dict[str, Any]:
        return {"retry": retry or o.retry or RetryPolicy(), "timeout": timeout or o.timeout or 60.0}

    client = RegistryClient(
        dest.host,
        creds=options.creds,
        tls_verify=options.tls_verify,
        cert_dir=options.cert_dir,
        plain_http=options.plain_http,
        chunk_size=chunk_size,
        log=log,
        auth_file=options.auth_file,
        **client_args(options),
    )
    sink = DockerSink(dest, client=client, log=log)
    report = PushReport(source=src_ref, destination=dst_ref)
    memo = _open_memo()
    try:
        if s.transport == "docker":
            sref = parse_reference(s.raw)
            if sref.host == dest.host:
                # same registry: share the connection and credentials, and mount instead of uploading
                src: ImageSource = DockerSource(sref, client=client)
                sink.mount_sources.append(sref.repository)
            else:
                so = src_options or options
                src = DockerSource(
                    sref,
                    client=RegistryClient(
                        sref.host,
                        creds=so.creds,
                        tls_verify=so.tls_verify,
                        cert_dir=so.cert_dir,
                        plain_http=so.plain_http,
                        log=log,
                        auth_file=so.auth_file,
                        **client_args(so),
                    ),
                )
                src._own_client = True
        else:
            src = open_source(s, src_options or options)
        with src:
            targets = src.targets()
            if len(targets) != 1:
                tags = ", ".join(t or "(untagged)" for t, _ in targets)
                raise UsageError(f"{src.description} holds several images ({tags}); name one, e.g. {s.raw}:TAG")
            src_tag, top = targets[0]
            if platform and top.media_type in INDEX_TYPES:
                top, _ = choose_instance(src, top, src.description, platform)
            if dest.digest and dest.digest != top.digest:
                raise UsageError(f"{dst_ref}: the image's digest is {top.digest}, not the one in the destination")
            pusher = _Pusher(src, sink, log, jobs=jobs)
            pusher.memo = memo
            pusher.preflight(top)
            with sink:
                pusher.tree(top, src.description)
                if not dest.digest:
                    tag = dest.tag or (
                        src_tag if src_tag and not src_tag.startswith("@") and is_valid_tag(src_tag) else "latest"
                    )
                    sink.tag(tag, top)
                    report.destination = f"docker://{dest.host}/{dest.repository}:{tag}"
                sink.commit()
            report.digest = top.digest
            report.media_type = top.media_type
            report.manifests = pusher.manifests
            if check_ranges and pusher.chunked_layers:
                layer = max(pusher.chunked_layers, key=lambda d: d.size)
                rc = client.check_range_requests(dest.repository, layer.digest, layer.size)
                report.range_check = {"ok": rc.ok, "message": rc.message}
                if not rc.ok:
                    warn(rc.message)
    finally:
        st = client.stats
        report.blobs = {"uploaded": st.uploaded, "mounted": st.mounted, "skipped": st.skipped}
        report.bytes_uploaded = st.bytes_uploaded
        report.retries = st.retries
        report.resumed_uploads = st.resumed
        report.seconds = time.monotonic() - started
        client.close()
        if memo is not None:
            memo.close()
    return report


def _open_memo() -> Any:
    """The layer memo of the default cache directory (blob locations), or None when it cannot be opened."""
    import sqlite3

    from converter.cache.frames import default_cache_dir
    from converter.cache.memo import LayerMemo

    try:
        return LayerMemo(default_cache_dir())
    except (OSError, sqlite3.Error):
        return None
