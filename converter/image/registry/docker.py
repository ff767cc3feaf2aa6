"""The docker:// transport: DockerSource and DockerSink on a RegistryClient.

Tags are written last, by `DockerSink.commit()`: blobs, then manifests by
digest, then the tag. Manifests are refused above 4 MiB (the limit of
containers/image and of distribution), before any upload starts.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, BinaryIO, Callable, Sequence

from converter.errors import BadInputError, RegistryError, UsageError, ZconvError
from converter.image.model import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageSink,
    ImageSource,
    RangeCheck,
    TransportOptions,
    VerifyingReader,
    copy_verified,
    parse_tag_or_digest,
    sha256_digest,
    short,
)
from converter.image.refs import DockerReference, parse_docker_reference
from converter.image.registry.client import RegistryClient
from converter.image.registry.http import RetryPolicy
from converter.jsonload import load_json

Reference = DockerReference  # the name registry code used before


def parse_reference(text: str) -> DockerReference:
    """`[docker://]HOST/REPO[:TAG|@DIGEST]`, tag left None when absent (see refs.parse_docker_reference)."""
    return parse_docker_reference(text)


def client_for(
    ref: Reference,
    options: TransportOptions | None,
    *,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> RegistryClient:
    o = options or TransportOptions()
    extra: dict[str, Any] = {}
    for name in ("retry", "timeout", "chunk_size"):
        v = getattr(o, name, None)
        if v is not None:
            extra[name] = v
    if retry is not None:
        extra["retry"] = retry
    if timeout is not None:
        extra["timeout"] = timeout
    return RegistryClient(
        ref.host,
        creds=o.creds,
        tls_verify=o.tls_verify,
        cert_dir=o.cert_dir,
        plain_http=o.plain_http,
        log=log,
        auth_file=o.auth_file,
        **extra,
    )


def _range_check(client: RegistryClient, repository: str, desc: Descriptor) -> RangeCheck:
    try:
        return client.check_range_requests(repository, desc.digest, desc.size)
    except ZconvError as e:
        return RangeCheck(False, f"could not check HTTP Range support: {e}")


class DockerSource(ImageSource):
    """Images in a registry repository (`docker://HOST/REPO[:TAG|@DIGEST]`)."""

    remote = True

    def __init__(
        self,
        reference: str | Reference,
        options: TransportOptions | None = None,
        *,
        client: RegistryClient | None = None,
    ) -> None:
        self.ref = parse_reference(reference) if isinstance(reference, str) else reference
        self.description = f"docker://{self.ref}"
        self.reference_tag = f"@{self.ref.digest}" if self.ref.digest else self.ref.tag
        self.client = client or client_for(self.ref, options)
        self._own_client = client is None
        self.repository = self.ref.repository

    @property
    def host(self) -> str:
        return self.ref.host

    def targets(self) -> list[tuple[str | None, Descriptor]]:
        if self.reference_tag is None:
            # docker:// without a tag means :latest, as for podman
            return [("latest", self.resolve("latest"))]
        return super().targets()

    def list_tags(self) -> list[str]:
        return self.client.list_tags(self.repository)

    def resolve(self, tag: str) -> Descriptor:
        name, digest = parse_tag_or_digest(tag)
        ref = digest or name
        data, mt, got = self.client.get_manifest(self.repository, ref)  # type: ignore[arg-type]
        if mt not in MANIFEST_TYPES + INDEX_TYPES:
            try:
                doc = load_json(data, f"{self.description}: manifest", max_size=MAX_MANIFEST_SIZE)
            except BadInputError:
                doc = None  # parse_manifest_or_index reports it when the manifest is read
            declared = doc.get("mediaType") if isinstance(doc, dict) else None
            if isinstance(declared, str) and declared:
                mt = declared
        self._cache = getattr(self, "_cache", {})
        self._cache[got] = data
        return Descriptor(media_type=mt, digest=got, size=len(data))

    def get_manifest(self, desc: Descriptor) -> bytes:
        cache = getattr(self, "_cache", {})
        data = cache.get(desc.digest)
        if data is None:
            data, _, _ = self.client.get_manifest(self.repository, desc.digest)
        if len(data) != desc.size:
            raise BadInputError(
                f"{self.description}: manifest {short(desc.digest)} is {len(data)} bytes, descriptor says {desc.size}"
            )
        return data

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        stream = self.client.open_blob(self.repository, desc.digest, desc.size)
        return VerifyingReader(stream, desc.digest, desc.size, f"{self.description} blob {short(desc.digest)}")  # type: ignore[arg-type]

    def read_blob_range(self, desc: Descriptor, offset: int, length: int) -> bytes:
        self.check_range(desc, offset, length)
        return self.client.get_range(self.repository, desc.digest, offset, length)

    def read_blob_ranges(self, desc: Descriptor, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        for offset, length in ranges:
            self.check_range(desc, offset, length)
        return self.client.get_ranges(self.repository, desc.digest, ranges, desc.size)

    def check_range_requests(self, desc: Descriptor) -> RangeCheck:
        """Does the registry answer Range requests correctly for this blob? Never raises."""
        return _range_check(self.client, self.repository, desc)

    def close(self) -> None:
        if self._own_client:
            self.client.close()


class DockerSink(ImageSink):
    """Writes to a registry repository. Tags are PUT only by commit(), after every blob and manifest."""

    def __init__(
        self,
        reference: str | Reference,
        options: TransportOptions | None = None,
        *,
        client: RegistryClient | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.ref = parse_reference(reference) if isinstance(reference, str) else reference
        if self.ref.digest and self.ref.tag:
            raise UsageError(f"docker://{self.ref}: a destination takes a tag or a digest, not both")
        self.description = f"docker://{self.ref}"
        self.reference_tag = self.ref.tag
        self.client = client or client_for(self.ref, options, log=log)
        self._own_client = client is None
        self.repository = self.ref.repository
        self._log = log or (lambda m: None)
        self._present: set[str] = set()
        self._pending_tags: dict[str, Descriptor] = {}
        self._manifests: dict[str, tuple[bytes, str]] = {}
        #: Other repositories on the same registry that may hold our blobs (tried with a cross-repo mount).
        self.mount_sources: list[str] = []
        self.results: dict[str, str] = {}  # digest -> skipped/mounted/uploaded
        self._temp = tempfile.mkdtemp(prefix="zconv-push-")

    @property
    def host(self) -> str:
        return self.ref.host

    def temp_dir(self) -> str | None:
        return self._temp

    def has_blob(self, desc: Descriptor) -> bool:
        if desc.digest in self._present:
            return True
        if self.client.blob_size(self.repository, desc.digest, push=True) is not None:
            self._present.add(desc.digest)
            return True
        return False

    def _record(self, desc: Descriptor, how: str) -> None:
        self._present.add(desc.digest)
        self.results[desc.digest] = how
        self._log(f"blob {short(desc.digest)} ({desc.size} bytes): {how}")

    def check_range_requests(self, desc: Descriptor) -> RangeCheck:
        """After put_blob*: does the registry serve Range requests of this blob correctly? Never raises.

        `RangeCheck.ok` False comes with a message fit for a warning: partial
        pulls of zstd:chunked layers from this registry fall back to full downloads.
        """
        return _range_check(self.client, self.repository, desc)

    def try_mount(self, desc: Descriptor) -> bool:
        """Mount the blob from one of `mount_sources` (same registry); True when it worked.

        Callers copying from a registry should try this before opening the
        source blob, so no byte is downloaded for a blob the registry can link.
        """
        return self.mount_from(desc, self.mount_sources)

    def blob_location(self) -> tuple[str, str] | None:
        return (self.host, self.repository)

    def mount_from(self, desc: Descriptor, repositories: list[str]) -> bool:
        for src in repositories:
            if src != self.repository and self.client.mount_blob(self.repository, desc.digest, src) == "mounted":
                self.client.count("mounted")
                self._record(desc, "mounted")
                return True
        return False

    def put_blob_file(self, desc: Descriptor, path: str) -> None:
        if desc.digest in self._present:
            self.results.setdefault(desc.digest, "skipped")
            return
        size = os.path.getsize(path)
        if size != desc.size:
            raise BadInputError(f"{path}: blob {short(desc.digest)} is {size} bytes, descriptor says {desc.size}")
        how = self.client.push_blob(
            self.repository, desc.digest, desc.size, lambda: open(path, "rb"), mount_from=self.mount_sources
        )
        self._record(desc, how)

    def put_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        """Uploads need a re-readable file for retries: seekable streams are used as they are, others are spooled."""
        if desc.digest in self._present:
            self.results.setdefault(desc.digest, "skipped")
            return
        if self.client.blob_size(self.repository, desc.digest, push=True) is not None:
            self.client.count("skipped")
            self._record(desc, "skipped")
            return
        if self.try_mount(desc):
            return
        fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self._temp)
        try:
            with os.fdopen(fd, "wb") as out:
                copy_verified(stream, out, desc, f"{self.description}: source")
            how = self.client.push_blob(
                self.repository, desc.digest, desc.size, lambda: open(tmp, "rb"), known_absent=True
            )
            self._record(desc, how)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def put_manifest(self, desc: Descriptor, data: bytes) -> None:
        if len(data) > MAX_MANIFEST_SIZE:
            raise BadInputError(
                f"{self.description}: manifest {short(desc.digest)} is {len(data)} bytes, over the {MAX_MANIFEST_SIZE}-byte limit registries accept"
            )
        if sha256_digest(data) != desc.digest and not desc.digest.startswith("sha512:"):
            raise BadInputError(f"{self.description}: manifest bytes do not match {desc.digest}")
        self.client.put_manifest(self.repository, desc.digest, data, desc.media_type)
        self._manifests[desc.digest] = (data, desc.media_type)

    def tag(self, tag: str | None, desc: Descriptor) -> None:
        if tag is None:
            if self.ref.digest:
                return  # pushed by digest: nothing to tag
            raise UsageError(f"{self.description}: a registry needs a tag for every image")
        self._pending_tags[tag] = desc

    def commit(self) -> None:
        for tag, desc in self._pending_tags.items():
            data_mt = self._manifests.get(desc.digest)
            if data_mt is None:
                raise RegistryError(
                    f"{self.description}: tag {tag} points at manifest {short(desc.digest)} that was not pushed"
                )
            data, mt = data_mt
            self.client.put_manifest(self.repository, tag, data, mt)
            self._log(f"tagged {self.host}/{self.repository}:{tag} -> {desc.digest}")
        self._pending_tags.clear()

    def abort(self) -> None:
        # Blobs and untagged manifests stay (registries garbage-collect them); no tag was moved.
        self._pending_tags.clear()

    def close(self) -> None:
        import shutil

        shutil.rmtree(self._temp, ignore_errors=True)
        if self._own_client:
            self.client.close()


def _from_image_ref(ref: Any) -> DockerReference:
    """converter.image.refs.ImageRef (or a string) -> DockerReference."""
    if isinstance(ref, str):
        return parse_reference(ref)
    if isinstance(ref, DockerReference):
        return ref
    return ref.docker_reference


def open_source(ref: Any, options: TransportOptions | None = None) -> DockerSource:
    """Entry point used by converter.image.refs for docker:// sources."""
    return DockerSource(_from_image_ref(ref), options)


def open_sink(
    ref: Any, options: TransportOptions | None = None, *, log: Callable[[str], None] | None = None
) -> DockerSink:
    """Entry point used by converter.image.refs for docker:// destinations."""
    return DockerSink(_from_image_ref(ref), options, log=log)
