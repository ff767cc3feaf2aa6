"""Many (repository, tag) pairs -> zstd:chunked, idempotent, sharded.

`zconv sync SRC [DEST]` converts every tag of one repository, or of the
repositories a skopeo-sync-shaped YAML file lists, with the same conversion
as `zconv convert`. Three destinations:

- a registry prefix: docker://HOST/PREFIX, REPO goes to HOST/PREFIX/REPO;
- the same repository with a tag suffix: TAG goes to TAG+SUFFIX (tags that
  already end in the suffix are outputs, never sources);
- in place with --dual: the tag becomes an index holding the original and
  the zstd:chunked instance.

Idempotent: every manifest and index written here carries
SOURCE_DIGEST_ANNOTATION, the digest of the source it was converted from. A
tag is skipped when its destination already carries the source's current
digest; deciding that costs a manifest HEAD of the source and a GET of the
destination (one GET in place), never a blob request.

Shared across the images of one run: one registry client per registry and
credentials (tokens, connections), and the frame cache and layer memo of
`zconv convert` (converter/cache): an input layer met again (another tag,
another repository, or a run killed midway and started again) is not
converted again, and its output blob is found in the destination repository
or mounted from the repository the memo says it went to.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from converter.convert import (
    SOURCE_DIGEST_ANNOTATION,
    Converter,
    ConvertOptions,
    open_frame_sources,
)
from converter.errors import (
    AuthError,
    BadInputError,
    RegistryError,
    UsageError,
    ZconvError,
)
from converter.image.model import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    TransportOptions,
    sha256_digest,
)
from converter.image.registry import (
    DockerSink,
    DockerSource,
    Reference,
    RegistryClient,
    client_for,
)
from converter.image.registry.http import operation
from converter.imageread import choose_instance
from converter.progress import Progress
from converter.semver import Constraint, SemverError, parse_constraint

SHARD_COUNT_ENV = "ZCONV_SHARDS"  # N of --shard I/N when JOB_COMPLETION_INDEX gives I
SHARD_ENV = "ZCONV_SHARD"  # "I/N", as --shard
K8S_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in the pods of an Indexed Job

_ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# The keys of a registry in the YAML source, those of `skopeo sync --src yaml`.
_REGISTRY_KEYS = ("images", "images-by-tag-regex", "images-by-semver", "credentials", "tls-verify", "cert-dir")


# ---------------------------------------------------------------- what to sync


@dataclass(frozen=True)
class RepoSpec:
    """One source repository and which of its tags to take."""

    host: str
    repository: str
    tags: tuple[str, ...] | None = None  # None: every tag
    regexes: tuple[str, ...] = ()  # only tags all of these match (re.search, as skopeo's Go regexp)
    options: TransportOptions = field(default_factory=TransportOptions)
    semver: Constraint | None = None  # only tags that are versions satisfying it (images-by-semver)

    def wants(self, tag: str) -> bool:
        """Whether a listed tag passes the regexes and the semver constraint of this spec."""
        if not all(re.search(r, tag) for r in self.regexes):
            return False
        return self.semver is None or self.semver.matches_tag(tag)


@dataclass(frozen=True)
class Item:
    host: str
    repository: str
    tag: str
    options: TransportOptions = field(default_factory=TransportOptions, compare=False)

    @property
    def ref(self) -> str:
        return f"docker://{self.host}/{self.repository}:{self.tag}"


def _split_docker(text: str, what: str) -> tuple[str, str]:
    """docker://HOST[/PATH] -> (HOST, PATH); PATH may be empty."""
    if not text.startswith("docker://"):
        raise UsageError(f"{what} {text!r}: expected docker://HOST/REPO (or a YAML file for the source)")
    rest = text[len("docker://") :].rstrip("/")
    host, _, path = rest.partition("/")
    if not host or not ("." in host or ":" in host or host == "localhost" or host.startswith("[")):
        raise UsageError(f"{what} {text!r}: name the registry host (docker://HOST[:PORT]/...)")
    return host, path


