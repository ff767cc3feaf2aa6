"""Registry transport: an OCI distribution client and the docker:// source/sink.

oras-py provides the pieces of the protocol that fit a streaming, resuming
client: parsing WWW-Authenticate challenges and encoding basic credentials
(`oras.auth.utils`), URL parameter handling (`oras.utils`) and the session
object whose cookie policy keeps registries like Harbor from treating us as
a browser (`oras.provider.Registry`). Its request layer does not fit:
`Registry.do_request` retries *every* exception (wrong passwords included)
with sleeps of 2+3^n seconds, `put_upload` reads the whole blob into memory,
a TokenAuth backend cannot talk to Basic-only registries, and there is no
cross-repository mount, no upload-status/resume and no Range support. So the
requests themselves go through `RegistryClient._send` below, on oras's
requests session.

Protocol notes that shape the code:

* An upload session's Location changes after every PATCH (distribution puts
  an HMAC'd `_state` with the offset in it); resuming means GET on the last
  Location, which answers 204 with `Range: 0-<last byte>`. If a PATCH died
  half-way the registry has bytes the state does not know about and refuses
  the session; then the blob starts over with a fresh POST.
* Tags are written last, by `DockerSink.commit()`: blobs, then manifests by
  digest, then the tag.
* Manifests are refused above 4 MiB (the limit of containers/image and of
  distribution), before any upload starts.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable

import oras.auth.utils as oras_auth_utils
import oras.provider
import oras.utils
import requests
import requests.adapters
import urllib3

from converter.errors import AuthError, BadInputError, RegistryError, UsageError
from converter.image import auth as authmod
from converter.image.model import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageSink,
    ImageSource,
    TransportOptions,
    VerifyingReader,
    check_digest,
    copy_verified,
    new_hasher,
    parse_tag_or_digest,
    sha256_digest,
    short,
)

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024  # blobs above this go up in PATCH chunks
SEND_BLOCK = 1024 * 1024  # bytes per socket write when streaming a body
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")

# ------------------------------------------------------------------ references

_DOMAIN_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?$")
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


@dataclass(frozen=True)
class Reference:
    """`HOST[:PORT]/REPO[:TAG][@DIGEST]`, as `docker://` references name images."""

    host: str  # as the user wrote it ("docker.io" for Docker Hub)
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        return "registry-1.docker.io" if self.host == "docker.io" else self.host

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


def parse_reference(text: str) -> Reference:
    """Parse `docker://HOST/REPO[:TAG|@DIGEST]` (the `docker://` prefix is optional).

    Like docker: the first component is a host when it has a '.' or ':' or is
    `localhost`; otherwise the image is on Docker Hub (`library/` added for
    one-component names).
    """
    orig = text
    for prefix in ("docker://", "//"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if not text:
        raise UsageError(f"empty registry reference {orig!r}")
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
        try:
            check_digest(digest, orig)
        except BadInputError:
            raise UsageError(f"{orig}: malformed digest {digest!r}") from None
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG_RE.match(tag):
            raise UsageError(f"{orig}: invalid tag {tag!r}")
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, repo = first, rest
        if not _DOMAIN_RE.match(host):
            raise UsageError(f"{orig}: invalid registry host {host!r}")
    else:
        host, repo = "docker.io", text
        if "/" not in repo:
            repo = f"library/{repo}"
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
    if not repo or not all(_REPO_COMPONENT_RE.match(c) for c in repo.split("/")):
        raise UsageError(f"{orig}: invalid repository name {repo!r} (lowercase letters, digits and . _ - separators)")
    if len(repo) > 255:
        raise UsageError(f"{orig}: repository name longer than 255 characters")
    return Reference(host, repo, tag, digest)


def is_local_host(host: str) -> bool:
    return _hostname(host) in _LOCAL_HOSTS


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


# -------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries, as podman's --retry/--retry-delay.

    Each request (or each blob upload, which resumes rather than restarts)
    gets `retries` retries after its first attempt, waiting `delay`, 2*delay,
    4*delay ... (capped at `max_delay`; a Retry-After header is honoured up to
    that cap). The whole client gets at most `total` retries, so a registry
    that fails every other request cannot keep us busy forever.
    """

    retries: int = 3
    delay: float = 2.0
    max_delay: float = 30.0
    total: int = 50

    def wait(self, attempt: int, retry_after: str | None = None) -> float:
        d = min(self.delay * (2**attempt), self.max_delay)
        if retry_after:
            try:
                d = min(max(d, float(retry_after)), self.max_delay)
            except ValueError:
                pass
        return d


class _Transient(Exception):
    """A failure worth retrying (dropped connection, 429, 5xx)."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# -------------------------------------------------------------------- helpers


class _Adapter(requests.adapters.HTTPAdapter):
    """Sends request bodies in 1 MiB writes instead of urllib3's 16 KiB."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
        kw.setdefault("blocksize", SEND_BLOCK)
        super().init_poolmanager(connections, maxsize, block, **kw)


class _FileSlice(io.RawIOBase):
    """`length` bytes of an open file from `offset`; requests reads it in blocks.

    `__len__` lets requests send a Content-Length instead of chunked encoding.
    """

    def __init__(self, f: BinaryIO, offset: int, length: int) -> None:
        super().__init__()
        self._f = f
        self._start = offset
        self._left = length
        self._len = length
        f.seek(offset)

    def __len__(self) -> int:
        return self._len

    def tell(self) -> int:
        # requests computes Content-Length as len() - tell(); without this it falls back to chunked encoding
        return self._len - self._left

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        if n is None or n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _error_detail(resp: requests.Response) -> str:
    """The registry's error code/message ("MANIFEST_UNKNOWN: manifest unknown"), else the HTTP reason."""
    try:
        doc = resp.json()
        errs = doc.get("errors") or []
        parts = []
        for e in errs[:3]:
            if isinstance(e, dict):
                code = e.get("code") or ""
                msg = e.get("message") or ""
                parts.append(f"{code}: {msg}" if code and msg else code or msg)
        if parts:
            return "; ".join(parts)
    except Exception:
        pass
    return f"HTTP {resp.status_code} {resp.reason or ''}".strip()


