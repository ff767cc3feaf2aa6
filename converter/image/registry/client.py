"""RegistryClient: one registry host, put together from the HTTP layer, auth, blobs and manifests."""

from __future__ import annotations

from typing import Any, Callable

import requests

from converter.errors import AuthError, RegistryError
from converter.image.registry.auth import Authenticator, parse_challenge
from converter.image.registry.blobs import BlobsMixin
from converter.image.registry.errors import RETRY_STATUS, Transient, check_status, transient_for
from converter.image.registry.http import PushStats, RetryPolicy, Transport
from converter.image.registry.manifests import ManifestsMixin
from converter.image.registry.rangecheck import RangeCheckMixin
from converter.image.registry.upload_sessions import DEFAULT_CHUNK_SIZE, UploadSessions


class RegistryClient(BlobsMixin, ManifestsMixin, RangeCheckMixin):
    """One registry host: authentication, retries, blobs and manifests.

    Blob operations may run in several threads at once (push uploads blobs in
    parallel): the session pools connections; the transport's lock guards
    counters and the retry budget, the authenticator's lock the tokens, and
    upload sessions are files of their own.
    """

    def __init__(
        self,
        host: str,
        *,
        creds: Any = None,  # "USER:PASS" (--creds) or converter.image.auth.Credentials
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
        self.api_host = "registry-1.docker.io" if host == "docker.io" else host
        self.chunk_size = chunk_size
        self.http = Transport(
            host,
            self.api_host,
            tls_verify=tls_verify,
            cert_dir=cert_dir,
            plain_http=plain_http,
            retry=retry,
            timeout=timeout,
            log=log,
        )
        self.auth = Authenticator(self.http, creds=creds, auth_file=auth_file)
        self.uploads = UploadSessions(self.api_host)

    # -- what other code and tests look at

    @property
    def retry(self) -> RetryPolicy:
        return self.http.retry

    @property
    def timeout(self) -> float:
        return self.http.timeout

    @property
    def stats(self) -> PushStats:
        return self.http.stats

    @property
    def session(self) -> requests.Session:
        return self.http.session

    @property
    def _scheme(self) -> str | None:
        return self.http.scheme

    def _schemes(self) -> list[str]:
        return self.http.schemes()

    def _log(self, msg: str) -> None:
        self.http.log(msg)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def count(self, what: str, n: int = 1) -> None:
        self.http.count(what, n)

    def ping(self) -> None:
        self.http.ping()

    def credentials(self, repository: str | None = None) -> Any:
        return self.auth.credentials(repository)

    def _backoff(self, attempt: int, err: Transient, what: str) -> None:
        self.http.backoff(attempt, err, what)

    def _auth_failed(self, resp: requests.Response, repository: str | None, what: str) -> AuthError:
        return self.auth.failed(resp, repository, what)

    # -- requests with auth

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
        Transient for the caller's own resume logic.
        """
        url = self.http.url(path)
        what = what or f"{self.host}{path}"

        def once() -> requests.Response:
            h = dict(headers or {})
            h.update(self.auth.header(scopes, repository))
            resp = self.http.send(method, url, h, body() if body else None, stream)
            if resp.status_code == 401:
                challenge = parse_challenge(resp.headers.get("WWW-Authenticate"))
                if challenge is None:
                    raise self.auth.failed(resp, repository, what)
                had_auth = "Authorization" in h
                current = self.auth.challenge
                if current is None or challenge[0] != current[0] or challenge[0] == "bearer":
                    self.auth.challenge = challenge
                if had_auth and challenge[0] == "basic":
                    raise self.auth.failed(resp, repository, what)
                h = dict(headers or {})
                h.update(self.auth.header(scopes, repository, force=True))
                if "Authorization" not in h:
                    raise self.auth.failed(resp, repository, what)
                resp.close()
                resp = self.http.send(method, url, h, body() if body else None, stream)
                if resp.status_code == 401:
                    raise self.auth.failed(resp, repository, what)
            return resp

        if not retry:
            resp = once()
            if resp.status_code in RETRY_STATUS:
                raise transient_for(resp)
            return resp
        return self.http.with_retries(once, what)

    # -- auth check (login)

    def check_login(self) -> None:
        """Raise AuthError unless the registry accepts our credentials."""
        challenge = self.auth.challenge
        if challenge is None:
            return  # anonymous registry: nothing to check
        scheme, params = challenge
        creds = self.credentials()
        if creds is None:
            raise AuthError(f"registry {self.host}: no credentials given")
        if scheme == "bearer":
            self.auth.fetch_token(params, (), creds)
            return
        resp = self.request("GET", "/v2/", repository=None, what=f"registry {self.host}")
        check_status(
            resp,
            *range(200, 400),
            what=f"registry {self.host}",
            action="login check failed",
            auth_failed=lambda r: self.auth.failed(r, None, f"registry {self.host}"),
        )

    @staticmethod
    def _pull(repo: str) -> tuple[str, ...]:
        return (f"repository:{repo}:pull",)

    @staticmethod
    def _push(repo: str, *mount_from: str) -> tuple[str, ...]:
        return (f"repository:{repo}:pull,push",) + tuple(f"repository:{m}:pull" for m in mount_from)


__all__ = ["RegistryClient", "RegistryError"]