def _check_repo(path: str, raw: str, what: str) -> None:
    for comp in path.split("/"):
        if not _REPO_COMPONENT_RE.match(comp):
            raise UsageError(
                f"{what} {raw!r}: invalid repository component {comp!r} (lowercase letters, digits, '.', '_', '-')"
            )


def _check_regex(regex: str | None, where: str) -> None:
    if regex is None:
        return
    try:
        re.compile(regex)
    except re.error as e:
        raise UsageError(f"{where}: invalid regular expression {regex!r}: {e}") from None


def parse_source(src: str, base: TransportOptions, tags_regex: str | None = None) -> list[RepoSpec]:
    """A docker://HOST/REPO[:TAG] reference or a skopeo-sync YAML file -> repositories to sync."""
    _check_regex(tags_regex, "--tags")
    if src.startswith("docker://"):
        host, path = _split_docker(src, "source")
        if "@" in path:
            raise UsageError(f"source {src!r}: sync converts tags; name a repository (every tag) or REPO:TAG")
        tags = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, _, tag = path.rpartition(":")
            if not _TAG_RE.match(tag):
                raise UsageError(f"source {src!r}: invalid tag {tag!r}")
            tags = (tag,)
        if not path:
            raise UsageError(f"source {src!r}: name a repository after the host")
        _check_repo(path, src, "source")
        return [RepoSpec(host, path, tags, (tags_regex,) if tags_regex else (), base)]
    if os.path.isfile(src):
        return load_yaml(src, base, tags_regex)
    raise UsageError(f"source {src!r}: neither docker://HOST/REPO nor an existing YAML file")