def _error_codes(resp: requests.Response) -> set[str]:
    try:
        return {str(e.get("code")) for e in resp.json().get("errors") or [] if isinstance(e, dict)}
    except Exception:
        return set()


def _range_end(resp: requests.Response) -> int | None:
    """Offset of the next byte to send, from an upload session's `Range: 0-N` header."""
    rng = resp.headers.get("Range")
    if not rng:
        return None
    m = re.match(r"^(?:bytes=)?0-(\d+)$", rng.strip())
    if not m:
        return None
    end = int(m.group(1))
    # distribution says "0-0" for an empty session too; we never leave a 1-byte session
    return 0 if end == 0 else end + 1


def _conn_error_text(e: BaseException) -> str:
    text = str(e)
    if "Connection refused" in text or "ECONNREFUSED" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "Temporary failure in name resolution" in text:
        return "host name not found"
    if isinstance(e, requests.exceptions.Timeout):
        return "timed out"
    if "RemoteDisconnected" in text or "Connection aborted" in text or "Connection reset" in text:
        return "connection dropped"
    return text.splitlines()[0][:200] if text else type(e).__name__


# ----------------------------------------------------------------- the client


@dataclass
class PushStats:
    uploaded: int = 0
    mounted: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    retries: int = 0
    resumed: int = 0


