"""Bearer-token authentication against the real docker-registry.

docker-registry is configured with `auth: token:`; the token server is a
small one of our own (127.0.0.1, in a thread) that checks basic credentials
and issues RS256 JWTs signed with `openssl dgst` and carrying the signing
certificate in `x5c`, which the registry verifies against its
`rootcertbundle`. Real registry, real signatures, no mocks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from converter.errors import AuthError
from converter.image.model import sha256_digest
from converter.image.registry import RegistryClient
from support.registry import RegistryServer, make_self_signed_cert

USER, PASSWORD = "bob", "t0ken-pass"
SERVICE, ISSUER = "zconv-test-registry", "zconv-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry tokens for USER/PASSWORD; records the scopes it was asked for."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        der = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                q = parse_qs(urlparse(self.path).query)
                scopes = q.get("scope", [])
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if (u, p) != (USER, PASSWORD):
                        self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                        server.requests.append({"user": u, "scopes": scopes, "granted": False})
                        return
                    user = u
                server.requests.append({"user": user, "scopes": scopes, "granted": True})
                access = []
                for s in scopes:
                    typ, name, actions = s.split(":")
                    # anonymous callers may pull only
                    acts = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
                    access.append({"type": typ, "name": name, "actions": acts})
                self._send(200, {"token": server.sign(user or "", access), "expires_in": 300})

            def _send(self, code, doc):
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": hashlib.sha256(f"{now}{subject}{access}".encode()).hexdigest()[:16],
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def __enter__(self) -> TokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TokenRegistry(RegistryServer):
    """RegistryServer with `auth: token:` pointing at our token server."""

    def __init__(self, token: TokenServer, **kw) -> None:
        super().__init__(**kw)
        self.token = token

    def _write_config(self) -> None:
        super()._write_config()
        with open(self.config_path, "a") as f:
            f.write(
                "auth:\n  token:\n"
                f"    realm: {self.token.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                f"    rootcertbundle: {self.token.cert}\n"
            )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=2):
                return True
        except urllib.error.HTTPError as e:
            return e.code == 401 and "Bearer" in e.headers.get("WWW-Authenticate", "")
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture(scope="module")
def bearer(tmp_path_factory):
    d = tmp_path_factory.mktemp("bearer")
    cert, key = make_self_signed_cert(d, "token-signer")
    with TokenServer(cert, key) as token, TokenRegistry(token) as reg:
        yield reg, token


def test_bearer_token_push_pull_and_scopes(bearer, tmp_path, monkeypatch):
    reg, token = bearer
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    data = b"bearer blob " * 1000
    digest = sha256_digest(data)
    path = tmp_path / "b"
    path.write_bytes(data)
    with RegistryClient(reg.host, creds=f"{USER}:{PASSWORD}") as c:
        assert c.push_blob("bearer/src", digest, len(data), lambda: open(path, "rb")) == "uploaded"
        assert (
            c.push_blob("bearer/dst", digest, len(data), lambda: open(path, "rb"), mount_from=["bearer/src"])
            == "mounted"
        )
        with c.open_blob("bearer/dst", digest, len(data)) as s:
            assert s.read() == data
    granted = [r for r in token.requests if r["granted"] and r["user"] == USER]
    # push scope for the target, pull scope for the mount source, in one token
    assert any(set(r["scopes"]) == {"repository:bearer/dst:pull,push", "repository:bearer/src:pull"} for r in granted)


def test_bearer_wrong_password_and_anonymous_push(bearer, tmp_path, monkeypatch):
    reg, _ = bearer
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    data = b"x" * 100
    path = tmp_path / "b"
    path.write_bytes(data)
    with RegistryClient(reg.host, creds=f"{USER}:nope") as c:
        with pytest.raises(AuthError, match=rf"registry {reg.host}: authentication failed for user 'bob'"):
            c.push_blob("bearer/x", sha256_digest(data), len(data), lambda: open(path, "rb"))
    with RegistryClient(reg.host) as c:
        # an anonymous token without push rights: the registry refuses, with a clear error
        with pytest.raises(AuthError, match=rf"{reg.host}/bearer/x.*authentication required"):
            c.push_blob("bearer/x", sha256_digest(data), len(data), lambda: open(path, "rb"))
