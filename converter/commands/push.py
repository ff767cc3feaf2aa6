"""`zconv push SRC docker://HOST/REPO[:TAG]`: copy an image or index to a registry, blobs untouched.

Every blob keeps its bytes and digest; what the registry already has is
skipped (HEAD), what another repository of the same registry holds is
mounted, the rest is uploaded (in resumable chunks when large). Manifests go
up by digest, children first; the tag is PUT last, so no reader ever sees the
tag pointing at something incomplete, and a failed push leaves it where it was.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import typer

from converter.chunked.format import MANIFEST_CHECKSUM_KEY
from converter.cli_app import app
from converter.commands import CERT_DIR_HELP, CREDS_HELP, TLS_HELP, parse_bool, run_command
from converter.errors import BadInputError, UsageError
from converter.image.model import (
    FOREIGN_LAYER_TYPES,
    Descriptor,
    ImageSource,
    Index,
    TransportOptions,
    parse_manifest_or_index,
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

    def blob(self, desc: Descriptor, what: str) -> None:
        if desc.digest in self.done:
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
                self.sink.put_blob(desc, r)
                finish = getattr(r, "finish", None)
                if finish:
                    finish()
        self.done.add(desc.digest)

    def preflight(self, desc: Descriptor) -> None:
        """For layout directories: every blob must be there before anything is uploaded."""
        from converter.image.layout import LayoutSource

        if not isinstance(self.src, LayoutSource):
            return  # other sources are checked as they are read
        doc = parse_manifest_or_index(self.src.get_manifest(desc), desc.media_type,
                                      f"{self.src.description} {short(desc.digest)}")
        if isinstance(doc, Index):
            for child in doc.manifests:
                self.preflight(child)
            return
        for i, b in enumerate((doc.config, *doc.layers)):
            if i and b.media_type in FOREIGN_LAYER_TYPES and b.urls:
                continue
            if _local_blob_path(self.src, b.digest) is None:
                what = "config" if i == 0 else f"layer {i}"
                raise BadInputError(f"{self.src.description}: blob {b.digest} ({what} of manifest {short(desc.digest)}) is missing from the layout")

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
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

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
        if desc.digest in self.done:
            return
        data = self.src.get_manifest(desc)
        doc = parse_manifest_or_index(data, desc.media_type, f"{self.src.description} {short(desc.digest)}")
        if isinstance(doc, Index):
            for child in doc.manifests:
                self.tree(child, f"{label} {child.platform or short(child.digest)}")
        else:
            items = [(doc.config, f"{label} config {short(doc.config.digest)}")]
            for i, layer in enumerate(doc.layers):
                if layer.media_type in FOREIGN_LAYER_TYPES and layer.urls:
                    continue  # non-distributable: clients fetch it from its URLs
                items.append((layer, f"{label} layer {i + 1}/{len(doc.layers)} {short(layer.digest)}"))
                if MANIFEST_CHECKSUM_KEY in layer.annotations:
                    self.chunked_layers.append(layer)
            self.blobs(items)
        self.sink.put_manifest(desc, data)
        self.manifests += 1
        self.done.add(desc.digest)


def push_image(
    src_ref: str,
    dst_ref: str,
    *,
    options: TransportOptions = TransportOptions(),
    src_options: TransportOptions | None = None,
    retry: RetryPolicy = RetryPolicy(),
    timeout: float = 60.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    check_ranges: bool = True,
    jobs: int = 3,
    log: Callable[[str], None] = lambda m: None,
    warn: Callable[[str], None] = lambda m: print(f"zconv: warning: {m}", file=sys.stderr),
) -> PushReport:
    """Copy what `src_ref` names to the registry reference `dst_ref`, blobs byte for byte."""
    from converter.image.refs import open_source, parse_ref

    started = time.monotonic()
    if not dst_ref.startswith("docker://"):
        raise UsageError(f"push destination {dst_ref!r} must be a registry reference docker://HOST/REPO[:TAG]")
    dest = parse_reference(dst_ref)
    if dest.tag and dest.digest:
        raise UsageError(f"{dst_ref}: a destination takes a tag or a digest, not both")
    s = parse_ref(src_ref)
    client = RegistryClient(
        dest.host, creds=options.creds, tls_verify=options.tls_verify, cert_dir=options.cert_dir,
        plain_http=options.plain_http, retry=retry, timeout=timeout, chunk_size=chunk_size, log=log,
        auth_file=options.auth_file,
    )
    sink = DockerSink(dest, client=client, log=log)
    report = PushReport(source=src_ref, destination=dst_ref)
    try:
        if s.transport == "docker":
            sref = parse_reference(s.raw)
            if sref.host == dest.host:
                # same registry: share the connection and credentials, and mount instead of uploading
                src: ImageSource = DockerSource(sref, client=client)
                sink.mount_sources.append(sref.repository)
            else:
                so = src_options or options
                src = DockerSource(sref, client=RegistryClient(
                    sref.host, creds=so.creds, tls_verify=so.tls_verify, cert_dir=so.cert_dir,
                    plain_http=so.plain_http, retry=retry, timeout=timeout, log=log, auth_file=so.auth_file))
                src._own_client = True  # type: ignore[attr-defined]
        else:
            src = open_source(s, src_options or options)
        with src:
            targets = src.targets()
            if len(targets) != 1:
                tags = ", ".join(t or "(untagged)" for t, _ in targets)
                raise UsageError(f"{src.description} holds several images ({tags}); name one, e.g. {s.raw}:TAG")
            src_tag, top = targets[0]
            if dest.digest and dest.digest != top.digest:
                raise UsageError(f"{dst_ref}: the image's digest is {top.digest}, not the one in the destination")
            pusher = _Pusher(src, sink, log, jobs=jobs)
            pusher.preflight(top)
            with sink:
                pusher.tree(top, src.description)
                if not dest.digest:
                    tag = dest.tag or (src_tag if src_tag and not src_tag.startswith("@") and _plain_tag(src_tag) else "latest")
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
    return report


def _plain_tag(tag: str) -> bool:
    from converter.image.refs import is_valid_tag

    return is_valid_tag(tag)


@app.command()
def push(
    source: str = typer.Argument(..., help="image to push: oci:PATH[:TAG], oci-archive:..., docker-archive:..., docker://..."),
    destination: str = typer.Argument(..., help="docker://HOST[:PORT]/REPO[:TAG|@DIGEST]"),
    creds: str = typer.Option(None, "--creds", help=CREDS_HELP, metavar="USER:PASS"),
    src_creds: str = typer.Option(None, "--src-creds", help="USER:PASSWORD for a docker:// source on another registry", metavar="USER:PASS"),
    authfile: str = typer.Option(None, "--authfile", help="auth file to read credentials from (default: podman's lookup order)", metavar="PATH"),
    tls_verify: str = typer.Option("true", "--tls-verify", help=TLS_HELP, metavar="BOOL"),
    cert_dir: str = typer.Option(None, "--cert-dir", help=CERT_DIR_HELP, metavar="DIR"),
    retry: int = typer.Option(3, "--retry", min=0, max=100, help="retries per request after 429/5xx/dropped connections"),
    retry_delay: float = typer.Option(2.0, "--retry-delay", min=0.0, max=300.0, help="first retry delay in seconds (doubles each time)"),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="seconds without progress before a request counts as failed"),
    chunk_size: int = typer.Option(DEFAULT_CHUNK_SIZE // (1024 * 1024), "--chunk-size", min=1, help="MiB; larger blobs are uploaded in resumable chunks"),
    jobs: int = typer.Option(3, "--jobs", "-j", min=1, max=16, help="blobs uploaded at the same time"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON report on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress messages"),
) -> None:
    """Push an image (or a whole index) to a registry with its blobs untouched; the tag is written last."""

    def body() -> None:
        verify = parse_bool(tls_verify, "--tls-verify")
        opts = TransportOptions(creds=creds, tls_verify=verify, cert_dir=cert_dir, auth_file=authfile)
        sopts = (TransportOptions(creds=src_creds, tls_verify=verify, cert_dir=cert_dir, auth_file=authfile)
                 if src_creds else TransportOptions(tls_verify=verify, cert_dir=cert_dir, auth_file=authfile))
        lock = threading.Lock()

        def log(m: str) -> None:
            if not (quiet or as_json):
                with lock:  # blobs upload in several threads: whole lines only
                    sys.stderr.write(m + "\n")
                    sys.stderr.flush()

        report = push_image(
            source, destination, options=opts, src_options=sopts,
            retry=RetryPolicy(retries=retry, delay=retry_delay, max_delay=max(30.0, retry_delay)),
            timeout=timeout, chunk_size=chunk_size * 1024 * 1024, log=log, jobs=jobs,
        )
        if as_json:
            print(json.dumps(report.to_json(), indent=2))
        elif not quiet:
            b = report.blobs
            where = report.destination if "@" in report.destination else f"{report.destination}@{report.digest}"
            print(
                f"pushed {where} "
                f"({b['uploaded']} uploaded, {b['mounted']} mounted, {b['skipped']} already there)"
            )

    run_command(body)