class RegistryClient:
    """One registry host: authentication, retries, blobs and manifests.

    Blob operations may run in several threads at once (push uploads blobs in
    parallel): the session pools connections, and counters, the retry budget,
    the first ping and token fetches are under a lock.
    """

    def __init__(
        self,
        host: str,
        *,
        creds: str | None = None,
        tls_verify: bool = True,
        cert_dir: str | None = None,
        plain_http: bool | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        log: Callable[[str], None] | None = None,
        auth_file: str | None = None,
    ) -> None:
        self.host = host
        self._auth_file = auth_file
        self.api_host = "registry-1.docker.io" if host == "docker.io" else host
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.stats = PushStats()
        self._log = log or (lambda msg: None)
        self._retries_left = self.retry.total
        self._lock = threading.RLock()
        self._creds_arg = authmod.parse_creds(creds) if creds else None
        self._creds_cache: dict[str, authmod.Credentials | None] = {}
        self._tls_verify = tls_verify
        self._plain_http = plain_http
        self._scheme: str | None = None  # decided by the first /v2/ ping
        self._challenge: tuple[str, dict[str, str]] | None = None  # ("basic"|"bearer", params)
        self._tokens: dict[tuple[str, ...], str] = {}
        self._bundle: str | None = None

        # oras-py's Registry sets up the session (cookie policy); we only use its session.
        self._oras = oras.provider.Registry(hostname=self.api_host, insecure=bool(plain_http), tls_verify=tls_verify)
        self.session: requests.Session = self._oras.session
        adapter = _Adapter(pool_connections=4, pool_maxsize=16)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "zconv (oras-py session)"
        self.session.trust_env = True
        self._verify: bool | str = tls_verify
        certs = self._cert_dir(cert_dir)
        if certs and tls_verify:
            self._verify = self._ca_bundle(certs)
        if certs:
            pairs = [(c, c[: -len(".cert")] + ".key") for c in sorted(glob.glob(os.path.join(certs, "*.cert")))]
            pairs = [(c, k) for c, k in pairs if os.path.exists(k)]
            if pairs:
                self.session.cert = pairs[0]
        if not tls_verify:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    # -- setup

    def _cert_dir(self, cert_dir: str | None) -> str | None:
        """--cert-dir, else the per-registry directories podman and docker use."""
        if cert_dir:
            if not os.path.isdir(cert_dir):
                raise UsageError(f"--cert-dir {cert_dir}: not a directory")
            return cert_dir
        for base in ("/etc/containers/certs.d", "/etc/docker/certs.d"):
            d = os.path.join(base, self.host)
            if os.path.isdir(d):
                return d
        return None

    def _ca_bundle(self, cert_dir: str) -> str | bool:
        """System CAs plus the directory's *.crt files, as one bundle file for requests."""
        crts = sorted(glob.glob(os.path.join(cert_dir, "*.crt")))
        if not crts:
            return True
        import certifi

        from pathlib import Path

        parts = [Path(certifi.where()).read_bytes()]
        for c in crts:
            parts.append(b"\n" + Path(c).read_bytes())
        fd, path = tempfile.mkstemp(prefix="zconv-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(parts))
        self._bundle = path
        return path

    def close(self) -> None:
        self.session.close()
        if self._bundle:
            try:
                os.unlink(self._bundle)
            except FileNotFoundError:
                pass
            self._bundle = None

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + n)

    def credentials(self, repository: str | None = None) -> authmod.Credentials | None:
        if self._creds_arg:
            return self._creds_arg
        key = repository or ""
        if key not in self._creds_cache:
            self._creds_cache[key] = authmod.lookup_credentials(self.host, repository, self._auth_file)
        return self._creds_cache[key]

    # -- low level

    def _url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        self.ping()
        return f"{self._scheme}://{self.api_host}{path}"

    def _schemes(self) -> list[str]:
        if self._plain_http:
            return ["http"]
        if self._plain_http is None and (is_local_host(self.host) or not self._tls_verify):
            # podman: --tls-verify=false also allows plain HTTP; loopback is always allowed.
            return ["https", "http"]
        return ["https"]

    def ping(self) -> None:
        """GET /v2/ once: picks https/http and learns how the registry authenticates."""
        if self._scheme is not None:
            return
        with self._lock:
            if self._scheme is None:
                self._ping()

    def _ping(self) -> None:
        schemes = self._schemes()
        last: Exception | None = None
        for scheme in schemes:
            url = f"{scheme}://{self.api_host}/v2/"
            try:
                resp = self._with_retries(lambda: self._raw("GET", url, {}, None, False), f"cannot connect to registry {self.host}")
            except requests.exceptions.SSLError as e:
                text = str(e)
                plain_server = any(s in text for s in ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure", "packet length too long", "http request"))
                if scheme == "https" and "http" in schemes and plain_server:
                    last = e
                    continue
                if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                    raise RegistryError(
                        f"registry {self.host}: TLS certificate not trusted ({text.split('certificate verify failed:')[-1].strip(' )')[:120] or 'verify failed'}); "
                        "give its CA with --cert-dir DIR or use --tls-verify=false"
                    ) from None
                raise RegistryError(f"registry {self.host}: TLS handshake failed: {_conn_error_text(e)}") from None
            except RegistryError:
                # connection-level failures would be the same over http (same port): no fallback
                raise
            if resp.status_code == 404:
                raise RegistryError(f"{self.host} is not a container registry (GET /v2/ answered 404)")
            self._scheme = scheme
            if resp.status_code == 401:
                self._challenge = self._parse_challenge(resp)
            elif resp.status_code >= 400:
                raise RegistryError(f"registry {self.host}: GET /v2/ failed: {_error_detail(resp)}")
            resp.close()
            return
        if isinstance(last, RegistryError):
            raise last
        raise RegistryError(f"cannot reach registry {self.host}: {_conn_error_text(last) if last else 'no usable scheme'}")

    @staticmethod
    def _parse_challenge(resp: requests.Response) -> tuple[str, dict[str, str]] | None:
        raw = resp.headers.get("WWW-Authenticate", "")
        scheme = raw.split(" ", 1)[0].lower()
        if scheme not in ("basic", "bearer"):
            return None
        h = oras_auth_utils.parse_auth_header(raw)
        params = {k: v for k, v in (("realm", h.realm), ("service", h.service), ("scope", h.scope)) if v}
        return scheme, params

    def _raw(self, method: str, url: str, headers: dict[str, str], body: Any, stream: bool) -> requests.Response:
        """One HTTP exchange; network failures become _Transient."""
        try:
            return self.session.request(
                method,
                url,
                headers=headers,
                data=body,
                stream=stream,
                verify=self._verify,
                timeout=(min(self.timeout, 30.0), self.timeout),
                allow_redirects=method in ("GET", "HEAD"),
            )
        except requests.exceptions.SSLError:
            raise
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            raise _Transient(_conn_error_text(e)) from None

    def _with_retries(self, fn: Callable[[], requests.Response], what: str) -> requests.Response:
        """Run `fn`, retrying network failures and 429/5xx within the budget."""
        attempt = 0
        while True:
            try:
                resp = fn()
                if resp.status_code not in _RETRY_STATUS:
                    return resp
                detail = _error_detail(resp)
                if not detail.startswith("HTTP "):
                    detail = f"HTTP {resp.status_code} ({detail})"
                retry_after = resp.headers.get("Retry-After")
                resp.close()
                err = _Transient(detail, retry_after)
            except _Transient as e:
                err = e
            self._backoff(attempt, err, what)
            attempt += 1

    def _backoff(self, attempt: int, err: _Transient, what: str) -> None:
        """Sleep before retry number `attempt`+1, or raise when the budget is spent."""
        with self._lock:
            if attempt >= self.retry.retries or self._retries_left <= 0:
                tries = attempt + 1
                raise RegistryError(f"{what}: {err} (gave up after {tries} attempt{'s' if tries > 1 else ''})")
            self._retries_left -= 1
            self.stats.retries += 1
        wait = self.retry.wait(attempt, err.retry_after)
        self._log(f"{what}: {err}; retrying in {wait:.1f}s")
        time.sleep(wait)

    def _auth_header(self, scopes: tuple[str, ...], repository: str | None, force: bool = False) -> dict[str, str]:
        if self._challenge is None:
            return {}
        scheme, params = self._challenge
        creds = self.credentials(repository)
        if scheme == "basic":
            if creds is None:
                return {}
            return {"Authorization": "Basic " + oras_auth_utils.get_basic_auth(creds.username, creds.password)}
        if not scopes and params.get("scope"):
            scopes = tuple(params["scope"].split(" "))  # what the registry's challenge asked for
        key = tuple(sorted(scopes))
        with self._lock:
            if force:
                self._tokens.pop(key, None)
            if key not in self._tokens:
                self._tokens[key] = self._fetch_token(params, scopes, creds)
            tok = self._tokens[key]
        return {"Authorization": f"Bearer {tok}"} if tok else {}

    def _fetch_token(self, params: dict[str, str], scopes: tuple[str, ...], creds: authmod.Credentials | None) -> str:
        realm = params.get("realm")
        if not realm:
            raise AuthError(f"registry {self.host}: bearer challenge without a realm")
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        for s in scopes:
            query.append(("scope", s))
        headers = {}
        if creds:
            headers["Authorization"] = "Basic " + oras_auth_utils.get_basic_auth(creds.username, creds.password)
        resp = self._with_retries(lambda: self._raw("GET", realm + ("&" if "?" in realm else "?") + "&".join(f"{k}={requests.utils.quote(v, safe='')}" for k, v in query), headers, None, False), f"token server {realm}")
        if resp.status_code in (401, 403):
            who = f"user {creds.username!r} (from {creds.source})" if creds else "anonymous access"
            raise AuthError(f"registry {self.host}: authentication failed for {who}: {_error_detail(resp)}")
        if resp.status_code != 200:
            raise AuthError(f"registry {self.host}: token server {realm} answered {_error_detail(resp)}")
        try:
            doc = resp.json()
        except ValueError:
            raise AuthError(f"registry {self.host}: token server {realm} sent no JSON") from None
        tok = doc.get("token") or doc.get("access_token")
        if not tok:
            raise AuthError(f"registry {self.host}: token server {realm} sent no token")
        return str(tok)

    def _auth_failed(self, resp: requests.Response, repository: str | None, what: str) -> AuthError:
        creds = self.credentials(repository)
        detail = _error_detail(resp)
        if creds is None:
            return AuthError(f"{what}: authentication required ({detail}); use `zconv login {self.host}` or --creds USER:PASS")
        if resp.status_code == 403:
            return AuthError(f"{what}: access denied for user {creds.username!r} (from {creds.source}): {detail}")
        return AuthError(f"{what}: authentication failed for user {creds.username!r} (from {creds.source}): {detail}")

    def request(
        self,
        method: str,
        path: str,
        *,
        repository: str | None,
        scopes: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        stream: bool = False,
        what: str = "",
        retry: bool = True,
    ) -> requests.Response:
        """A request with auth (challenge answered once) and, if `retry`, retries.

        `body` is a factory so a retried or re-authenticated request sends the
        same bytes again. With retry=False, network failures and 429/5xx raise
        _Transient for the caller's own resume logic.
        """
        url = self._url(path)
        what = what or f"{self.host}{path}"

        def once() -> requests.Response:
            h = dict(headers or {})
            h.update(self._auth_header(scopes, repository))
            resp = self._raw(method, url, h, body() if body else None, stream)
            if resp.status_code == 401:
                challenge = self._parse_challenge(resp)
                if challenge is None:
                    raise self._auth_failed(resp, repository, what)
                had_auth = "Authorization" in h
                if self._challenge is None or challenge[0] != self._challenge[0]:
                    self._challenge = challenge
                elif challenge[0] == "bearer":
                    self._challenge = challenge
                if had_auth and challenge[0] == "basic":
                    raise self._auth_failed(resp, repository, what)
                h = dict(headers or {})
                h.update(self._auth_header(scopes, repository, force=True))
                if "Authorization" not in h:
                    raise self._auth_failed(resp, repository, what)
                resp.close()
                resp = self._raw(method, url, h, body() if body else None, stream)
                if resp.status_code == 401:
                    raise self._auth_failed(resp, repository, what)
            return resp

        if not retry:
            resp = once()
            if resp.status_code in _RETRY_STATUS:
                detail, ra = _error_detail(resp), resp.headers.get("Retry-After")
                if not detail.startswith("HTTP "):
                    detail = f"HTTP {resp.status_code} ({detail})"
                resp.close()
                raise _Transient(detail, ra)
            return resp
        return self._with_retries(once, what)

    # -- auth check (login)

    def check_login(self) -> None:
        """Raise AuthError unless the registry accepts our credentials."""
        self.ping()
        if self._challenge is None:
            return  # anonymous registry: nothing to check
        scheme, params = self._challenge
        creds = self.credentials()
        if creds is None:
            raise AuthError(f"registry {self.host}: no credentials given")
        if scheme == "bearer":
            self._fetch_token(params, (), creds)
            return
        resp = self.request("GET", "/v2/", repository=None, what=f"registry {self.host}")
        if resp.status_code in (401, 403):
            raise self._auth_failed(resp, None, f"registry {self.host}")
        if resp.status_code >= 400:
            raise RegistryError(f"registry {self.host}: login check failed: {_error_detail(resp)}")

    # -- blobs

    @staticmethod
    def _pull(repo: str) -> tuple[str, ...]:
        return (f"repository:{repo}:pull",)

    @staticmethod
    def _push(repo: str, *mount_from: str) -> tuple[str, ...]:
        return (f"repository:{repo}:pull,push",) + tuple(f"repository:{m}:pull" for m in mount_from)

    def blob_size(self, repo: str, digest: str, push: bool = False) -> int | None:
        """Size of the blob if the repository has it (HEAD), else None."""
        resp = self.request(
            "HEAD", f"/v2/{repo}/blobs/{digest}", repository=repo,
            scopes=self._push(repo) if push else self._pull(repo), what=f"{self.host}/{repo}: checking for blob {short(digest)}",
        )
        resp.close()
        if resp.status_code == 200:
            try:
                return int(resp.headers.get("Content-Length", "-1"))
            except ValueError:
                return -1
        if resp.status_code == 404:
            return None
        if resp.status_code == 403:
            raise self._auth_failed(resp, repo, f"{self.host}/{repo}")
        raise RegistryError(f"{self.host}/{repo}: HEAD blob {short(digest)} failed: {_error_detail(resp)}")

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Cross-repository mount. True: mounted. Otherwise returns an upload URL to use instead (or None)."""
        path = f"/v2/{repo}/blobs/uploads/?" + f"mount={digest}&from={requests.utils.quote(from_repo, safe='/')}"
        resp = self.request(
            "POST", path, repository=repo, scopes=self._push(repo, from_repo),
            headers={"Content-Length": "0"}, what=f"{self.host}/{repo}: mount {short(digest)} from {from_repo}",
        )
        resp.close()
        if resp.status_code == 201:
            return "mounted"
        if resp.status_code == 202:
            return self._location(resp, repo)
        return None

    def _location(self, resp: requests.Response, repo: str) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{self.host}/{repo}: upload session without a Location header")
        if loc.startswith("/"):
            loc = f"{self._scheme}://{self.api_host}{loc}"
        elif not loc.startswith("http"):
            raise RegistryError(f"{self.host}/{repo}: unusable upload Location {loc!r}")
        return loc

    def _start_upload(self, repo: str) -> str:
        resp = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/", repository=repo, scopes=self._push(repo),
            headers={"Content-Length": "0"}, what=f"{self.host}/{repo}: starting a blob upload",
        )
        resp.close()
        if resp.status_code == 202:
            return self._location(resp, repo)
        if resp.status_code in (401, 403):
            raise self._auth_failed(resp, repo, f"{self.host}/{repo}")
        raise RegistryError(f"{self.host}/{repo}: cannot start a blob upload: {_error_detail(resp)}")

    def push_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        open_file: Callable[[], BinaryIO],
        *,
        mount_from: Iterable[str] = (),
        known_absent: bool = False,
    ) -> str:
        """Put a blob into `repo`; returns "skipped", "mounted" or "uploaded".

        `open_file` returns a fresh, seekable stream of the blob (it is reopened
        for retries). Small blobs go up in one PUT, large ones in PATCH chunks
        that resume after failures where the registry keeps the session.
        """
        check_digest(digest)
        what = f"{self.host}/{repo}: uploading blob {short(digest)}"
        if not known_absent and self.blob_size(repo, digest, push=True) is not None:
            self.count("skipped")
            return "skipped"
        location = None
        for src in dict.fromkeys(m for m in mount_from if m != repo):
            got = self.mount_blob(repo, digest, src)
            if got == "mounted":
                self.count("mounted")
                return "mounted"
            location = got or location
        resume_at = 0
        if location is None and size > self.chunk_size:
            found = self._earlier_session(repo, digest, size)
            if found is not None:
                resume_at, location = found
        attempt = 0
        while True:
            try:
                if location is None:
                    location = self._start_upload(repo)
                if size <= self.chunk_size:
                    self._put_monolithic(repo, location, digest, size, open_file)
                else:
                    self._put_chunked(repo, location, digest, size, open_file, start=resume_at)
                    resume_at = 0
                self.count("uploaded")
                return "uploaded"
            except _Transient as e:
                self._backoff(attempt, e, what)
                attempt += 1
                # The PUT may have landed and only its answer got lost.
                if self.blob_size(repo, digest, push=True) is not None:
                    self._forget_session(repo, digest)
                    self.count("uploaded")
                    return "uploaded"
                location = None
                resume_at = 0

    # Upload sessions of large blobs are remembered in ~/.cache/zconv/uploads, so a run
    # after a crash continues where the registry stands instead of starting over.

    def _session_path(self, repo: str, digest: str) -> str:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        key = hashlib.sha256(f"{self.api_host}/{repo}@{digest}".encode()).hexdigest()
        return os.path.join(base, "zconv", "uploads", f"{key}.json")

    def _remember_session(self, repo: str, digest: str, location: str, offset: int) -> None:
        path = self._session_path(repo, digest)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"location": location, "offset": offset}, f)
            os.replace(tmp, path)
        except OSError:
            pass  # best effort: without it a crashed upload starts over

    def _forget_session(self, repo: str, digest: str) -> None:
        try:
            os.unlink(self._session_path(repo, digest))
        except OSError:
            pass

    def _earlier_session(self, repo: str, digest: str, size: int) -> tuple[int, str] | None:
        """(offset, location) of an upload an earlier run left in the registry, if it is still usable."""
        try:
            with open(self._session_path(repo, digest)) as f:
                loc = json.load(f)["location"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.ping()
        if not isinstance(loc, str) or not loc.startswith(f"{self._scheme}://{self.api_host}/"):
            self._forget_session(repo, digest)
            return None
        status = self._upload_offset(repo, loc)
        if status is None or not 0 < status[0] < size:
            self._forget_session(repo, digest)
            return None
        self.count("resumed")
        self._log(f"{self.host}/{repo}: blob {short(digest)}: continuing an earlier run's upload at byte {status[0]}")
        return status

    def _check_done(self, resp: requests.Response, repo: str, digest: str) -> None:
        resp.close()
        if resp.status_code in (201, 204):
            got = resp.headers.get("Docker-Content-Digest")
            if got and got != digest:
                raise RegistryError(f"{self.host}/{repo}: registry stored blob as {got}, expected {digest}")
            return
        if resp.status_code in (401, 403):
            raise self._auth_failed(resp, repo, f"{self.host}/{repo}")
        codes = _error_codes(resp)
        if "DIGEST_INVALID" in codes or "SIZE_INVALID" in codes:
            raise BadInputError(f"{self.host}/{repo}: registry rejected blob {short(digest)}: {_error_detail(resp)} (source content does not match its digest)")
        raise RegistryError(f"{self.host}/{repo}: upload of blob {short(digest)} failed: {_error_detail(resp)}")

    def _put_monolithic(self, repo: str, location: str, digest: str, size: int, open_file: Callable[[], BinaryIO]) -> None:
        url = oras.utils.append_url_params(location, {"digest": digest})
        files: list[BinaryIO] = []

        def body() -> Any:
            f = open_file()
            files.append(f)
            return _FileSlice(f, 0, size)

        try:
            resp = self.request(
                "PUT", url, repository=repo, scopes=self._push(repo),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                body=body, retry=False, what=f"{self.host}/{repo}: uploading blob {short(digest)}",
            )
        finally:
            for f in files:
                f.close()
        if resp.status_code in (404, 400) and "BLOB_UPLOAD_UNKNOWN" in _error_codes(resp):
            raise _Transient("upload session expired")
        self._check_done(resp, repo, digest)
        self.count("bytes_uploaded", size)

    def _upload_offset(self, repo: str, location: str) -> tuple[int, str] | None:
        """Where the registry's upload session stands (GET upload status), None if it is gone."""
        try:
            resp = self.request("GET", location, repository=repo, scopes=self._push(repo), retry=False,
                                what=f"{self.host}/{repo}: upload status")
        except _Transient:
            return None
        resp.close()
        if resp.status_code != 204:
            return None
        end = _range_end(resp)
        if end is None:
            # "Range" absent: nothing received yet (some registries omit "0--1")
            end = 0
        return end, self._location(resp, repo) if resp.headers.get("Location") else location

    def _put_chunked(self, repo: str, location: str, digest: str, size: int, open_file: Callable[[], BinaryIO],
                     start: int = 0) -> None:
        what = f"{self.host}/{repo}: uploading blob {short(digest)}"
        offset = start
        attempt = 0
        with open_file() as f:
            while offset < size:
                n = min(self.chunk_size, size - offset)
                try:
                    resp = self.request(
                        "PATCH", location, repository=repo, scopes=self._push(repo),
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + n - 1}",
                            "Content-Length": str(n),
                        },
                        body=lambda o=offset, n=n: _FileSlice(f, o, n), retry=False, what=what,
                    )
                except _Transient as e:
                    # Resume: ask the session where it stands; restart only if it is gone.
                    self._backoff(attempt, e, what)
                    attempt += 1
                    status = self._upload_offset(repo, location)
                    if status is None:
                        self._forget_session(repo, digest)
                        raise _Transient(f"{e}; upload session lost") from None
                    offset, location = status
                    self.count("resumed")
                    self._log(f"{what}: resuming at byte {offset}")
                    continue
                resp.close()
                if resp.status_code == 416:
                    status = self._upload_offset(repo, location)
                    if status is None:
                        raise _Transient("upload session lost after a range mismatch")
                    offset, location = status
                    continue
                if resp.status_code in (404, 400) and "BLOB_UPLOAD_UNKNOWN" in _error_codes(resp):
                    raise _Transient("upload session expired")
                if resp.status_code != 202:
                    if resp.status_code in (401, 403):
                        raise self._auth_failed(resp, repo, what)
                    raise RegistryError(f"{what}: chunk upload failed: {_error_detail(resp)}")
                location = self._location(resp, repo)
                end = _range_end(resp)
                offset = end if end is not None else offset + n
                self.count("bytes_uploaded", n)
                self._remember_session(repo, digest, location, offset)
        url = oras.utils.append_url_params(location, {"digest": digest})
        resp = self.request("PUT", url, repository=repo, scopes=self._push(repo),
                            headers={"Content-Length": "0"}, retry=False, what=what)
        if resp.status_code not in (201, 204):
            self._forget_session(repo, digest)  # a refused final PUT ends the session
        self._check_done(resp, repo, digest)
        self._forget_session(repo, digest)

    def open_blob(self, repo: str, digest: str, size: int | None = None) -> "BlobStream":
        """A streaming, digest-verifying reader of the blob (resumes with Range after drops)."""
        check_digest(digest)
        return BlobStream(self, repo, digest, size)

    def get_range(self, repo: str, digest: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a blob; RegistryError if Range is not honoured."""
        if length == 0:
            return b""
        resp = self.request(
            "GET", f"/v2/{repo}/blobs/{digest}", repository=repo, scopes=self._pull(repo),
            headers={"Range": f"bytes={offset}-{offset + length - 1}", "Accept-Encoding": "identity"},
            stream=True, what=f"{self.host}/{repo}@{short(digest)}",
        )
        with resp:
            if resp.status_code == 206:
                data = resp.raw.read(length + 1)
                if len(data) != length:
                    raise RegistryError(f"{self.host}/{repo}@{short(digest)}: range request returned {len(data)} bytes, expected {length}")
                return data
            if resp.status_code == 200:
                # No Range support: skip to the offset (slow but correct).
                skip = offset
                while skip:
                    got = resp.raw.read(min(skip, 1 << 20))
                    if not got:
                        break
                    skip -= len(got)
                data = resp.raw.read(length)
                if len(data) != length:
                    raise RegistryError(f"{self.host}/{repo}@{short(digest)}: blob shorter than requested range")
                return data
            self._raise_for_blob(resp, repo, digest)
        raise AssertionError("unreachable")

    def _raise_for_blob(self, resp: requests.Response, repo: str, digest: str) -> None:
        if resp.status_code in (401, 403):
            raise self._auth_failed(resp, repo, f"{self.host}/{repo}")
        if resp.status_code == 404:
            codes = _error_codes(resp)
            if "NAME_UNKNOWN" in codes:
                raise RegistryError(f"{self.host}/{repo}: repository not found")
            raise RegistryError(f"{self.host}/{repo}: blob {digest} not found")
        raise RegistryError(f"{self.host}/{repo}: GET blob {short(digest)} failed: {_error_detail(resp)}")

    def check_range_requests(
        self, repo: str, digest: str, size: int, read_local: Callable[[int, int], bytes] | None = None
    ) -> "RangeCheck":
        """Does the registry answer HTTP Range requests correctly for this blob?

        Partial pulls of zstd:chunked layers (containers/storage) ask for many
        ranges at once; a registry that ignores them makes clients fall back
        to a full download. Checks one single range and one multi-range
        request; with `read_local` the returned bytes are compared too.
        """
        what = f"{self.host}/{repo}@{short(digest)}"
        if size < 2:
            return RangeCheck(True, f"{what}: blob too small to check")
        a = size // 3
        b = min(size - 1, a + 4095)
        problems: list[str] = []
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", repository=repo, scopes=self._pull(repo),
                            headers={"Range": f"bytes={a}-{b}", "Accept-Encoding": "identity"}, stream=True, what=what)
        with resp:
            if resp.status_code == 200:
                return RangeCheck(False, f"{what}: registry ignores HTTP Range requests (answered 200 with the whole blob); partial pulls will download whole layers")
            if resp.status_code != 206:
                self._raise_for_blob(resp, repo, digest)
            data = resp.raw.read(b - a + 2)
            cr = resp.headers.get("Content-Range", "")
            if cr.replace(" ", "") not in (f"bytes{a}-{b}/{size}", f"bytes={a}-{b}/{size}"):
                problems.append(f"Content-Range {cr!r} for bytes {a}-{b}")
            if len(data) != b - a + 1:
                problems.append(f"got {len(data)} bytes for a {b - a + 1}-byte range")
            elif read_local is not None and data != read_local(a, b - a + 1):
                problems.append(f"bytes {a}-{b} differ from the blob's content")
        # multi-range, as containers/storage sends for chunked pulls
        c = max(0, size - 100)
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", repository=repo, scopes=self._pull(repo),
                            headers={"Range": f"bytes=0-9,{c}-{size - 1}", "Accept-Encoding": "identity"}, stream=True, what=what)
        with resp:
            body = resp.raw.read(1 << 20)
            ctype = resp.headers.get("Content-Type", "")
            if resp.status_code == 200:
                problems.append("multi-range requests answered with the whole blob")
            elif resp.status_code != 206:
                problems.append(f"multi-range request answered HTTP {resp.status_code}")
            elif read_local is not None:
                want = [read_local(0, min(10, size)), read_local(c, size - c)]
                if "multipart/byteranges" in ctype:
                    if not all(w in body for w in want):
                        problems.append("multi-range response does not hold the requested bytes")
                elif body not in (read_local(0, size - c + 10 if c <= 10 else 0), ):
                    # a server may coalesce overlapping ranges into one part
                    if not (c <= 10 and body == read_local(0, size)):
                        problems.append(f"multi-range response is not multipart ({ctype or 'no Content-Type'})")
        if problems:
            return RangeCheck(False, f"{what}: registry answers HTTP Range requests incorrectly: {'; '.join(problems)}; partial pulls will fall back to full downloads")
        return RangeCheck(True, f"{what}: HTTP Range requests answered correctly")

    # -- manifests

    def get_manifest(self, repo: str, ref: str, accept: str = MANIFEST_ACCEPT) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest `ref` (tag or digest) names."""
        what = f"{self.host}/{repo}:{ref}" if not ref.startswith("sha") else f"{self.host}/{repo}@{ref}"
        resp = self.request("GET", f"/v2/{repo}/manifests/{ref}", repository=repo, scopes=self._pull(repo),
                            headers={"Accept": accept}, stream=True, what=what)
        with resp:
            if resp.status_code == 404:
                codes = _error_codes(resp)
                if "NAME_UNKNOWN" in codes:
                    raise RegistryError(f"{what}: repository {repo} not found on {self.host}")
                raise RegistryError(f"{what}: manifest unknown (no such tag or digest in the repository)")
            if resp.status_code in (401, 403):
                raise self._auth_failed(resp, repo, what)
            if resp.status_code != 200:
                raise RegistryError(f"{what}: GET manifest failed: {_error_detail(resp)}")
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_SIZE:
                raise BadInputError(f"{what}: manifest is {declared} bytes, over the {MAX_MANIFEST_SIZE}-byte limit")
            data = resp.raw.read(MAX_MANIFEST_SIZE + 1)
            if len(data) > MAX_MANIFEST_SIZE:
                raise BadInputError(f"{what}: manifest is over the {MAX_MANIFEST_SIZE}-byte limit")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if ref.startswith("sha256:") or ref.startswith("sha512:"):
            h = new_hasher(ref)
            h.update(data)
            if f"{ref.split(':')[0]}:{h.hexdigest()}" != ref:
                raise BadInputError(f"{what}: manifest content does not match its digest")
            digest = ref
        else:
            digest = sha256_digest(data)
        return data, media_type, digest

    def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        resp = self.request("HEAD", f"/v2/{repo}/manifests/{ref}", repository=repo, scopes=self._pull(repo),
                            headers={"Accept": MANIFEST_ACCEPT}, what=f"{self.host}/{repo}:{ref}")
        resp.close()
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        size = resp.headers.get("Content-Length")
        mt = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest or not size or not size.isdigit():
            return None
        return Descriptor(media_type=mt, digest=digest, size=int(size))

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        what = (f"{self.host}/{repo}:{ref}: writing the tag" if not ref.startswith("sha")
                else f"{self.host}/{repo}@{short(ref)}: pushing manifest")
        if len(data) > MAX_MANIFEST_SIZE:
            raise BadInputError(f"{what}: manifest is {len(data)} bytes, over the {MAX_MANIFEST_SIZE}-byte limit registries accept")
        resp = self.request("PUT", f"/v2/{repo}/manifests/{ref}", repository=repo, scopes=self._push(repo),
                            headers={"Content-Type": media_type}, body=lambda: data, what=what)
        resp.close()
        if resp.status_code in (200, 201, 202):
            digest = sha256_digest(data)
            got = resp.headers.get("Docker-Content-Digest")
            if got and got != digest:
                raise RegistryError(f"{what}: registry stored the manifest as {got}, expected {digest}")
            return digest
        if resp.status_code in (401, 403):
            raise self._auth_failed(resp, repo, what)
        if resp.status_code == 413:
            raise BadInputError(f"{what}: registry refused the manifest as too large ({len(data)} bytes)")
        codes = _error_codes(resp)
        if "MANIFEST_BLOB_UNKNOWN" in codes or "BLOB_UNKNOWN" in codes:
            raise RegistryError(f"{what}: registry says blobs the manifest references are missing: {_error_detail(resp)}")
        raise RegistryError(f"{what}: PUT manifest failed: {_error_detail(resp)}")

    def list_tags(self, repo: str) -> list[str]:
        tags: list[str] = []
        path = f"/v2/{repo}/tags/list"
        for _ in range(10000):
            resp = self.request("GET", path, repository=repo, scopes=self._pull(repo), what=f"{self.host}/{repo}")
            with resp:
                if resp.status_code == 404:
                    raise RegistryError(f"{self.host}/{repo}: repository not found")
                if resp.status_code in (401, 403):
                    raise self._auth_failed(resp, repo, f"{self.host}/{repo}")
                if resp.status_code != 200:
                    raise RegistryError(f"{self.host}/{repo}: listing tags failed: {_error_detail(resp)}")
                tags.extend(resp.json().get("tags") or [])
                nxt = resp.links.get("next", {}).get("url")
            if not nxt:
                break
            path = nxt if nxt.startswith("http") else nxt
        return sorted(set(tags))


@dataclass(frozen=True)
class RangeCheck:
    ok: bool
    message: str


class BlobStream(io.RawIOBase):
    """GET of a blob, read incrementally; verifies size and digest at the end.

    A connection dropped mid-blob is resumed with `Range: bytes=N-` (within
    the retry budget) when the registry honours it.
    """

    def __init__(self, client: RegistryClient, repo: str, digest: str, size: int | None) -> None:
        super().__init__()
        self._c = client
        self._repo = repo
        self._digest = digest
        self._size = size
        self._hash = new_hasher(digest)
        self._pos = 0
        self._what = f"{client.host}/{repo}@{short(digest)}"
        self._resp: requests.Response | None = None
        self._attempt = 0
        self._done = False
        # The GET is sent on the first read: a caller that ends up not reading (a blob
        # mounted instead) costs no download.

    def _open(self, offset: int) -> None:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self._c.request("GET", f"/v2/{self._repo}/blobs/{self._digest}", repository=self._repo,
                               scopes=RegistryClient._pull(self._repo), headers=headers, stream=True, what=self._what)
        if offset and resp.status_code == 206:
            cr = resp.headers.get("Content-Range", "")
            m = re.match(r"bytes[ =](\d+)-", cr)
            if not m or int(m.group(1)) != offset:
                resp.close()
                raise RegistryError(f"{self._what}: resumed download started at the wrong offset ({cr!r})")
        elif resp.status_code != 200 or offset:
            try:
                if offset and resp.status_code == 200:
                    raise RegistryError(f"{self._what}: connection dropped at byte {offset} and the registry does not resume (no Range support)")
                self._c._raise_for_blob(resp, self._repo, self._digest)
            finally:
                resp.close()
        if self._size is None and not offset:
            cl = resp.headers.get("Content-Length")
            if cl and cl.isdigit():
                self._size = int(cl)
        self._resp = resp

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._done:
            return 0
        if self._resp is None:
            self._open(0)
        want = len(b)
        if self._size is not None:
            want = min(want, self._size - self._pos + 1)  # +1: notice extra bytes
        while True:
            try:
                data = self._resp.raw.read(max(1, want))  # type: ignore[union-attr]
                break
            except (urllib3.exceptions.HTTPError, OSError, requests.exceptions.RequestException) as e:
                self._resp.close()  # type: ignore[union-attr]
                self._c._backoff(self._attempt, _Transient(f"download dropped at byte {self._pos}: {_conn_error_text(e)}"), self._what)
                self._attempt += 1
                self._open(self._pos)
        if not data:
            if self._size is not None and self._pos < self._size:
                # connection closed early without an exception
                self._resp.close()  # type: ignore[union-attr]
                self._c._backoff(self._attempt, _Transient(f"download ended at byte {self._pos} of {self._size}"), self._what)
                self._attempt += 1
                self._open(self._pos)
                return self.readinto(b)
            self._finish()
            return 0
        n = len(data)
        self._pos += n
        if self._size is not None and self._pos > self._size:
            raise BadInputError(f"{self._what}: registry sent more than the {self._size} bytes the descriptor declares")
        self._hash.update(data)
        b[:n] = data
        return n

    def _finish(self) -> None:
        self._done = True
        got = f"{self._digest.split(':')[0]}:{self._hash.hexdigest()}"
        if got != self._digest:
            raise BadInputError(f"{self._what}: downloaded content has digest {got}, not the one requested")

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        super().close()


# ----------------------------------------------------------- docker:// transport


def client_for(ref: Reference, options: TransportOptions | None, *, retry: RetryPolicy | None = None,
               timeout: float | None = None, log: Callable[[str], None] | None = None) -> RegistryClient:
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
    return RegistryClient(ref.host, creds=o.creds, tls_verify=o.tls_verify, cert_dir=o.cert_dir,
                          plain_http=o.plain_http, log=log, auth_file=o.auth_file, **extra)


class DockerSource(ImageSource):
    """Images in a registry repository (`docker://HOST/REPO[:TAG|@DIGEST]`)."""

    def __init__(self, reference: "str | Reference", options: TransportOptions | None = None, *,
                 client: RegistryClient | None = None) -> None:
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
            import json as _json
            try:
                mt = _json.loads(data).get("mediaType") or mt
            except ValueError:
                pass
        self._cache = getattr(self, "_cache", {})
        self._cache[got] = data
        return Descriptor(media_type=mt, digest=got, size=len(data))

    def get_manifest(self, desc: Descriptor) -> bytes:
        cache = getattr(self, "_cache", {})
        data = cache.get(desc.digest)
        if data is None:
            data, _, _ = self.client.get_manifest(self.repository, desc.digest)
        if len(data) != desc.size:
            raise BadInputError(f"{self.description}: manifest {short(desc.digest)} is {len(data)} bytes, descriptor says {desc.size}")
        return data

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        stream = self.client.open_blob(self.repository, desc.digest, desc.size)
        return VerifyingReader(stream, desc.digest, desc.size, f"{self.description} blob {short(desc.digest)}")  # type: ignore[arg-type]

    def read_blob_range(self, desc: Descriptor, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > desc.size:
            raise BadInputError(f"{self.description}: range {offset}+{length} outside blob {short(desc.digest)} of {desc.size} bytes")
        return self.client.get_range(self.repository, desc.digest, offset, length)

    def check_ranges(self, desc: Descriptor, read_local: Callable[[int, int], bytes] | None = None) -> "RangeCheck":
        """Does the registry answer Range requests correctly for this blob? (for convert/inspect warnings)"""
        return self.client.check_range_requests(self.repository, desc.digest, desc.size, read_local)

    def close(self) -> None:
        if self._own_client:
            self.client.close()


class DockerSink(ImageSink):
    """Writes to a registry repository. Tags are PUT only by commit(), after every blob and manifest."""

    def __init__(self, reference: "str | Reference", options: TransportOptions | None = None, *,
                 client: RegistryClient | None = None, log: Callable[[str], None] | None = None) -> None:
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

    def check_ranges(self, desc: Descriptor, read_local: Callable[[int, int], bytes] | None = None) -> "RangeCheck":
        """After put_blob*: does the registry serve Range requests of this blob correctly?

        `RangeCheck.ok` False comes with a message fit for a warning: partial
        pulls of zstd:chunked layers from this registry fall back to full downloads.
        """
        return self.client.check_range_requests(self.repository, desc.digest, desc.size, read_local)

    def try_mount(self, desc: Descriptor) -> bool:
        """Mount the blob from one of `mount_sources` (same registry); True when it worked.

        Callers copying from a registry should try this before opening the
        source blob, so no byte is downloaded for a blob the registry can link.
        """
        for src in self.mount_sources:
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
        how = self.client.push_blob(self.repository, desc.digest, desc.size, lambda: open(path, "rb"),
                                    mount_from=self.mount_sources)
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
            how = self.client.push_blob(self.repository, desc.digest, desc.size, lambda: open(tmp, "rb"), known_absent=True)
            self._record(desc, how)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def put_manifest(self, desc: Descriptor, data: bytes) -> None:
        if len(data) > MAX_MANIFEST_SIZE:
            raise BadInputError(f"{self.description}: manifest {short(desc.digest)} is {len(data)} bytes, over the {MAX_MANIFEST_SIZE}-byte limit registries accept")
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
                raise RegistryError(f"{self.description}: tag {tag} points at manifest {short(desc.digest)} that was not pushed")
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


def _from_image_ref(ref: Any) -> Reference:
    """converter.image.refs.ImageRef (or a string) -> Reference."""
    if isinstance(ref, str):
        return parse_reference(ref)
    if isinstance(ref, Reference):
        return ref
    return Reference(ref.host, ref.repository, ref.tag, ref.digest)


def open_source(ref: Any, options: TransportOptions | None = None) -> DockerSource:
    """Entry point used by converter.image.refs for docker:// sources."""
    return DockerSource(_from_image_ref(ref), options)


def open_sink(ref: Any, options: TransportOptions | None = None, *, log: Callable[[str], None] | None = None) -> DockerSink:
    """Entry point used by converter.image.refs for docker:// destinations."""
    return DockerSink(_from_image_ref(ref), options, log=log)
