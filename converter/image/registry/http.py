"""The HTTP layer: session, TLS, scheme choice, retries, deadlines, redirects.

Every request to a registry (and to its token server, upload Locations and
blob redirects) goes through `Transport.send`, which is the one place that

* decides where credentials may go: an `Authorization` header is sent only
  to the origin (scheme, host, port) it was made for -- the registry's own,
  or the token realm's; redirects and URLs the registry hands out (upload
  Locations, `Link` pages, CDN redirects) to other origins get none;
* follows redirects itself (GET/HEAD only, at most 10, no loops, http(s) only);
* holds one deadline per request: connect, headers and body together must
  make progress (64 KiB) within `timeout` seconds or the connection is cut
  (a server that drips one byte every few seconds cannot hold us);
* turns every exception from requests/urllib3/ssl/socket into `Transient`
  (retryable) or `RegistryError`, with the URL and what happened.

oras-py provides the session object (its cookie policy keeps registries like
Harbor from treating us as a browser); its request layer does not fit (it
retries every exception with long sleeps and reads blobs into memory).
"""

from __future__ import annotations

import functools
import glob
import io
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable
from urllib.parse import urljoin, urlsplit

import oras.provider
import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.poolmanager

from converter.errors import RegistryError, UsageError, ZconvError
from converter.image.registry.errors import RETRY_STATUS, Transient, conn_error_text, error_detail, transient_for

SEND_BLOCK = 1024 * 1024  # bytes per socket write when streaming a body
MAX_REDIRECTS = 10
#: Bytes a request must move (either way) within `timeout` seconds to keep its deadline.
PROGRESS_BYTES = 64 * 1024
#: Answers read whole (everything but blob and manifest streams) are bounded.
MAX_ANSWER = 16 * 1024 * 1024
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def hostname(host: str) -> str:
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def is_local_host(host: str) -> bool:
    return hostname(host) in _LOCAL_HOSTS


def resolve_url(base: str, ref: str, what: str) -> str:
    """`ref` (a Location, realm or Link) made absolute against `base`; RegistryError when it is no URL at all."""
    try:
        url = urljoin(base, ref.strip())
        urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise RegistryError(f"{what}: unusable URL {_shown(ref)!r} ({e})") from None
    return url


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, default ports filled in."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        return ("", url, 0)
    scheme = u.scheme.lower()
    return scheme, (u.hostname or "").lower(), port or (443 if scheme == "https" else 80)