def load_yaml(path: str, base: TransportOptions, tags_regex: str | None = None) -> list[RepoSpec]:
    """The YAML shape of `skopeo sync --src yaml`:

    registry.example.com:
      images:
        busybox: []            # every tag
        redis: ["1.0", "2.0"]  # these tags
      images-by-tag-regex:
        nginx: ^1\\.13\\.[12]-alpine$
      images-by-semver:
        alpine: ">= 3.18, < 4"  # tags that are versions in the range (converter/semver.py)
      credentials: {username: john, password: secret}   # only ever sent to this registry
      tls-verify: true
      cert-dir: /etc/certs
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadInputError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict) or not doc:
        raise BadInputError(f"{path}: expected a mapping of registry host -> images")
    specs: list[RepoSpec] = []
    for host, conf in doc.items():
        where = f"{path}: registry {host}"
        if not isinstance(host, str) or not isinstance(conf, dict):
            raise BadInputError(f"{where}: expected a mapping ({', '.join(_REGISTRY_KEYS)})")
        _split_docker(f"docker://{host}", f"{path}: registry")
        unknown = set(conf) - set(_REGISTRY_KEYS)
        if unknown:
            raise BadInputError(
                f"{where}: unsupported key(s) {', '.join(sorted(map(str, unknown)))} "
                f"(allowed: {', '.join(_REGISTRY_KEYS)})"
            )
        opts = base
        creds = conf.get("credentials")
        if creds is not None:
            if (
                not isinstance(creds, dict)
                or not isinstance(creds.get("username"), str)
                or not isinstance(creds.get("password"), str)
            ):
                raise BadInputError(f"{where}: credentials need a username and a password")
            opts = replace(opts, creds=f"{creds['username']}:{creds['password']}")
        if "tls-verify" in conf:
            if not isinstance(conf["tls-verify"], bool):
                raise BadInputError(f"{where}: tls-verify takes true or false")
            opts = replace(opts, tls_verify=conf["tls-verify"])
        if "cert-dir" in conf:
            opts = replace(opts, cert_dir=str(conf["cert-dir"]))
        images = conf.get("images") or {}
        by_regex = conf.get("images-by-tag-regex") or {}
        by_semver = conf.get("images-by-semver") or {}
        if not isinstance(images, dict) or not isinstance(by_regex, dict) or not isinstance(by_semver, dict):
            raise BadInputError(f"{where}: images, images-by-tag-regex and images-by-semver map repositories to tags")
        for repo, tags in images.items():
            _check_repo(str(repo), str(repo), f"{where}: repository")
            if tags is None or tags == []:
                specs.append(RepoSpec(host, str(repo), None, (tags_regex,) if tags_regex else (), opts))
                continue
            if not isinstance(tags, list) or not all(
                isinstance(t, (str, int)) and not isinstance(t, bool) for t in tags
            ):
                # A float would lose digits (1.10 -> "1.1"): tags that look like numbers must be quoted.
                raise BadInputError(f'{where}: repository {repo}: expected a list of tags (quote tags like "1.10")')
            tags = [str(t) for t in tags]
            for t in tags:
                if not _TAG_RE.match(t):
                    raise BadInputError(
                        f"{where}: repository {repo}: {t!r} is not a tag (sync converts tags, not digests)"
                    )
            specs.append(RepoSpec(host, str(repo), tuple(tags), (tags_regex,) if tags_regex else (), opts))
        for repo, regex in by_regex.items():
            _check_repo(str(repo), str(repo), f"{where}: repository")
            if not isinstance(regex, str):
                raise BadInputError(f"{where}: images-by-tag-regex: {repo}: expected a regular expression")
            try:
                re.compile(regex)
            except re.error as e:
                raise BadInputError(f"{where}: images-by-tag-regex: {repo}: invalid regular expression: {e}") from None
            # --tags narrows further: both must match.
            specs.append(RepoSpec(host, str(repo), None, (regex,) + ((tags_regex,) if tags_regex else ()), opts))
        # As in skopeo, the three keys add up: a repository under several of them gets
        # the tags of each (a tag is converted once).
        for repo, text in by_semver.items():
            _check_repo(str(repo), str(repo), f"{where}: repository")
            if isinstance(text, bool) or not isinstance(text, (str, int)):
                # 1.10 would be the float 1.1: a constraint that is not a plain integer must be quoted.
                raise BadInputError(
                    f'{where}: images-by-semver: {repo}: expected a semantic version constraint (quote it: ">= 1.10")'
                )
            try:
                constraint = parse_constraint(str(text))
            except SemverError as e:
                raise BadInputError(
                    f"{where}: images-by-semver: {repo}: invalid semantic version constraint {str(text)!r}: {e}"
                ) from None
            specs.append(RepoSpec(host, str(repo), None, (tags_regex,) if tags_regex else (), opts, constraint))
    return specs


# ---------------------------------------------------------------- where it goes


@dataclass(frozen=True)
class Destination:
    """DEST of `zconv sync`: a registry prefix, or None (the source repositories themselves)."""

    host: str | None = None  # None: in place
    prefix: str = ""
    suffix: str = ""
    dual: bool = False

    @classmethod
    def parse(cls, dest: str | None, suffix: str, dual: bool) -> Destination:
        if suffix and not _TAG_RE.match("x" + suffix):
            raise UsageError(f"--suffix {suffix!r}: a tag suffix may only hold letters, digits, '_', '.' and '-'")
        if dest is None:
            if not suffix and not dual:
                raise UsageError(
                    "no destination: give docker://HOST/PREFIX, or convert in place with --suffix SUFFIX or --dual"
                )
            return cls(None, "", suffix, dual)
        host, prefix = _split_docker(dest, "destination")
        if ":" in prefix.rsplit("/", 1)[-1] or "@" in prefix:
            raise UsageError(f"destination {dest!r}: a registry prefix takes no tag (tags keep their names)")
        if prefix:
            _check_repo(prefix, dest, "destination")
        return cls(host, prefix, suffix, dual)

    def map(self, item: Item) -> tuple[str, str, str]:
        """(host, repository, tag) the item is written to."""
        if self.host is None:
            return item.host, item.repository, item.tag + self.suffix
        repo = f"{self.prefix}/{item.repository}" if self.prefix else item.repository
        return self.host, repo, item.tag + self.suffix

    def in_place(self, item: Item) -> bool:
        return self.map(item) == (item.host, item.repository, item.tag)


# ---------------------------------------------------------------- shards


def parse_shard(text: str, where: str = "--shard") -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise UsageError(f"{where} {text!r}: expected I/N, e.g. 0/4 (shard I of N, counted from 0)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise UsageError(f"{where} {text!r}: need 0 <= I < N")
    return i, n


def shard_from_env(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """$ZCONV_SHARD (I/N), else Kubernetes' $JOB_COMPLETION_INDEX with $ZCONV_SHARDS as N."""
    env = dict(os.environ if env is None else env)
    if env.get(SHARD_ENV):
        return parse_shard(env[SHARD_ENV], f"${SHARD_ENV}")
    index = env.get(K8S_INDEX_ENV)
    if index is None or index == "":
        return None
    count = env.get(SHARD_COUNT_ENV)
    if not count:
        raise UsageError(
            f"${K8S_INDEX_ENV} is set but not the shard count: set ${SHARD_COUNT_ENV} to the Job's completions, or pass --shard I/N"
        )
    return parse_shard(f"{index}/{count}", f"${K8S_INDEX_ENV}/${SHARD_COUNT_ENV}")


