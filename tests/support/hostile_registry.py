"""A hostile "registry" of our own for tests (127.0.0.1 only): the test scripts every answer.

Like faultproxy, it is small and speaks just enough HTTP/1.1; unlike it there is
no real registry behind it. A script is a function from the request to an
`Answer`, so a test can send redirects to another port (and check with a second
HostileRegistry that no Authorization arrived there), bad token realms, bodies
that drip one byte at a time, malformed JSON, hundreds of headers, redirect
loops::

    def script(req):
        if req.path == "/v2/":
            return Answer(200)
        return Answer(302, headers=[("Location", req.path)])  # a loop

    with HostileRegistry(script) as reg:
        ...  # talk to reg.host
        reg.requests  # every Request seen: method, path, headers (lowercase names), body

Answers may also be raw bytes (`Answer(raw=b"...")`) for heads no HTTP library
would write. Connections are served on threads; a client that goes away ends
its thread (a drip is cut off at the next byte).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

MAX_HEAD = 256 * 1024
MAX_BODY = 64 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    body_complete: bool = True  # False: the client went away before sending all of Content-Length
    port: int = 0  # which server got it


@dataclass
class Answer:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    drip: float = 0.0  # seconds between body bytes (a server that trickles)
    content_length: int | None = None  # default len(body); a different value lies
    raw: bytes | None = None  # sent as it is instead of status/headers/body
    close: bool = False  # close the connection after the answer

    @staticmethod
    def json(
        doc: object,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Answer:
        return Answer(status, [("Content-Type", content_type)] + list(headers or []), json.dumps(doc).encode())


Script = Callable[[Request], "Answer | None"]

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
}


class HostileRegistry:
    def __init__(self, script: Script, tls: tuple[str, str] | None = None) -> None:
        """`tls`: (cert, key) files to serve HTTPS instead of plain HTTP."""
        self.script = script
        self._tls = None
        if tls is not None:
            import ssl

            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(str(tls[0]), str(tls[1]))
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}"

    def seen(self, method: str | None = None, path_contains: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method) and path_contains in r.path]

    def start(self) -> HostileRegistry:
        self._sock.listen(32)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> HostileRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        c.settimeout(30)
        if self._tls is not None:
            try:
                c = self._tls.wrap_socket(c, server_side=True)
            except OSError:
                c.close()
                return
        f = c.makefile("rb")
        try:
            if self._tls is None and f.peek(1)[:1] == b"\x16":
                # A TLS ClientHello: answer in plain HTTP as Go's server does, so clients fall back to http://
                c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                return
            while not self._stop.is_set():
                req = self._read_request(f)
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                if not req.body_complete:
                    return
                try:
                    ans = self.script(req) or Answer(404, body=b'{"errors":[{"code":"UNSUPPORTED"}]}')
                except Exception as e:  # noqa: BLE001 - a broken script answers 500 and says why
                    ans = Answer(500, body=f"script error: {e!r}".encode())
                if not self._send(c, req, ans) or ans.close:
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def _read_request(self, f) -> Request | None:  # type: ignore[no-untyped-def]
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = f.readline(MAX_HEAD)
            if not line:
                return None
            head += line
            if len(head) > MAX_HEAD:
                return None
            if head == b"\r\n":
                head = b""
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers: dict[str, str] = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = b""
        complete = True
        if "content-length" in headers:
            n = min(int(headers["content-length"] or 0), MAX_BODY)
            parts = []
            left = n
            while left:
                got = f.read(min(left, 1 << 20))
                if not got:
                    complete = False
                    break
                parts.append(got)
                left -= len(got)
            body = b"".join(parts)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size_line = f.readline(1024)
                if not size_line:
                    complete = False
                    break
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    f.readline(1024)
                    break
                parts.append(f.read(size))
                f.readline(1024)
            body = b"".join(parts)
        return Request(method, path, headers, body, complete, self.port)

    def _send(self, c: socket.socket, req: Request, ans: Answer) -> bool:
        try:
            if ans.raw is not None:
                c.sendall(ans.raw)
                return True
            n = len(ans.body) if ans.content_length is None else ans.content_length
            head = [f"HTTP/1.1 {ans.status} {_REASONS.get(ans.status, 'Status')}"]
            names = {k.lower() for k, _ in ans.headers}
            head += [f"{k}: {v}" for k, v in ans.headers]
            if "content-length" not in names and ans.status not in (204, 304):
                head.append(f"Content-Length: {n}")
            if ans.close:
                head.append("Connection: close")
            c.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if req.method == "HEAD" or ans.status in (204, 304):
                return True
            if ans.drip:
                for i in range(len(ans.body)):
                    if self._stop.is_set():
                        return False
                    c.sendall(ans.body[i : i + 1])
                    time.sleep(ans.drip)
            else:
                c.sendall(ans.body)
            return True
        except OSError:
            return False


# ------------------------------------------------------------ a tiny well-behaved image


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class TinyImage:
    """One config and one (non-chunked) layer blob, and their manifest, for scripts to serve."""

    layer: bytes = b"\x28\xb5\x2f\xfd" + b"not really a layer" * 10
    config: bytes = (
        b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:' + b"0" * 64 + b'"]}}'
    )

    @property
    def manifest(self) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                        "digest": sha256(self.layer),
                        "size": len(self.layer),
                    }
                ],
            }
        ).encode()

    def answer(self, req: Request) -> Answer | None:
        """What a plain anonymous registry would answer for this image (repository "r", tag "t")."""
        if req.path == "/v2/":
            return Answer.json({})
        if req.path.startswith("/v2/r/manifests/"):
            return Answer(
                200,
                [
                    ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
                    ("Docker-Content-Digest", sha256(self.manifest)),
                ],
                self.manifest,
            )
        for blob in (self.config, self.layer):
            if req.path == f"/v2/r/blobs/{sha256(blob)}":
                return Answer(200, [("Content-Type", "application/octet-stream")], blob)
        return None
