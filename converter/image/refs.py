"""Image references as skopeo writes them, and opening them as sources/sinks.

    oci:PATH[:TAG]                   OCI layout directory (a bare PATH means the same)
    oci-archive:PATH[:TAG]           tar of an OCI layout
    docker-archive:PATH[:NAME:TAG]   `docker save` / `podman save` archive
    docker://HOST[:PORT]/REPO[:TAG|@DIGEST]   registry
    containers-storage:[[DRIVER@GRAPHROOT+RUNROOT]]IMAGE   podman/buildah local store (source only;
                                     parsed and opened by converter/image/storage)

As in containers/image, PATH ends at the first ':' after the transport
(paths containing ':' cannot be written as references).

Registries are implemented in the package converter/image/registry/, which provides

    open_source(ref: ImageRef, options: TransportOptions) -> ImageSource
    open_sink(ref: ImageRef, options: TransportOptions) -> ImageSink

This module holds the one parser of docker:// references (parse_docker_reference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from converter.errors import UsageError
from converter.image.model import ImageSink, ImageSource, TransportOptions

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "docker", "containers-storage")

# OCI ref names in layouts and archives: looser than Docker tags (e.g. "localhost/app:1" as podman writes in archives).
_REFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-/:@+]+$")

# ------------------------------------------------------------- docker references
#
# The grammar of github.com/distribution/reference (reference.go):
#   name      := [domain '/'] path-component ['/' path-component]*   (at most 255 characters)
#   domain    := domain-component ['.' domain-component]* [':' port]  |  '[' ipv6 ']' [':' port]
#   path-component := [a-z0-9]+ (separator [a-z0-9]+)*,  separator := [_.] | '__' | '-'+
#   tag       := [\w][\w.-]{0,127}   (\w is ASCII: [A-Za-z0-9_])
#   digest    := algorithm ':' hex   (we accept the two algorithms OCI registers: sha256, sha512)
# The first component is a domain when it has a '.' or ':' or is `localhost`; otherwise
# the image is on Docker Hub, with `library/` added to one-component names.

TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_DIGEST_RE = re.compile(r"^(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
NAME_MAX = 255

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class ImageRef:
    transport: str  # one of TRANSPORTS
    raw: str  # as the user wrote it, for messages
    path: str | None = None  # oci, oci-archive, docker-archive
    tag: str | None = None  # oci/oci-archive ref name; docker tag; docker-archive "NAME:TAG"
    host: str | None = None  # docker://
    repository: str | None = None  # docker://, e.g. "library/alpine"
    digest: str | None = None  # docker://...@sha256:...

    def __str__(self) -> str:
        return self.raw

    @property
    def docker_reference(self) -> DockerReference:
        """The docker:// parts (only for transport "docker")."""
        if self.transport != "docker" or not self.host or not self.repository:
            raise UsageError(f"{self.raw!r} is not a docker:// reference")
        return DockerReference(self.host, self.repository, self.tag, self.digest)

    @property
    def reference_tag(self) -> str | None:
        """Tag or "@digest" the reference names, None when it names none."""
        if self.digest:
            return "@" + self.digest
        return self.tag


def _split_path(rest: str, transport: str, raw: str) -> tuple[str, str | None]:
    path, sep, tag = rest.partition(":")
    if not path:
        raise UsageError(f"{raw!r}: missing path after '{transport}:'")
    if not sep:
        return path, None
    if not tag:
        raise UsageError(f"{raw!r}: empty tag after ':'")
    return path, tag


def is_valid_tag(tag: str) -> bool:
    return bool(TAG_RE.match(tag))