def shard_of(item: Item, n: int) -> int:
    """Stable: depends on the (registry, repository, tag) alone, so adding a tag moves no other."""
    key = f"{item.host}/{item.repository}:{item.tag}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % n


# ---------------------------------------------------------------- records


@dataclass
class SyncRecord:
    source: str
    destination: str
    action: str  # converted, skipped, failed, would-convert
    source_digest: str | None = None
    destination_digest: str | None = None
    reason: str | None = None
    bytes_uploaded: int = 0
    blobs_uploaded: list[str] = field(default_factory=list)
    blobs_mounted: int = 0
    layers_converted: int = 0
    layers_reused: int = 0
    seconds: float = 0.0
    exit_code: int = 0  # of the error, for failed

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "source_digest": self.source_digest,
            "destination_digest": self.destination_digest,
            "action": self.action,
            "reason": self.reason,
            "bytes_uploaded": self.bytes_uploaded,
            "blobs_uploaded": self.blobs_uploaded,
            "blobs_mounted": self.blobs_mounted,
            "layers_converted": self.layers_converted,
            "layers_reused": self.layers_reused,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SyncSummary:
    records: list[SyncRecord] = field(default_factory=list)
    requests: int = 0  # HTTP requests to the registries (every response, 401 challenges included)
    seconds: float = 0.0
    total_items: int = 0  # before sharding
    stopped: bool = False  # a failure stopped the run (no --keep-going)
    frames: dict[str, Any] | None = None  # frame cache statistics of the run (FrameSources.stats), None with --no-cache

    def count(self, action: str) -> int:
        return sum(1 for r in self.records if r.action == action)

    @property
    def bytes_uploaded(self) -> int:
        return sum(r.bytes_uploaded for r in self.records)

    @property
    def failed(self) -> list[SyncRecord]:
        return [r for r in self.records if r.action == "failed"]


