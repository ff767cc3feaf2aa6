"""Answering the registry's challenges: Basic credentials, bearer tokens and their cache.

The token realm may be another host (an auth server), but credentials go to
it only over HTTPS when the registry itself is HTTPS, and to a plain-HTTP
realm only on loopback or when TLS verification was turned off for the
registry. A relative realm is resolved against the registry's URL.
"""

from __future__ import annotations

import threading
from urllib.parse import quote, urlsplit

import oras.auth.utils as oras_auth_utils
import requests

from converter.errors import AuthError, BadInputError
from converter.image import auth as credentials
from converter.image.auth import Credentials
from converter.image.registry.errors import error_detail
from converter.image.registry.http import Transport, is_local_host, origin, resolve_url
from converter.jsonload import load_json

MAX_TOKEN_ANSWER = 1024 * 1024

Challenge = tuple[str, dict[str, str]]  # ("basic"|"bearer", params)


def parse_challenge(raw: str | None) -> Challenge | None:
    raw = raw or ""
    scheme = raw.split(" ", 1)[0].lower()
    if scheme not in ("basic", "bearer"):
        return None
    h = oras_auth_utils.parse_auth_header(raw)
    params = {k: v for k, v in (("realm", h.realm), ("service", h.service), ("scope", h.scope)) if v}
    return scheme, params


class Authenticator:
    """Credentials, the registry's challenge and the bearer tokens of one registry; its own lock."""

    def __init__(
        self, transport: Transport, *, creds: str | Credentials | None = None, auth_file: str | None = None
    ) -> None:
        self.t = transport
        self.host = transport.host
        self._auth_file = auth_file
        self._creds_arg = credentials.parse_creds(creds) if isinstance(creds, str) and creds else creds or None
        self._creds_cache: dict[str, Credentials | None] = {}
        self._challenge: Challenge | None = None
        self._challenge_seen = False
        self.tokens: dict[tuple[str, ...], str] = {}
        self._lock = threading.RLock()

    @property
    def challenge(self) -> Challenge | None:
        if not self._challenge_seen:
            self.t.ping()
            with self._lock:
                if not self._challenge_seen:
                    self._challenge = (
                        parse_challenge(self.t.ping_challenge) if self.t.ping_challenge is not None else None
                    )
                    self._challenge_seen = True
        return self._challenge

    @challenge.setter
    def challenge(self, value: Challenge | None) -> None:
        with self._lock:
            self._challenge = value
            self._challenge_seen = True

    def credentials(self, repository: str | None = None) -> Credentials | None:
        if self._creds_arg:
            return self._creds_arg
        key = repository or ""
        with self._lock:
            if key not in self._creds_cache:
                self._creds_cache[key] = credentials.lookup_credentials(self.host, repository, self._auth_file)
            return self._creds_cache[key]

    def header(self, scopes: tuple[str, ...], repository: str | None, force: bool = False) -> dict[str, str]:
        challenge = self.challenge
        if challenge is None:
            return {}
        scheme, params = challenge
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
                self.tokens.pop(key, None)
            if key not in self.tokens:
                self.tokens[key] = self.fetch_token(params, scopes, creds)
            tok = self.tokens[key]
        return {"Authorization": f"Bearer {tok}"} if tok else {}

    def realm_url(self, realm: str | None, creds: Credentials | None) -> str:
        """The token server's URL, checked against the credential policy."""
        if not realm:
            raise AuthError(f"registry {self.host}: bearer challenge without a realm")
        base = self.t.base_url
        url = resolve_url(base + "/", realm, f"registry {self.host}: token realm")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuthError(f"registry {self.host}: unusable token realm {realm[:200]!r} (not an http(s) URL)")
        if creds is not None and parts.scheme == "http":
            if base.startswith("https:"):
                raise AuthError(
                    f"registry {self.host}: refusing to send credentials over plain HTTP to token realm {url.split('?')[0][:200]} "
                    "(the registry itself is HTTPS)"
                )
            if not is_local_host(parts.hostname) and self.t.tls_verify:
                raise AuthError(
                    f"registry {self.host}: refusing to send credentials over plain HTTP to token realm {url.split('?')[0][:200]} "
                    "(use --tls-verify=false for this registry to allow it)"
                )
        return url

    def fetch_token(self, params: dict[str, str], scopes: tuple[str, ...], creds: Credentials | None) -> str:
        realm = self.realm_url(params.get("realm"), creds)
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        for s in scopes:
            query.append(("scope", s))
        headers = {}
        if creds:
            headers["Authorization"] = "Basic " + oras_auth_utils.get_basic_auth(creds.username, creds.password)
        url = realm + ("&" if "?" in realm else "?") + "&".join(f"{k}={quote(v, safe='')}" for k, v in query)
        shown = realm.split("?")[0][:200]
        resp = self.t.with_retries(
            lambda: self.t.send("GET", url, headers, None, False, auth_origin=origin(realm)), f"token server {shown}"
        )
        if resp.status_code in (401, 403):
            who = f"user {creds.username!r} (from {creds.source})" if creds else "anonymous access"
            raise AuthError(f"registry {self.host}: authentication failed for {who}: {error_detail(resp)}")
        if resp.status_code != 200:
            raise AuthError(f"registry {self.host}: token server {shown} answered {error_detail(resp)}")
        try:
            doc = load_json(resp.content, f"registry {self.host}: token server {shown}", max_size=MAX_TOKEN_ANSWER)
        except BadInputError:
            raise AuthError(f"registry {self.host}: token server {shown} sent no JSON") from None
        tok = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not tok or not isinstance(tok, str):
            raise AuthError(f"registry {self.host}: token server {shown} sent no token")
        if any(not c.isprintable() or c.isspace() for c in tok):
            raise AuthError(f"registry {self.host}: token server {shown} sent a malformed token")
        return tok

    def failed(self, resp: requests.Response, repository: str | None, what: str) -> AuthError:
        creds = self.credentials(repository)
        detail = error_detail(resp)
        if creds is None:
            return AuthError(
                f"{what}: authentication required ({detail}); use `zconv login {self.host}` or --creds USER:PASS"
            )
        if resp.status_code == 403:
            return AuthError(f"{what}: access denied for user {creds.username!r} (from {creds.source}): {detail}")
        return AuthError(f"{what}: authentication failed for user {creds.username!r} (from {creds.source}): {detail}")