# -------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries, as podman's --retry/--retry-delay.

    Each request (or each blob upload, which resumes rather than restarts)
    gets `retries` retries after its first attempt, waiting `delay`, 2*delay,
    4*delay ... (capped at `max_delay`; a Retry-After header is honoured up to
    that cap). One operation (a push, one image of a sync; see `operation()`)
    gets at most `total` retries, so a registry that fails every other request
    cannot keep us busy forever; outside an operation the budget is the client's.
    """

    retries: int = 3
    delay: float = 2.0
    max_delay: float = 30.0
    total: int = 50

    @classmethod
    def from_flags(cls, times: int | None, delay: float | None) -> RetryPolicy:
        """--retry-times / --retry-delay (skopeo's and podman's flags) over the defaults.

        As in containers/common, an explicit delay is the same before every
        retry (no doubling; a Retry-After is honoured up to it); without one
        the default backoff stays. The per-operation budget grows to at least
        `times`, so an explicit large --retry-times is not cut short by it.
        """
        base = cls()
        retries = base.retries if times is None else times
        if delay is None:
            return cls(retries=retries, total=max(base.total, retries))
        return cls(retries=retries, delay=delay, max_delay=delay, total=max(base.total, retries))

    def wait(self, attempt: int, retry_after: str | None = None) -> float:
        d = min(self.delay * (2**attempt), self.max_delay)
        if retry_after:
            try:
                d = min(max(d, float(retry_after)), self.max_delay)
            except ValueError:
                pass
        return d


class operation:
    """`with operation():` gives the requests this thread makes (on any Transport) a retry budget of their own.

    `zconv sync` shares one client per registry across all the images of a
    run; each image is one operation, so a flaky stretch early in a long run
    does not leave the later images without retries. Threads other than the
    one that entered (push's parallel blob uploads) use their client's budget.
    """

    def __enter__(self) -> operation:
        self._saved = getattr(_current, "budgets", None)
        _current.budgets = {}
        return self

    def __exit__(self, *exc: Any) -> None:
        _current.budgets = self._saved


@dataclass
class PushStats:
    uploaded: int = 0
    mounted: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    retries: int = 0
    resumed: int = 0


# ------------------------------------------------------------------ deadlines


class Deadline:
    """One request's deadline; moved on whenever PROGRESS_BYTES more bytes went through."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.at = time.monotonic() + timeout
        self.conn: Any = None  # the urllib3 connection carrying the request
        self.response: requests.Response | None = None
        self.sent = 0  # request body bytes handed to the socket
        self._mark = 0
        self.expired = False
        self.done = False

    def moved(self) -> int:
        got = 0
        resp = self.response
        if resp is not None:
            try:
                got = resp.raw.tell()
            except Exception:  # noqa: BLE001 - a response being torn down has moved nothing more
                got = 0
        return self.sent + got

    def finished(self) -> bool:
        if self.done:
            return True
        resp = self.response
        if resp is None:
            return False
        raw = resp.raw
        return bool(getattr(raw, "closed", False) or getattr(raw, "_fp", 1) is None)

    def cut(self) -> None:
        """Shut the connection's socket down, so a read blocked on it returns at once."""
        self.expired = True
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class _Watchdog:
    """One thread per transport checks its requests' deadlines four times a second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: list[Deadline] = []
        self._thread: threading.Thread | None = None
        self._stop = False

    def add(self, d: Deadline) -> None:
        with self._lock:
            self._active.append(d)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zconv-deadlines", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                keep = []
                for d in self._active:
                    if d.finished():
                        continue
                    moved = d.moved()
                    if moved - d._mark >= PROGRESS_BYTES:
                        d._mark = moved
                        d.at = now + d.timeout
                    if now >= d.at:
                        d.cut()
                        continue
                    keep.append(d)
                self._active = keep

    def stop(self) -> None:
        self._stop = True


_current = threading.local()  # the Deadline of the request this thread is sending; budgets of operation()


class _TrackedHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *a: Any, **kw: Any) -> Any:
        d = getattr(_current, "deadline", None)
        if d is not None:
            d.conn = self
        return super().request(*a, **kw)


class _TrackedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *a: Any, **kw: Any) -> Any:
        d = getattr(_current, "deadline", None)
        if d is not None:
            d.conn = self
        return super().request(*a, **kw)


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    """Sends request bodies in 1 MiB writes instead of urllib3's 16 KiB; lets deadlines find the socket."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
        kw.setdefault("blocksize", SEND_BLOCK)
        super().init_poolmanager(connections, maxsize, block, **kw)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Proxies from the environment (HTTP(S)_PROXY) get a manager of their own: its
        # connections must be ours too, or no deadline could reach their sockets.
        proxy_kwargs.setdefault("blocksize", SEND_BLOCK)
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.poolmanager.ProxyManager):  # not SOCKS: its own connection classes
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager


class FileSlice(io.RawIOBase):
    """`length` bytes of an open file from `offset`; requests reads it in blocks.

    `__len__` lets requests send a Content-Length instead of chunked encoding.
    With `check`, every block read is passed to it (push verifies digests that way).
    """

    def __init__(self, f: BinaryIO, offset: int, length: int, check: Callable[[bytes], None] | None = None) -> None:
        super().__init__()
        self._f = f
        self._left = length
        self._len = length
        self._check = check
        f.seek(offset)

    def __len__(self) -> int:
        return self._len

    def tell(self) -> int:
        # requests computes Content-Length as len() - tell(); without this it falls back to chunked encoding
        return self._len - self._left

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        if n is None or n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n)
        self._left -= len(data)
        d = getattr(_current, "deadline", None)
        if d is not None:
            d.sent += len(data)
        if self._check is not None:
            self._check(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


# ------------------------------------------------------------------ transport


class Transport:
    """HTTP to one registry host: TLS setup, scheme choice, one retry loop, the request policy."""

    def __init__(
        self,
        host: str,
        api_host: str,
        *,
        tls_verify: bool = True,
        cert_dir: str | None = None,
        plain_http: bool | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.api_host = api_host
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.stats = PushStats()
        self.log = log or (lambda msg: None)
        self.tls_verify = tls_verify
        self.plain_http = plain_http
        self.scheme: str | None = None  # decided by the first /v2/ ping
        self.ping_challenge: str | None = None  # WWW-Authenticate of the ping's 401
        self._retries_left = self.retry.total
        self._lock = threading.Lock()  # retry budget and counters
        self._ping_lock = threading.Lock()
        self._bundle: str | None = None
        self._watchdog = _Watchdog()

        # oras-py's Registry sets up the session (cookie policy); we only use its session.
        self._oras = oras.provider.Registry(hostname=api_host, insecure=bool(plain_http), tls_verify=tls_verify)
        self.session: requests.Session = self._oras.session
        adapter = _Adapter(pool_connections=4, pool_maxsize=16)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "zconv (oras-py session)"
        self.session.trust_env = True
        # Redirects are followed by send(), under its policy; requests must not even parse them
        # (with allow_redirects=False it still prepares the next request from the Location).
        self.session.get_redirect_target = lambda resp: None
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
        from pathlib import Path

        import certifi

        parts = [Path(certifi.where()).read_bytes()]
        for c in crts:
            parts.append(b"\n" + Path(c).read_bytes())
        fd, path = tempfile.mkstemp(prefix="zconv-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(parts))
        self._bundle = path
        return path

    def close(self) -> None:
        self._watchdog.stop()
        self.session.close()
        if self._bundle:
            try:
                os.unlink(self._bundle)
            except FileNotFoundError:
                pass
            self._bundle = None

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + n)

    # -- scheme and ping

    @property
    def base_url(self) -> str:
        self.ping()
        return f"{self.scheme}://{self.api_host}"

    def url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        return self.base_url + path

    def schemes(self) -> list[str]:
        if self.plain_http:
            return ["http"]
        if self.plain_http is None and (is_local_host(self.host) or not self.tls_verify):
            # podman: --tls-verify=false also allows plain HTTP; loopback is always allowed.
            return ["https", "http"]
        return ["https"]

    def ping(self) -> None:
        """GET /v2/ once: picks https/http and learns how the registry authenticates."""
        if self.scheme is not None:
            return
        with self._ping_lock:
            if self.scheme is None:
                self._ping()

    def _ping(self) -> None:
        schemes = self.schemes()
        last: Exception | None = None
        for scheme in schemes:
            url = f"{scheme}://{self.api_host}/v2/"
            try:
                resp = self.with_retries(
                    functools.partial(self.send, "GET", url, {}, None, False, auth_origin=None, ssl_errors=True),
                    f"cannot connect to registry {self.host}",
                )
            except requests.exceptions.SSLError as e:
                text = str(e)
                plain_server = any(
                    s in text
                    for s in (
                        "WRONG_VERSION_NUMBER",
                        "wrong version number",
                        "record layer failure",
                        "packet length too long",
                        "http request",
                    )
                )
                if scheme == "https" and "http" in schemes and plain_server:
                    last = e
                    continue
                if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                    raise RegistryError(
                        f"registry {self.host}: TLS certificate not trusted ({text.split('certificate verify failed:')[-1].strip(' )')[:120] or 'verify failed'}); "
                        "give its CA with --cert-dir DIR or use --tls-verify=false"
                    ) from None
                raise RegistryError(f"registry {self.host}: TLS handshake failed: {conn_error_text(e)}") from None
            if resp.status_code == 404:
                raise RegistryError(f"{self.host} is not a container registry (GET /v2/ answered 404)")
            if resp.status_code == 401:
                self.ping_challenge = resp.headers.get("WWW-Authenticate", "")
            elif resp.status_code >= 400:
                raise RegistryError(f"registry {self.host}: GET /v2/ failed: {error_detail(resp)}")
            resp.close()
            self.scheme = scheme
            return
        raise RegistryError(
            f"cannot reach registry {self.host}: {conn_error_text(last) if last else 'no usable scheme'}"
        )

    def registry_origin(self) -> tuple[str, str, int]:
        return origin(self.base_url)

    # -- one exchange

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any,
        stream: bool,
        *,
        auth_origin: tuple[str, str, int] | None | str = "registry",
        ssl_errors: bool = False,
    ) -> requests.Response:
        """One HTTP exchange (redirects of GET/HEAD followed); network failures become Transient.

        `Authorization` in `headers` goes only to `auth_origin` ("registry":
        the registry's own scheme+host+port); any other URL gets the request
        without it. With `ssl_errors` (the ping) TLS errors are raised as
        requests.exceptions.SSLError for the caller to interpret; otherwise they
        are a RegistryError naming the URL.
        """
        if auth_origin == "registry":
            auth_origin = self.registry_origin() if self.scheme else origin(url)
        seen: list[str] = []
        while True:
            scheme = origin(url)[0]
            if scheme not in ("http", "https"):
                raise RegistryError(f"registry {self.host}: refusing to follow {_shown(url)} (not an http(s) URL)")
            h = dict(headers)
            if "Authorization" in h and origin(url) != auth_origin:
                del h["Authorization"]
            try:
                resp = self._exchange(method, url, h, body, stream)
            except requests.exceptions.SSLError as e:
                if ssl_errors:
                    raise
                raise RegistryError(f"{method} {_shown(url)}: TLS error: {conn_error_text(e)}") from None
            if resp.status_code not in (301, 302, 303, 307, 308) or method not in ("GET", "HEAD"):
                return resp
            loc = resp.headers.get("Location")
            resp.close()
            if not loc:
                raise RegistryError(f"{_shown(url)}: redirect (HTTP {resp.status_code}) without a Location")
            seen.append(url)
            url = resolve_url(url, loc, f"{_shown(seen[0])}: redirect")
            if url in seen:
                raise RegistryError(f"{_shown(seen[0])}: redirect loop (back to {_shown(url)})")
            if len(seen) > MAX_REDIRECTS:
                raise RegistryError(f"{_shown(seen[0])}: more than {MAX_REDIRECTS} redirects (last to {_shown(url)})")

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: Any, stream: bool) -> requests.Response:
        d = Deadline(self.timeout)
        self._watchdog.add(d)
        _current.deadline = d
        try:
            resp = self.session.request(
                method,
                url,
                headers=headers,
                data=body,
                stream=True,
                verify=self._verify,
                timeout=(min(self.timeout, 30.0), self.timeout),
                allow_redirects=False,
            )
            d.response = resp
            resp._zconv_deadline = d  # type: ignore[attr-defined]
            if not stream and method != "HEAD":
                data = resp.raw.read(MAX_ANSWER + 1, decode_content=True)
                if d.expired:
                    resp.close()
                    raise Transient(f"no complete answer within {self.timeout:g}s (timed out)")
                if len(data) > MAX_ANSWER:
                    resp.close()
                    raise RegistryError(f"{_shown(url)}: answer over {MAX_ANSWER} bytes")
                resp._content = data  # requests keeps the read body in this private field
                resp._content_consumed = True
                resp.close()
                d.done = True
            return resp
        except requests.exceptions.SSLError:
            d.done = True
            if d.expired:
                raise Transient(f"no answer within {self.timeout:g}s (timed out)") from None
            raise
        except ZconvError:
            d.done = True
            raise
        except Exception as e:  # noqa: BLE001 - every failure of the HTTP stack becomes one of ours
            d.done = True
            if d.expired:
                raise Transient(f"no complete answer within {self.timeout:g}s (timed out)") from None
            if isinstance(
                e,
                (
                    requests.exceptions.ConnectionError,
                    requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError,
                    OSError,
                ),
            ):
                raise Transient(conn_error_text(e)) from None
            raise RegistryError(f"{method} {_shown(url)}: {type(e).__name__}: {conn_error_text(e)}") from None
        finally:
            _current.deadline = None

    # -- the retry loop

    def with_retries(self, fn: Callable[[], requests.Response], what: str) -> requests.Response:
        """Run `fn`, retrying network failures and 429/5xx within the budget."""
        attempt = 0
        while True:
            try:
                resp = fn()
                if resp.status_code not in RETRY_STATUS:
                    return resp
                err = transient_for(resp)
            except Transient as e:
                err = e
            self.backoff(attempt, err, what)
            attempt += 1

    def backoff(self, attempt: int, err: Transient, what: str) -> None:
        """Sleep before retry number `attempt`+1, or raise when the budget is spent."""
        budgets = getattr(_current, "budgets", None)  # set by operation()
        with self._lock:
            left = self._retries_left if budgets is None else budgets.get(id(self), self.retry.total)
            if attempt >= self.retry.retries or left <= 0:
                tries = attempt + 1
                raise RegistryError(f"{what}: {err} (gave up after {tries} attempt{'s' if tries > 1 else ''})")
            if budgets is None:
                self._retries_left -= 1
            else:
                budgets[id(self)] = left - 1
            self.stats.retries += 1
        wait = self.retry.wait(attempt, err.retry_after)
        self.log(f"{what}: {err}; retrying in {wait:.1f}s")
        time.sleep(wait)


def _shown(url: str) -> str:
    """A URL for messages: no query (upload state, signatures), no control characters, bounded."""
    u = url.split("?", 1)[0]
    u = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in u)
    return u[:200]


def deadline_expired(resp: requests.Response) -> bool:
    d = getattr(resp, "_zconv_deadline", None)
    return bool(d is not None and d.expired)