class SyncFailed(ZconvError):
    """Some images failed; the exit code is theirs when they agree, else 1."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------- run state


class RunState:
    """What the images of one run share: clients, the frame cache and layer memo, counters.

    The layer memo (converter/cache/memo.py) is what makes a layer shared by
    several tags or repositories be converted once: the first image converts
    it and records the result and the repository it went to; the others find
    it in the memo and the blob in their repository, or mount it from that
    one. Being persistent, the same memo makes a run killed midway skip, when
    started again, the layers it had already converted and uploaded. With
    --no-cache (or an unusable cache directory) the memo lives in a temporary
    directory for the run alone, so shared layers are still converted once.
    """

    def __init__(self, options: ConvertOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._clients: dict[tuple[Any, ...], RegistryClient] = {}
        self._layer_locks: dict[str, threading.Lock] = {}
        self._range_checked: set[str] = set()
        self.requests = 0
        self.frames: Any = None  # converter.cache.sources.FrameSources, or None with --no-cache
        self.memo: Any = None  # converter.cache.memo.LayerMemo
        self._memo_dir: str | None = None

    def open_cache(self) -> None:
        self.frames, self.memo = open_frame_sources(self.options)
        if self.memo is None:
            import logging
            import sqlite3

            from converter.cache.memo import LayerMemo

            try:
                self._memo_dir = tempfile.mkdtemp(prefix="zconv-sync-memo-")
                self.memo = LayerMemo(self._memo_dir)
            except (OSError, sqlite3.Error) as e:  # no writable temp dir: every image converts its layers itself
                logging.getLogger("zconv").warning(
                    "no layer memo for this run (%s): shared layers are converted again for every image", e
                )

    def client(self, host: str, options: TransportOptions) -> RegistryClient:
        key = (
            host,
            options.creds,
            options.tls_verify,
            options.cert_dir,
            options.auth_file,
            options.plain_http,
            options.retry,
            options.timeout,
        )
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                c = client_for(Reference(host, "x"), options)
                c.session.hooks["response"].append(self._count_request)
                self._clients[key] = c
            return c

    def _count_request(self, resp: Any, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.requests += 1

    def first_range_check(self, host: str) -> bool:
        with self._lock:
            if host in self._range_checked:
                return False
            self._range_checked.add(host)
            return True

    def layer_lock(self, digest: str) -> threading.Lock:
        """One lock per input layer: the memo records a layer once it is converted, so a second
        job wanting the same layer waits for the first and then finds it there."""
        with self._lock:
            return self._layer_locks.setdefault(digest, threading.Lock())

    def frame_stats(self) -> dict[str, Any] | None:
        return self.frames.stats() if self.frames is not None else None

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        if self.frames is not None:
            self.frames.close()  # prunes the cache to its bound
        if self.memo is not None:
            self.memo.close()
        if self._memo_dir is not None:
            shutil.rmtree(self._memo_dir, ignore_errors=True)
        self.frames = self.memo = self._memo_dir = None


class _SyncSink(DockerSink):
    """A DockerSink that remembers the sizes of the blobs it was handed, for bytes_uploaded."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.sizes: dict[str, int] = {}

    def put_blob_file(self, desc: Descriptor, path: str) -> None:
        self.sizes[desc.digest] = desc.size
        super().put_blob_file(desc, path)

    def put_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        self.sizes[desc.digest] = desc.size
        super().put_blob(desc, stream)

    def uploaded(self) -> list[str]:
        return sorted(d for d, how in self.results.items() if how == "uploaded")


