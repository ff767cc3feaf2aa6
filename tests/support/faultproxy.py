"""A small fault-injecting HTTP/1.1 proxy for retry tests (127.0.0.1 only).

It sits between zconv and a real registry and understands just enough
HTTP/1.1 (request line, headers, Content-Length or chunked bodies) to apply
faults to chosen *requests*, not only to connections, since clients keep
connections alive across many requests::

    with FaultProxy(upstream_port=reg.port) as proxy:
        proxy.add(Fault("status", method="PATCH", status=503, times=2))
        proxy.add(Fault("drop", method="PUT", path="/manifests/"))
        push_to(f"{proxy.host}/repo:tag")
        proxy.log  # [(method, path, outcome)], outcome: status code or fault name

Fault actions:
  status         answer `status` (503, 429...) without forwarding the request
  drop           close the client connection before forwarding anything
  drop_mid       forward the head and half the body, then close both sides
                 (the registry sees a client that vanished mid-upload)
  drop_response  forward the whole request, then close before the answer
                 (the registry did the work; the client never hears of it)
  stall          read the request and answer nothing until the client gives up
                 (bounded by `stall_seconds`)
  cut_response   forward the request, send the response head and half its
                 body, then close (a download that breaks off)
  corrupt        forward, but flip the first byte of the response body

`strip_request_headers` (lowercase names) are removed from every forwarded
request, e.g. ("range",) to play a server that ignores Range.

Bounded: at most `max_connections` concurrent connections, socket timeouts,
a maximum header size. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass
from typing import BinaryIO

MAX_HEAD = 64 * 1024
COPY_BLOCK = 256 * 1024


@dataclass
class Fault:
    action: str  # status | drop | drop_mid | drop_response | stall
    method: str | None = None  # None: any method
    path: str | None = None  # regex searched in the request path; None: any
    status: int = 503
    times: int = 1  # matching requests that get the fault; -1 = all of them
    after: int = 0  # matching requests let through before the first fault
    retry_after: str | None = None  # Retry-After header for status faults

    _seen: int = 0
    _applied: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        if self.path and not re.search(self.path, path):
            return False
        return True

    def take(self) -> bool:
        """Count one matching request; True when this one gets the fault."""
        self._seen += 1
        if self._seen <= self.after:
            return False
        if self.times >= 0 and self._applied >= self.times:
            return False
        self._applied += 1
        return True

    @property
    def applied(self) -> int:
        return self._applied


class _Closed(Exception):
    pass


class _NotHttp(Exception):
    pass


def _read_head(f: BinaryIO) -> bytes:
    lines = []
    total = 0
    # A TLS ClientHello (0x16) is not HTTP: answer like Go's server does, with a 400.
    if f.peek(1)[:1] == b"\x16":
        raise _NotHttp()
    while True:
        line = f.readline(MAX_HEAD + 1)
        if not line:
            if lines:
                raise _Closed("connection closed inside a message head")
            raise _Closed("eof")
        total += len(line)
        if total > MAX_HEAD:
            raise _Closed("message head too large")
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, _, v = line.partition(b":")
            out[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    return out


def _copy_exact(src: BinaryIO, dst: socket.socket | None, n: int) -> None:
    while n > 0:
        data = src.read(min(n, COPY_BLOCK))
        if not data:
            raise _Closed("body ended early")
        if dst is not None:
            dst.sendall(data)
        n -= len(data)


def _copy_chunked(src: BinaryIO, dst: socket.socket | None) -> None:
    while True:
        line = src.readline(1024)
        if not line:
            raise _Closed("chunked body ended early")
        if dst is not None:
            dst.sendall(line)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            # trailers, then the empty line
            while True:
                t = src.readline(MAX_HEAD)
                if dst is not None:
                    dst.sendall(t)
                if t in (b"\r\n", b"\n", b""):
                    return
        _copy_exact(src, dst, size + 2)  # data + CRLF


def _copy_body(src: BinaryIO, dst: socket.socket | None, headers: dict[str, str], limit: int | None = None) -> None:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        _copy_chunked(src, dst)
        return
    n = int(headers.get("content-length", "0") or 0)
    _copy_exact(src, dst, n if limit is None else min(limit, n))


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        max_connections: int = 32,
        stall_seconds: float = 30.0,
        timeout: float = 60.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.stall_seconds = stall_seconds
        self.timeout = timeout
        self.faults: list[Fault] = []
        self.strip_request_headers: tuple[str, ...] = ()
        self.log: list[tuple[str, str, int | str]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port: int | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def requests(self, method: str | None = None, path: str | None = None) -> list[tuple[str, str, int | str]]:
        with self._lock:
            return [
                e for e in self.log if (method is None or e[0] == method) and (path is None or re.search(path, e[1]))
            ]

    # -- lifecycle

    def start(self) -> FaultProxy:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.settimeout(0.2)
        self._listener = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self._threads:
            t.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(timeout=5):
                conn.close()
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="faultproxy-conn", daemon=True)
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)

    def _untrack(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        try:
            s.close()
        except OSError:
            pass

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(method, path) and f.take():
                    return f
        return None

    def _record(self, method: str, path: str, outcome: int | str) -> None:
        with self._lock:
            self.log.append((method, path, outcome))

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        up_file: BinaryIO | None = None
        self._track(client)
        client.settimeout(self.timeout)
        cfile = client.makefile("rb", buffering=COPY_BLOCK)
        try:
            while not self._stop.is_set():
                try:
                    head = _read_head(cfile)
                except _NotHttp:
                    client.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    return
                method, target = parts[0], parts[1]
                path = target.split("?", 1)[0]
                headers = _headers(head)
                fault = self._pick(method, path)
                action = fault.action if fault else "pass"
                if action == "drop":
                    self._record(method, path, "drop")
                    return
                if action == "stall":
                    self._record(method, path, "stall")
                    self._stop.wait(self.stall_seconds)
                    return
                if action == "status":
                    assert fault is not None
                    _copy_body(cfile, None, headers)
                    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault","detail":null}]}'
                    self._record(method, path, fault.status)  # before answering: the client may act at once
                    extra = f"Retry-After: {fault.retry_after}\r\n" if fault.retry_after else ""
                    client.sendall(
                        (
                            f"HTTP/1.1 {fault.status} Injected\r\nContent-Type: application/json\r\n"
                            f"Content-Length: {len(body)}\r\n{extra}\r\n"
                        ).encode()
                        + body
                    )
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=self.timeout)
                    self._track(upstream)
                    up_file = upstream.makefile("rb", buffering=COPY_BLOCK)
                assert up_file is not None
                if self.strip_request_headers:
                    kept = [
                        ln
                        for ln in head.split(b"\r\n")
                        if ln.split(b":", 1)[0].strip().lower().decode("latin-1") not in self.strip_request_headers
                    ]
                    head = b"\r\n".join(kept)
                upstream.sendall(head)
                if action == "drop_mid":
                    n = int(headers.get("content-length", "0") or 0)
                    _copy_body(cfile, upstream, headers, limit=n // 2)
                    self._record(method, path, "drop_mid")
                    return
                _copy_body(cfile, upstream, headers)
                resp_head = _read_head(up_file)
                status = int(resp_head.split(b" ", 2)[1])
                resp_headers = _headers(resp_head)
                if action == "drop_response":
                    self._drain_response(up_file, method, status, resp_headers, None)
                    self._record(method, path, "drop_response")
                    return
                # Logged before the client sees the answer, so a test never races the log.
                self._record(method, path, action if action in ("corrupt", "cut_response") else status)
                client.sendall(resp_head)
                if action == "corrupt" and method != "HEAD":
                    first = up_file.read(1)
                    if first:
                        client.sendall(bytes([first[0] ^ 0xFF]))
                    n = int(resp_headers.get("content-length", "0") or 0)
                    _copy_exact(up_file, client, max(0, n - len(first)))
                    continue
                if action == "cut_response":
                    n = int(resp_headers.get("content-length", "0") or 0)
                    _copy_exact(up_file, client, n // 2)
                    return
                self._drain_response(up_file, method, status, resp_headers, client)
                if resp_headers.get("connection", "").lower() == "close":
                    return
        except (_Closed, OSError, ValueError):
            import os
            import traceback

            if os.environ.get("FAULTPROXY_DEBUG"):
                traceback.print_exc()
            return
        finally:
            if up_file is not None:
                up_file.close()
            if upstream is not None:
                self._untrack(upstream)
            cfile.close()
            self._untrack(client)
            self._slots.release()

    @staticmethod
    def _drain_response(
        src: BinaryIO, method: str, status: int, headers: dict[str, str], dst: socket.socket | None
    ) -> None:
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return
        if "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" in headers:
            _copy_body(src, dst, headers)
            return
        # no length: body runs to connection close
        while True:
            data = src.read(COPY_BLOCK)
            if not data:
                raise _Closed("upstream closed")
            if dst is not None:
                dst.sendall(data)
