"""Registry transport: an OCI distribution client and the docker:// source/sink.

http             session, TLS/CA bundle, ping and scheme, retry policy and the one retry loop,
                 deadlines, redirects and where credentials may go
errors           RegistryHTTPError, check_status, the retryable marker
auth             challenges, bearer tokens, Basic credentials
blobs            HEAD, mount, uploads (checked against their digest), ranged GET, BlobStream
upload_sessions  unfinished uploads remembered on disk
manifests        manifests and tags
rangecheck       does the registry answer Range requests correctly
client           RegistryClient, put together from the above
docker           DockerSource, DockerSink, open_source/open_sink for converter.image.refs
"""

from __future__ import annotations

from converter.image.model import RangeCheck
from converter.image.registry.blobs import BlobStream, LocalBlobCheck
from converter.image.registry.client import RegistryClient
from converter.image.registry.docker import (
    DockerSink,
    DockerSource,
    Reference,
    client_for,
    open_sink,
    open_source,
    parse_reference,
)
from converter.image.registry.errors import RETRY_STATUS, RegistryHTTPError, Transient, check_status
from converter.image.registry.http import MAX_REDIRECTS, PushStats, RetryPolicy, Transport, is_local_host
from converter.image.registry.manifests import MANIFEST_ACCEPT
from converter.image.registry.upload_sessions import DEFAULT_CHUNK_SIZE

__all__ = [
    "BlobStream",
    "DEFAULT_CHUNK_SIZE",
    "DockerSink",
    "DockerSource",
    "LocalBlobCheck",
    "MANIFEST_ACCEPT",
    "MAX_REDIRECTS",
    "PushStats",
    "RETRY_STATUS",
    "RangeCheck",
    "Reference",
    "RegistryClient",
    "RegistryHTTPError",
    "RetryPolicy",
    "Transient",
    "Transport",
    "check_status",
    "client_for",
    "is_local_host",
    "open_sink",
    "open_source",
    "parse_reference",
]