class _SyncConverter(Converter):
    """The conversion of `zconv convert` (frame cache and layer memo included), one image of the run.

    Only adds what a run of many images at once needs: a layer two jobs want
    at the same time is converted by one while the other waits (then finds
    it in the memo), and the range check is made once per registry.
    """

    def __init__(
        self,
        state: RunState,
        src: DockerSource,
        dst: DockerSink,
        options: ConvertOptions,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(src, dst, options, progress, frames=state.frames, memo=state.memo)
        self.state = state

    def _convert_layer(self, layer: Descriptor, name: str, index: int, diff_id: str | None) -> Descriptor:
        if layer.digest in self._layers:
            return super()._convert_layer(layer, name, index, diff_id)
        with self.state.layer_lock(layer.digest):
            return super()._convert_layer(layer, name, index, diff_id)

    def _check_ranges(self) -> None:
        # Whether a registry answers Range requests does not change from one image to the
        # next: check (and warn) once per destination registry and run.
        host = self.dst.host  # type: ignore[attr-defined]
        if self.state.first_range_check(host):
            super()._check_ranges()


# ---------------------------------------------------------------- the run


def _fetch_manifest(client: RegistryClient, repo: str, ref: str) -> tuple[bytes, str] | None:
    """(bytes, media type) of the manifest `ref` names, None when the tag or repository does not exist."""
    what = f"{client.host}/{repo}:{ref}"
    resp = client.request(
        "GET",
        f"/v2/{repo}/manifests/{ref}",
        repository=repo,
        scopes=(f"repository:{repo}:pull",),
        headers={"Accept": _ACCEPT},
        stream=True,
        what=what,
    )
    with resp:
        if resp.status_code == 404:
            return None
        if resp.status_code in (401, 403):
            raise AuthError(f"{what}: access denied (HTTP {resp.status_code}); check the credentials for {client.host}")
        if resp.status_code != 200:
            raise RegistryError(f"{what}: GET manifest failed: HTTP {resp.status_code}")
        data = resp.raw.read(MAX_MANIFEST_SIZE + 1)
        if len(data) > MAX_MANIFEST_SIZE:
            raise BadInputError(f"{what}: manifest is over the {MAX_MANIFEST_SIZE}-byte limit")
        mt = resp.headers.get("Content-Type", "").split(";")[0].strip()
    return data, mt


def _doc(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _recorded_source(doc: dict[str, Any]) -> str | None:
    ann = doc.get("annotations")
    if isinstance(ann, dict):
        v = ann.get(SOURCE_DIGEST_ANNOTATION)
        return v if isinstance(v, str) else None
    return None


@dataclass
class _Plan:
    item: Item
    dest: tuple[str, str, str]
    source_digest: str | None
    destination_digest: str | None
    convert: bool
    reason: str


class Syncer:
    def __init__(
        self,
        sources: list[RepoSpec],
        destination: Destination,
        options: ConvertOptions,
        dest_options: TransportOptions,
        *,
        shard: tuple[int, int] | None = None,
        jobs: int = 1,
        keep_going: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
        on_record: Callable[[SyncRecord], None] | None = None,
    ) -> None:
        if jobs < 1:
            raise UsageError("--jobs takes a number >= 1")
        for spec in sources:
            probe = Item(spec.host, spec.repository, "latest")
            if destination.in_place(probe) and not destination.dual:
                # The converted image would replace its own source, and look like a new source next run.
                raise UsageError(
                    f"docker://{spec.host}/{spec.repository}: the destination is the source itself; "
                    "convert in place with --dual, or next to it with --suffix"
                )
            if destination.in_place(probe) and options.platform:
                # The source tag would lose its other platforms.
                raise UsageError(
                    f"docker://{spec.host}/{spec.repository}: --platform would replace a multi-platform "
                    "source tag with one platform; give a destination or use --suffix"
                )
        self.sources = sources
        self.destination = destination
        self.options = replace(options, dual=destination.dual, record_source=True)
        self.dest_options = dest_options
        self.shard = shard
        self.jobs = jobs
        self.keep_going = keep_going
        self.dry_run = dry_run
        self.progress = progress or Progress(enabled=False)
        self.on_record = on_record or (lambda r: None)
        self.state = RunState(self.options)
        self._emit_lock = threading.Lock()
        self.planned = 0  # items of this shard, known once the tags are listed

    # -- listing

    def items(self, on_failure: Callable[[SyncRecord], None] | None = None) -> tuple[list[Item], int]:
        """(the items of this shard, the number of items before sharding).

        A repository whose tags cannot be listed fails the run, or with
        `on_failure` (--keep-going) is reported there and left out.
        """
        seen: dict[Item, None] = {}
        for spec in self.sources:
            if spec.tags is not None:
                tags = list(spec.tags)
            else:
                try:
                    tags = self.state.client(spec.host, spec.options).list_tags(spec.repository)
                except ZconvError as e:
                    if on_failure is None:
                        raise
                    where = f"docker://{spec.host}/{spec.repository}"
                    on_failure(
                        SyncRecord(
                            where,
                            "",
                            "failed",
                            reason=f"listing tags: {' '.join(e.message.split())}",
                            exit_code=e.exit_code,
                        )
                    )
                    continue
            for tag in tags:
                if not spec.wants(tag):
                    continue
                if self.destination.suffix and tag.endswith(self.destination.suffix):
                    continue  # an output of an earlier run, not a source
                seen.setdefault(Item(spec.host, spec.repository, tag, spec.options), None)
        everything = list(seen)
        if self.shard is None:
            return everything, len(everything)
        i, n = self.shard
        return [it for it in everything if shard_of(it, n) == i], len(everything)

    # -- deciding

    def _dest_ref(self, dest: tuple[str, str, str]) -> str:
        return f"docker://{dest[0]}/{dest[1]}:{dest[2]}"

    def plan(self, item: Item) -> _Plan:
        dest = self.destination.map(item)
        src_client = self.state.client(item.host, item.options)
        if self.destination.in_place(item):
            # One GET: the tag holds either our dual index (skip) or the source to convert.
            got = _fetch_manifest(src_client, item.repository, item.tag)
            if got is None:
                raise RegistryError(f"{item.ref}: tag not found (removed since the tags were listed?)")
            data, _ = got
            digest = sha256_digest(data)
            doc = _doc(data)
            recorded = _recorded_source(doc)
            if recorded is not None and isinstance(doc.get("manifests"), list):
                return _Plan(item, dest, recorded, digest, False, f"already holds the dual index of {recorded}")
            return _Plan(item, dest, digest, None, True, "not converted yet")
        head = src_client.head_manifest(item.repository, item.tag)
        if head is not None:
            source_digest, media_type = head.digest, head.media_type
        else:
            got = _fetch_manifest(src_client, item.repository, item.tag)
            if got is None:
                raise RegistryError(f"{item.ref}: tag not found (removed since the tags were listed?)")
            source_digest, media_type = sha256_digest(got[0]), got[1]
        if self.options.platform and media_type not in MANIFEST_TYPES:
            # --platform: the source is the chosen instance (what the destination's annotation records).
            source_digest = self._instance(item, src_client, source_digest)
        dst_client = self.state.client(dest[0], self.dest_options)
        got = _fetch_manifest(dst_client, dest[1], dest[2])
        if got is None:
            return _Plan(item, dest, source_digest, None, True, "not converted yet")
        dest_digest = sha256_digest(got[0])
        recorded = _recorded_source(_doc(got[0]))
        if recorded == source_digest:
            return _Plan(item, dest, source_digest, dest_digest, False, f"already converted from {source_digest}")
        if recorded is None:
            return _Plan(item, dest, source_digest, dest_digest, True, "destination tag was not written by zconv sync")
        return _Plan(
            item, dest, source_digest, dest_digest, True, f"source moved (destination was converted from {recorded})"
        )

    def _instance(self, item: Item, client: RegistryClient, digest: str) -> str:
        """The digest of the manifest --platform chooses in the index `digest` (a manifest's own digest)."""
        src = DockerSource(Reference(item.host, item.repository, None, digest), client=client)
        desc = src.resolve(f"@{digest}")
        chosen, _ = choose_instance(src, desc, item.ref, self.options.platform or "")
        return chosen.digest

    # -- converting

    def _convert(self, p: _Plan, progress: Progress) -> SyncRecord:
        item = p.item
        src_client = self.state.client(item.host, item.options)
        dst_client = self.state.client(p.dest[0], self.dest_options)
        # By digest: what we convert is exactly what the annotation will name, even if the tag moves meanwhile.
        src = DockerSource(Reference(item.host, item.repository, None, p.source_digest), client=src_client)
        sink = _SyncSink(Reference(p.dest[0], p.dest[1], p.dest[2]), client=dst_client)
        if dst_client is src_client and p.dest[1] != item.repository:
            # Same registry: blobs kept as they are (configs, the originals of --dual) are
            # mounted from the source repository, never downloaded and uploaded again.
            sink.mount_sources = [item.repository]
        conv = _SyncConverter(self.state, src, sink, self.options, progress)
        try:
            with sink:
                report = conv.run()
        finally:
            src.close()
        uploaded = sink.uploaded()
        return SyncRecord(
            item.ref,
            self._dest_ref(p.dest),
            "converted",
            p.source_digest,
            report.images[0].digest,
            p.reason,
            bytes_uploaded=sum(sink.sizes.get(d, 0) for d in uploaded),
            blobs_uploaded=uploaded,
            blobs_mounted=sum(1 for how in sink.results.values() if how == "mounted"),
            layers_converted=sum(1 for r in report.layers if r.action == "converted"),
            # converted earlier (by this image, another image of the run, or an earlier run): not read again
            layers_reused=sum(1 for r in report.layers if r.action in ("reused", "present", "mounted")),
        )

    def one(self, item: Item, progress: Progress) -> SyncRecord:
        started = time.monotonic()
        dest_ref = self._dest_ref(self.destination.map(item))
        try:
            with operation():  # each image gets its own retry budget on the shared clients
                rec = self._one(item, progress, dest_ref)
        except ZconvError as e:
            rec = SyncRecord(item.ref, dest_ref, "failed", reason=" ".join(e.message.split()), exit_code=e.exit_code)
        except OSError as e:  # disk full, temp dir gone: the image failed, the run goes on with --keep-going
            rec = SyncRecord(item.ref, dest_ref, "failed", reason=f"{item.ref}: {e}", exit_code=1)
        rec.seconds = time.monotonic() - started
        return rec

    def _one(self, item: Item, progress: Progress, dest_ref: str) -> SyncRecord:
        p = self.plan(item)
        if not p.convert:
            return SyncRecord(item.ref, dest_ref, "skipped", p.source_digest, p.destination_digest, p.reason)
        if self.dry_run:
            return SyncRecord(item.ref, dest_ref, "would-convert", p.source_digest, p.destination_digest, p.reason)
        return self._convert(p, progress)

    def _emit(self, rec: SyncRecord, summary: SyncSummary) -> None:
        with self._emit_lock:
            summary.records.append(rec)
            self.on_record(rec)

    def run(self) -> SyncSummary:
        started = time.monotonic()
        summary = SyncSummary()
        try:
            items, summary.total_items = self.items((lambda rec: self._emit(rec, summary)) if self.keep_going else None)
            self.planned = len(items)
            if not self.dry_run and items:
                self.state.open_cache()
            # Layer-level progress only makes sense for one image at a time.
            per_image = self.progress if self.jobs == 1 else Progress(enabled=False)
            pending: Iterator[Item] = iter(items)
            with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="zconv-sync") as pool:
                running: set[Future[SyncRecord]] = set()
                while True:
                    while len(running) < self.jobs and not summary.stopped:
                        nxt = next(pending, None)
                        if nxt is None:
                            break
                        running.add(pool.submit(self.one, nxt, per_image))
                    if not running:
                        break
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        rec = fut.result()
                        self._emit(rec, summary)
                        if rec.action == "failed" and not self.keep_going:
                            summary.stopped = True
        finally:
            summary.requests = self.state.requests
            summary.frames = self.state.frame_stats()
            summary.seconds = time.monotonic() - started
            self.state.close()
        return summary


def raise_for_failures(summary: SyncSummary) -> None:
    failed = summary.failed
    if not failed:
        return
    codes = {r.exit_code for r in failed}
    code = codes.pop() if len(codes) == 1 else 1
    first = failed[0].reason or failed[0].source
    more = "; stopped at the first failure (--keep-going carries on)" if summary.stopped else ""
    raise SyncFailed(f"{len(failed)} of {len(summary.records)} image(s) failed{more}; first: {first}", code)
