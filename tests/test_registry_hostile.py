"""Registries that misbehave on purpose (tests/support/hostile_registry.py, 127.0.0.1 only).

One test per class of issue 9's "credentials go only where they belong" and
"registries that misbehave": each sets up the hostile answer and checks what
zconv does with it -- no Authorization to another origin, one-line errors,
no traceback, no hang.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converter.errors import AuthError, BadInputError, RegistryError
from converter.image.registry import RegistryClient, RetryPolicy
from support.hostile_registry import Answer, HostileRegistry, Request, TinyImage, sha256

ROOT = Path(__file__).resolve().parent.parent
FAST = RetryPolicy(retries=0, delay=0.01, max_delay=0.01)
CREDS = "alice:s3cret"
BASIC = "Basic " + base64.b64encode(CREDS.encode()).decode()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))


def _basic_only(inner):
    """A script wrapper: the registry wants Basic credentials for everything."""

    def script(req: Request) -> Answer | None:
        if req.headers.get("authorization") != BASIC:
            return Answer.json(
                {"errors": [{"code": "UNAUTHORIZED", "message": "auth"}]},
                401,
                [("WWW-Authenticate", 'Basic realm="hostile"')],
            )
        return inner(req)

    return script


def _zconv(*args: str, timeout: float = 60, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "converter.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def _one_line_error(r: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    import re

    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("zconv: error:")]
    assert len(errors) == 1, r.stderr
    assert re.search(pattern, errors[0]), errors[0]


# ------------------------------------------------------------ credentials stay home


def test_upload_location_on_another_host_gets_no_authorization(tmp_path):
    data = b"x" * 1000
    path = tmp_path / "blob"
    path.write_bytes(data)
    with HostileRegistry(lambda req: Answer(201, [("Docker-Content-Digest", sha256(data))])) as other:

        def inner(req: Request) -> Answer | None:
            if req.path == "/v2/":
                return Answer.json({})
            if req.method == "POST" and "/blobs/uploads/" in req.path:
                return Answer(202, [("Location", f"{other.url}/upload/1?_state=x")])
            return None

        with HostileRegistry(_basic_only(inner)) as reg, RegistryClient(reg.host, creds=CREDS, retry=FAST) as c:
            assert c.push_blob("r", sha256(data), len(data), lambda: open(path, "rb"), known_absent=True) == "uploaded"
        puts = other.seen("PUT")
        assert len(puts) == 1 and puts[0].body == data
        assert all("authorization" not in r.headers for r in other.requests)
        assert any(r.headers.get("authorization") == BASIC for r in reg.requests)


def test_blob_redirect_and_next_page_on_another_host_get_no_authorization():
    img = TinyImage()
    layer = sha256(img.layer)

    def other_script(req: Request) -> Answer | None:
        if req.path.startswith("/cdn/"):
            return Answer(200, [], img.layer)
        if req.path.startswith("/v2/r/tags/list"):
            return Answer.json({"name": "r", "tags": ["b"]})
        return None

    with HostileRegistry(other_script) as other:

        def inner(req: Request) -> Answer | None:
            if req.path == f"/v2/r/blobs/{layer}":
                return Answer(307, [("Location", f"{other.url}/cdn/{layer}?sig=1")])
            if req.path == "/v2/r/tags/list":
                return Answer.json(
                    {"name": "r", "tags": ["a"]}, headers=[("Link", f'<{other.url}/v2/r/tags/list?last=a>; rel="next"')]
                )
            return img.answer(req)

        with HostileRegistry(_basic_only(inner)) as reg, RegistryClient(reg.host, creds=CREDS, retry=FAST) as c:
            with c.open_blob("r", layer, len(img.layer)) as s:
                assert s.read() == img.layer
            assert c.list_tags("r") == ["a", "b"]
        assert other.seen("GET", "/cdn/") and other.seen("GET", "/tags/list")
        assert all("authorization" not in r.headers for r in other.requests)


def test_location_that_is_not_http_is_refused_in_one_line(tmp_path):
    img = TinyImage()
    layer = sha256(img.layer)
    data = b"y" * 100
    path = tmp_path / "blob"
    path.write_bytes(data)

    def script(req: Request) -> Answer | None:
        if req.path == f"/v2/r/blobs/{layer}":
            return Answer(302, [("Location", "file:///etc/passwd")])
        if req.method == "POST":
            return Answer(202, [("Location", "gopher://127.0.0.1/upload")])
        if req.path == "/v2/badurl/manifests/t":
            return Answer(302, [("Location", "http://[::1")])
        return img.answer(req)

    with HostileRegistry(script) as reg, RegistryClient(reg.host, retry=FAST) as c:
        with pytest.raises(RegistryError, match="unusable URL 'http://\\[::1'"):
            c.get_manifest("badurl", "t")
        with pytest.raises(RegistryError, match=r"refusing to follow file:///etc/passwd \(not an http\(s\) URL\)"):
            with c.open_blob("r", layer, len(img.layer)) as s:
                s.read()
        with pytest.raises(RegistryError, match=r"unusable upload Location 'gopher:"):
            c.push_blob("r", sha256(data), len(data), lambda: open(path, "rb"), known_absent=True)


def test_relative_token_realm_is_resolved_against_the_registry():
    img = TinyImage()

    def script(req: Request) -> Answer | None:
        if req.path.startswith("/token"):
            assert req.headers.get("authorization") == BASIC
            return Answer.json({"token": "tok123"})
        if req.headers.get("authorization") != "Bearer tok123":
            return Answer.json(
                {"errors": [{"code": "UNAUTHORIZED"}]},
                401,
                [("WWW-Authenticate", 'Bearer realm="/token",service="hostile"')],
            )
        return img.answer(req)

    with HostileRegistry(script) as reg, RegistryClient(reg.host, creds=CREDS, retry=FAST) as c:
        data, _, digest = c.get_manifest("r", "t")
        assert digest == sha256(img.manifest)
        assert reg.seen("GET", "/token?service=hostile")


@pytest.mark.parametrize("realm", ["http://auth.example.com/token", "ftp://127.0.0.1/token"])
def test_credentials_never_go_to_a_plain_http_or_odd_realm(realm):
    def script(req: Request) -> Answer | None:
        return Answer.json(
            {"errors": [{"code": "UNAUTHORIZED"}]}, 401, [("WWW-Authenticate", f'Bearer realm="{realm}",service="x"')]
        )

    with HostileRegistry(script) as reg, RegistryClient(reg.host, creds=CREDS, retry=FAST) as c:
        with pytest.raises(AuthError, match=r"refusing to send credentials over plain HTTP|unusable token realm"):
            c.get_manifest("r", "t")


def test_https_registry_never_sends_credentials_to_a_plain_http_realm(tmp_path):
    from support.registry import make_self_signed_cert

    cert, key = make_self_signed_cert(tmp_path / "tls")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(cert.read_bytes())
    with HostileRegistry(lambda req: Answer.json({"token": "t"})) as auth:

        def script(req: Request) -> Answer | None:
            return Answer.json(
                {"errors": [{"code": "UNAUTHORIZED"}]},
                401,
                [("WWW-Authenticate", f'Bearer realm="{auth.url}/token",service="x"')],
            )

        with (
            HostileRegistry(script, tls=(str(cert), str(key))) as reg,
            RegistryClient(reg.host, creds=CREDS, cert_dir=str(certs), retry=FAST) as c,
        ):
            with pytest.raises(
                AuthError, match=r"refusing to send credentials over plain HTTP .*registry itself is HTTPS"
            ):
                c.get_manifest("r", "t")
            assert c._scheme == "https"
        assert auth.requests == []  # the loopback plain-HTTP realm never saw the password


# ------------------------------------------------------------ answers that misbehave


def test_slow_drip_body_is_cut_off_after_the_timeout():
    img = TinyImage()

    def script(req: Request) -> Answer | None:
        if req.path.startswith("/v2/r/manifests/"):
            return Answer(200, [("Content-Type", "application/vnd.oci.image.manifest.v1+json")], img.manifest, drip=0.2)
        return img.answer(req)

    with HostileRegistry(script) as reg, RegistryClient(reg.host, retry=FAST, timeout=1.0) as c:
        started = time.monotonic()
        with pytest.raises(RegistryError, match=r"(stalled|timed out)"):
            c.get_manifest("r", "t")
        assert time.monotonic() - started < 5  # one request's deadline (1 s), not one per byte


def test_slow_drip_through_the_cli_is_one_line(tmp_path):
    img = TinyImage()

    def script(req: Request) -> Answer | None:
        if req.path.startswith("/v2/r/manifests/"):
            return Answer(200, [("Content-Type", "application/vnd.oci.image.manifest.v1+json")], img.manifest, drip=0.3)
        return img.answer(req)

    with HostileRegistry(script) as reg:
        started = time.monotonic()
        r = _zconv(
            "push",
            f"docker://{reg.host}/r:t",
            f"docker://{reg.host}/r2:t",
            "--timeout",
            "0.5",
            "--retry",
            "0",
            timeout=60,
        )
        assert time.monotonic() - started < 30
    _one_line_error(r, 4, r"(stalled|timed out)")


def test_login_to_a_stalling_registry_is_one_line_within_its_timeout(tmp_path):
    def script(req: Request) -> Answer | None:
        if req.path.startswith("/token"):  # the token endpoint trickles its answer
            return Answer(200, [("Content-Type", "application/json")], b'{"token": "' + b"t" * 64 + b'"}', drip=0.4)
        return Answer(401, [("WWW-Authenticate", 'Bearer realm="/token",service="r"')], b"{}")

    with HostileRegistry(script) as reg:
        started = time.monotonic()
        r = _zconv(
            "login",
            reg.host,
            "--username",
            "u",
            "--password",
            "p",
            "--authfile",
            str(tmp_path / "auth.json"),
            "--timeout",
            "0.5",
            timeout=60,
        )
        assert time.monotonic() - started < 30
    _one_line_error(r, 4, r"(stalled|timed out)")
    assert not (tmp_path / "auth.json").exists()


def test_deadline_holds_through_an_http_proxy_from_the_environment():
    """HTTP_PROXY (honoured as podman does): a proxy that trickles its answer stops at --timeout too."""
    img = TinyImage()

    def proxy(req: Request) -> Answer | None:  # a forward proxy gets absolute URIs: it answers them all
        return Answer(200, [("Content-Type", "application/json")], b"{" + b" " * 4000 + b"}", drip=0.3)

    # The registry speaks plain HTTP: the https attempt (direct, no HTTPS_PROXY) fails its
    # handshake, and the http one goes through the proxy.
    with HostileRegistry(img.answer) as reg, HostileRegistry(proxy) as p:
        started = time.monotonic()
        r = _zconv(
            "inspect",
            f"docker://{reg.host}/r:t",
            "--timeout",
            "1",
            timeout=120,
            env_extra={
                "HTTP_PROXY": f"http://{p.host}",
                "http_proxy": f"http://{p.host}",
                "NO_PROXY": "",
                "no_proxy": "",
            },
        )
        took = time.monotonic() - started
        assert p.requests, "the request did not go through the proxy"
        assert all(q.path.startswith(f"http://{reg.host}/") for q in p.requests), [q.path for q in p.requests]
    _one_line_error(r, 4, r"(stalled|timed out)")
    assert took < 30, took


def test_redirect_loop_and_too_many_redirects_are_one_line():
    img = TinyImage()

    def script(req: Request) -> Answer | None:
        if req.path == "/v2/loop/manifests/t":
            return Answer(302, [("Location", "/v2/loop/manifests/t")])
        if req.path.startswith("/v2/long/manifests/"):
            n = int(req.path.rsplit("/", 1)[1].lstrip("t") or 0)
            if n < 11:
                return Answer(307, [("Location", f"/v2/long/manifests/t{n + 1}")])
            return Answer(200, [("Content-Type", "application/vnd.oci.image.manifest.v1+json")], img.manifest)
        return img.answer(req)

    with HostileRegistry(script) as reg, RegistryClient(reg.host, retry=FAST) as c:
        with pytest.raises(RegistryError, match="redirect loop"):
            c.get_manifest("loop", "t")
        with pytest.raises(RegistryError, match="more than 10 redirects"):
            c.get_manifest("long", "t")
        r = _zconv("inspect", f"docker://{reg.host}/loop:t")
    _one_line_error(r, 4, "redirect loop")


def test_malformed_json_answers_are_one_line_errors():
    deep = b"[" * 100000 + b"]" * 100000

    def script(req: Request) -> Answer | None:
        if req.path.startswith("/token"):
            return Answer(200, [("Content-Type", "application/json")], deep)
        if req.path == "/v2/r/tags/list":
            return Answer.json({"tags": 5})
        if req.path == "/v2/list/manifests/t":
            return Answer(200, [("Content-Type", "text/html")], b"[1, 2]")
        if req.path == "/v2/deep/manifests/t":
            return Answer(200, [("Content-Type", "text/html")], deep)
        if req.path.startswith("/v2/auth/"):
            return Answer.json(
                {"errors": [{"code": "UNAUTHORIZED"}]}, 401, [("WWW-Authenticate", 'Bearer realm="/token",service="x"')]
            )
        if req.path == "/v2/":
            return Answer.json({})
        return None

    with HostileRegistry(script) as reg, RegistryClient(reg.host, retry=FAST) as c:
        with pytest.raises(BadInputError, match="tag list is not a list of strings"):
            c.list_tags("r")
        with pytest.raises(AuthError, match="sent no JSON"):
            c.get_manifest("auth", "t")
        r = _zconv("inspect", f"docker://{reg.host}/auth:t")
        _one_line_error(r, 5, "token server .* sent no JSON")
        for repo in ("list", "deep"):  # a manifest that is JSON but not an object, or nested 100000 deep
            r = _zconv("inspect", f"docker://{reg.host}/{repo}:t")
            _one_line_error(r, 2, rf"{reg.host}/{repo}")


def test_huge_and_odd_headers_are_one_line_errors():
    def script(req: Request) -> Answer | None:
        if req.path == "/v2/":
            return Answer.json({})
        if req.path == "/v2/many/manifests/t":
            return Answer(200, [(f"X-H{i}", "v") for i in range(500)], b"{}")
        if req.path == "/v2/long/manifests/t":
            return Answer(200, [("X-Long", "v" * 200000)], b"{}")
        if req.path == "/v2/garbage/manifests/t":
            return Answer(raw=b"NOT HTTP AT ALL\r\n\r\n", close=True)
        return None

    with HostileRegistry(script) as reg:
        for repo in ("many", "long", "garbage"):
            r = _zconv(
                "push", f"docker://{reg.host}/{repo}:t", f"docker://{reg.host}/copy:t", "--timeout", "2", "--retry", "0"
            )
            _one_line_error(r, 4, rf"{reg.host}/{repo}:t")


def test_registry_error_messages_have_control_characters_escaped():
    def script(req: Request) -> Answer | None:
        if req.path == "/v2/":
            return Answer.json({})
        return Answer.json({"errors": [{"code": "DENIED", "message": "\x1b[2J\x1b]0;pwned\x07gone\rover"}]}, 400)

    with HostileRegistry(script) as reg:
        r = _zconv("inspect", f"docker://{reg.host}/r:t")
    _one_line_error(r, 4, r"DENIED: \\x1b\[2J\\x1b\]0;pwned\\x07gone\\rover")
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and "\r" not in r.stderr


# ------------------------------------------------------------ push checks what it sends


def _accepting_registry(uploads: dict[str, bytes]):
    """Accepts every upload without checking digests (as a broken or hostile registry might)."""

    def script(req: Request) -> Answer | None:
        if req.path == "/v2/":
            return Answer.json({})
        if req.method == "HEAD":
            return Answer(404)
        if req.method == "POST" and req.path.endswith("/blobs/uploads/"):
            uploads["patched"] = b""
            return Answer(202, [("Location", "/upload/1")])
        if req.method == "PATCH":
            uploads["patched"] = uploads.get("patched", b"") + req.body
            return Answer(202, [("Location", "/upload/1"), ("Range", f"0-{len(uploads['patched']) - 1}")])
        if req.method == "PUT" and req.path.startswith("/upload/1"):
            uploads[req.path] = uploads.get("patched", b"") + req.body
            return Answer(201)
        return None

    return script


@pytest.mark.parametrize("chunk_size", [1 << 20, 1000])
def test_push_aborts_before_commit_when_the_local_blob_is_not_its_digest(tmp_path, chunk_size):
    good = os.urandom(5000)
    bad = bytearray(good)
    bad[-1] ^= 1  # same size, last byte differs
    path = tmp_path / "blob"
    path.write_bytes(bytes(bad))
    uploads: dict[str, bytes] = {}
    with (
        HostileRegistry(_accepting_registry(uploads)) as reg,
        RegistryClient(reg.host, retry=FAST, chunk_size=chunk_size) as c,
    ):
        with pytest.raises(BadInputError, match="does not match its digest.*aborted before the registry committed it"):
            c.push_blob("r", sha256(good), len(good), lambda: open(path, "rb"), known_absent=True)
        committed = [r for r in reg.seen("PUT", "/upload/1") if r.body_complete]
        assert committed == []  # no complete final PUT: nothing was committed
        # a shorter file is refused the same way
        path.write_bytes(good[:-10])
        with pytest.raises(BadInputError, match="shorter than|does not match"):
            c.push_blob("r", sha256(good), len(good), lambda: open(path, "rb"), known_absent=True)
        assert [r for r in reg.seen("PUT", "/upload/1") if r.body_complete] == []
        # the right content goes through
        path.write_bytes(good)
        assert c.push_blob("r", sha256(good), len(good), lambda: open(path, "rb"), known_absent=True) == "uploaded"
        assert any(v == good for k, v in uploads.items() if k.startswith("/upload/1"))


def test_login_with_a_wrong_password_from_stdin_names_stdin(tmp_path):
    with HostileRegistry(_basic_only(lambda req: Answer.json({}))) as reg:
        env_file = tmp_path / "auth.json"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "converter.cli",
                "login",
                reg.host,
                "-u",
                "alice",
                "--password-stdin",
                "--authfile",
                str(env_file),
            ],
            input="wrong\n",
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=60,
            cwd=ROOT,
        )
        _one_line_error(r, 5, r"user 'alice' \(from --password-stdin \(standard input\)\)")
        assert "--creds" not in r.stderr and not env_file.exists()


def test_push_of_a_layout_whose_blob_lies_is_one_line_and_nothing_committed(tmp_path):
    """Through the CLI: a layout blob file replaced by other bytes of the same size is never sent as if it were."""
    import shutil

    layout = tmp_path / "layout"
    shutil.copytree(ROOT / "testdata" / "sample", layout)
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    layer = manifest["layers"][0]
    blob = layout / "blobs" / "sha256" / layer["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    uploads: dict[str, bytes] = {}
    with HostileRegistry(_accepting_registry(uploads)) as reg:
        r = _zconv("push", f"oci:{layout}:v1", f"docker://{reg.host}/r:v1", "--retry", "0")
        assert not reg.seen("PUT", "/manifests/")  # no manifest, no tag
        assert all(v != bytes(data) for k, v in uploads.items() if k.startswith("/upload/1"))
    _one_line_error(r, 2, rf"blob {layer['digest'][:19]}.*does not match its digest")
