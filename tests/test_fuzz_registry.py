"""Fuzzing registry answers through the hostile registry (tests/support/hostile_registry.py).

Each example scripts what the "registry" answers to the ping, the token
request, the manifest and the blobs of `zconv inspect docker://...` (anything
not scripted is answered like a plain registry serving a tiny image), and
runs the CLI entry point in-process. Whatever the answers, zconv must end
with one of the documented exit codes -- never 70 (the last-resort handler)
and never an exception out of `cli.main` -- print no traceback, and finish
in bounded time.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import threading
import time
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converter import cli
from converter.image.registry import http as registry_http
from support.fuzzing import fuzz_settings, tried
from support.hostile_registry import Answer, HostileRegistry, Request, TinyImage, sha256

DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 64}
IMG = TinyImage()
PLAN: dict[str, Answer | None] = {}


def _kind(req: Request) -> str:
    if req.path == "/v2/":
        return "ping"
    if req.path.startswith("/token"):
        return "token"
    if "/manifests/" in req.path:
        return "manifest"
    if req.path == f"/v2/r/blobs/{sha256(IMG.config)}":
        return "config"
    if "/blobs/" in req.path:
        return "blob"
    return "other"


def _script(req: Request) -> Answer | None:
    ans = PLAN.get(_kind(req))
    if ans is not None:
        return ans
    if _kind(req) == "token":
        return Answer.json({"token": "t"})
    return IMG.answer(req)


@pytest.fixture(scope="module")
def hostile():
    with HostileRegistry(_script) as reg:
        yield reg


_header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\r\n\x7f"), max_size=60
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "errors",
                    "code",
                    "message",
                    "token",
                    "access_token",
                    "tags",
                    "schemaVersion",
                    "mediaType",
                    "config",
                    "layers",
                    "manifests",
                    "digest",
                    "size",
                    "urls",
                    "platform",
                    "annotations",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def _locations(port: int) -> st.SearchStrategy[str]:
    local = f"127.0.0.1:{port}"
    return (
        st.sampled_from(
            [
                "/v2/",
                "/v2/r/manifests/t",
                "/v2/r/manifests/t?x=1",
                "file:///etc/passwd",
                "gopher://127.0.0.1/x",
                f"http://{local}/v2/r/manifests/t",
                f"//{local}/v2/",
                "",
                "relative/path",
                "http://[::1",
                "http://127.0.0.1:0/x",
                "http://127.0.0.1:99999/",
                f"https://{local}/v2/",
                "data:,x",
            ]
        )
        | _header_text
    )


def _headers(port: int) -> st.SearchStrategy[list[tuple[str, str]]]:
    local = f"127.0.0.1:{port}"
    values = {
        "Location": _locations(port),
        "WWW-Authenticate": st.sampled_from(
            [
                'Bearer realm="/token",service="s"',
                f'Bearer realm="http://{local}/token",scope="repository:r:pull"',
                'Bearer realm="ftp://127.0.0.1/token"',
                'Bearer realm=""',
                "Bearer",
                'Basic realm="x"',
                "Negotiate",
                'Bearer realm="http://[::1"',
                'Bearer realm="token"',
            ]
        )
        | _header_text.map(lambda t: "Bearer " + t),
        "Content-Type": st.sampled_from(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "text/html",
                "multipart/byteranges; boundary=x",
            ]
        )
        | _header_text,
        "Content-Range": st.sampled_from(["bytes 0-9/100", "bytes */100", "bytes 99999999999999999999-1/2"])
        | _header_text,
        "Docker-Content-Digest": st.sampled_from([sha256(IMG.manifest), "sha256:" + "0" * 64, "../../etc"])
        | _header_text,
        "Link": st.sampled_from([f'<http://{local}/v2/r/tags/list?n=1>; rel="next"', '<ftp://x>; rel="next"', "<>"])
        | _header_text,
        "Range": st.sampled_from(["0-9", "0-99999999999999999999999", "bytes=0-", "junk"]),
        "Retry-After": st.sampled_from(["0", "-1", "1e309", "nan", "soon"]),
        "X-Odd": _header_text,
    }
    return st.lists(st.sampled_from(sorted(values)).flatmap(lambda k: values[k].map(lambda v: (k, v))), max_size=4)


def _bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(IMG.manifest),
        st.just(IMG.config),
        st.just(IMG.layer),
        _json.map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=200),
        st.integers(min_value=10, max_value=100000).map(lambda n: b"[" * n + b"]" * n),
        st.text(max_size=40).map(lambda t: json.dumps({"errors": [{"code": t, "message": t}]}).encode()),
        st.just(b'{"token": "\\ud800"}'),
        st.just(b'{"schemaVersion": 2, "layers": 5, "config": {"digest": "sha256:x", "size": 1e400}}'),
    )


def _answers(port: int) -> st.SearchStrategy[Answer | None]:
    # Statuses the client retries (408/429/5xx) are left to test_registry*.py: here they would only add sleeps.
    answer = st.builds(
        lambda status, headers, body, lie: Answer(
            status, headers, body, content_length=(len(body) + lie) if lie else None
        ),
        st.sampled_from([200, 201, 202, 204, 206, 301, 302, 303, 307, 308, 400, 401, 403, 404, 405, 416, 418]),
        _headers(port),
        _bodies(),
        st.sampled_from([0, 0, 0, -1, 5]),
    )
    redirect = st.builds(
        lambda status, loc: Answer(status, [("Location", loc)]),
        st.sampled_from([301, 302, 303, 307, 308]),
        _locations(port),
    )
    return st.none() | answer | redirect


@pytest.mark.fuzz
def test_fuzz_registry_answers_never_crash_or_hang(hostile):
    answers = _answers(hostile.port)

    @fuzz_settings()
    @given(plan=st.fixed_dictionaries({k: answers for k in ("ping", "token", "manifest", "config", "blob", "other")}))
    def run(plan: dict[str, Answer | None]) -> None:
        tried("registry answers (CLI)")
        PLAN.clear()
        PLAN.update(plan)
        out, err = io.StringIO(), io.StringIO()
        result: dict[str, object] = {}

        def target() -> None:
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    result["rc"] = cli.main(["inspect", f"docker://{hostile.host}/r:t", "--timeout", "2"])
            except BaseException as e:  # noqa: BLE001 - anything escaping cli.main is the failure we look for
                result["exc"] = e

        fast = functools.partial(registry_http.RetryPolicy, retries=1, delay=0.001, max_delay=0.001)
        with mock.patch.object(registry_http, "RetryPolicy", fast):
            started = time.monotonic()
            t = threading.Thread(target=target, daemon=True)
            t.start()
            t.join(60)
        assert not t.is_alive(), f"zconv hung on {plan!r}"
        assert "exc" not in result, f"{result.get('exc')!r} escaped cli.main for {plan!r}"
        assert "Traceback" not in err.getvalue(), err.getvalue()
        rc = result["rc"]
        assert rc in DOCUMENTED_EXIT_CODES and rc != 70, (rc, err.getvalue(), plan)
        if rc != 0:
            errors = [ln for ln in err.getvalue().splitlines() if ln.startswith("zconv: error:")]
            assert len(errors) == 1, err.getvalue()
            assert "\x1b" not in errors[0] and "\x07" not in errors[0]
        assert time.monotonic() - started < 60

    run()