@dataclass(frozen=True)
class DockerReference:
    """`HOST[:PORT]/REPO[:TAG][@DIGEST]`, as `docker://` references name images."""

    host: str  # as the user wrote it ("docker.io" for Docker Hub)
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        return "registry-1.docker.io" if self.host == DOCKER_HUB else self.host

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_docker_reference(text: str, *, default_tag: str | None = None) -> DockerReference:
    """Parse `[docker://]HOST/REPO[:TAG][@DIGEST]`; UsageError naming what is wrong.

    `default_tag` is the tag of a reference that names neither a tag nor a
    digest ("latest" for sources; None where the caller decides, as push does).
    """
    raw = text
    for prefix in ("docker://", "//"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if not text:
        raise UsageError(f"{raw!r}: missing registry and repository after docker://")
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
        if not _DIGEST_RE.match(digest):
            raise UsageError(f"{raw!r}: malformed digest {digest!r} (expected sha256:<64 hex> or sha512:<128 hex>)")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, _, tag = text.rpartition(":")
        if not TAG_RE.match(tag):
            raise UsageError(
                f"{raw!r}: invalid tag {tag!r} (letters, digits, '_', '.', '-'; at most 128, not starting with '.' or '-')"
            )
    parts = text.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost" or parts[0].startswith("[")):
        host, repo_parts = parts[0], parts[1:]
        if not _HOST_RE.match(host):
            raise UsageError(f"{raw!r}: invalid registry host {host!r}")
        if host in _DOCKER_HUB_ALIASES:
            host = DOCKER_HUB
    else:
        host, repo_parts = DOCKER_HUB, parts
    if host == DOCKER_HUB and len(repo_parts) == 1:
        repo_parts = ["library"] + repo_parts
    for comp in repo_parts:
        if not _REPO_COMPONENT_RE.match(comp):
            raise UsageError(
                f"{raw!r}: invalid repository component {comp!r} (lowercase letters, digits, '.', '_', '-')"
            )
    repository = "/".join(repo_parts)
    if len(f"{host}/{repository}") > NAME_MAX:
        raise UsageError(f"{raw!r}: repository name longer than {NAME_MAX} characters")
    if tag is None and digest is None:
        tag = default_tag
    return DockerReference(host, repository, tag, digest)


def _parse_docker(rest: str, raw: str) -> ImageRef:
    if not rest.startswith("//"):
        raise UsageError(f"{raw!r}: registry references are written docker://HOST[:PORT]/REPO[:TAG|@DIGEST]")
    r = parse_docker_reference(raw, default_tag="latest")
    return ImageRef("docker", raw, host=r.host, repository=r.repository, tag=r.tag, digest=r.digest)


def parse_ref(raw: str) -> ImageRef:
    """Parse a reference; UsageError with the reason when it is malformed."""
    if not raw:
        raise UsageError("empty image reference")
    transport, sep, rest = raw.partition(":")
    if sep and transport == "docker":
        return _parse_docker(rest, raw)
    if sep and transport in ("oci", "oci-archive"):
        path, tag = _split_path(rest, transport, raw)
        if tag is not None and not _REFNAME_RE.match(tag):
            raise UsageError(f"{raw!r}: invalid tag {tag!r}")
        return ImageRef(transport, raw, path=path, tag=tag)
    if sep and transport == "containers-storage":
        from converter.image.storage.store import parse_reference

        parse_reference(rest, raw)  # UsageError when malformed; opened from `raw` again by open_source
        return ImageRef(transport, raw, path=None, tag=None)
    if sep and transport == "docker-archive":
        path, name = _split_path(rest, transport, raw)
        if name is not None:
            if name.startswith("@"):
                if not name[1:].isdigit():
                    raise UsageError(f"{raw!r}: expected @INDEX (a number) after the path")
            elif not _REFNAME_RE.match(name):
                raise UsageError(f"{raw!r}: invalid image name {name!r}")
        return ImageRef(transport, raw, path=path, tag=name)
    if sep and re.match(r"^[a-z][a-z0-9+-]*$", transport) and transport not in TRANSPORTS and "/" not in transport:
        # Looks like a transport we do not know (dir:, containers-storage:, docker-daemon:...).
        import os

        if not os.path.exists(transport):
            raise UsageError(
                f"{raw!r}: unknown transport {transport!r} (use oci:, oci-archive:, docker-archive:, docker:// or containers-storage:)"
            )
    # A bare path is an OCI layout, like oci:PATH[:TAG].
    path, tag = _split_path(raw, "oci", raw)
    return ImageRef("oci", raw, path=path, tag=tag)


def _open(ref: ImageRef | str, options: TransportOptions | None, role: str) -> Any:
    """The source (`role` "source") or sink ("sink") of a reference; the
    transport modules are imported only when used."""
    if isinstance(ref, str):
        ref = parse_ref(ref)
    options = options or TransportOptions()
    t = ref.transport
    if t == "docker":
        from converter.image import registry

        return registry.open_source(ref, options) if role == "source" else registry.open_sink(ref, options)
    if t == "containers-storage":
        if role == "sink":
            raise UsageError(
                f"{ref.raw!r}: containers-storage: is a source only (load the result with "
                "`podman pull oci:DIR` or push it to a registry)"
            )
        from converter.image.storage import StorageSource, parse_reference

        spec, image = parse_reference(ref.raw.partition(":")[2], ref.raw)
        return StorageSource(spec, image, description=ref.raw)
    if t not in ("oci", "oci-archive", "docker-archive"):
        raise UsageError(f"{ref.raw!r}: unsupported transport {ref.transport!r}")
    if ref.path is None:  # parse_ref sets a path for every file transport; an ImageRef built by hand may not
        raise UsageError(f"{ref.raw!r}: {t}: reference without a path")
    from converter.image import dockerarchive, layout

    opener: Any = {
        ("oci", "source"): layout.LayoutSource,
        ("oci", "sink"): layout.LayoutSink,
        ("oci-archive", "source"): layout.OciArchiveSource,
        ("oci-archive", "sink"): layout.OciArchiveSink,
        ("docker-archive", "source"): dockerarchive.DockerArchiveSource,
        ("docker-archive", "sink"): dockerarchive.DockerArchiveSink,
    }[t, role]
    return opener(ref.path, ref.tag, description=ref.raw)


def open_source(ref: ImageRef | str, options: TransportOptions | None = None) -> ImageSource:
    return cast(ImageSource, _open(ref, options, "source"))


def open_sink(ref: ImageRef | str, options: TransportOptions | None = None) -> ImageSink:
    return cast(ImageSink, _open(ref, options, "sink"))
