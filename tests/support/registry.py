"""A real OCI registry for tests: Debian's docker-registry on 127.0.0.1.

Usage::

    with RegistryServer() as reg:                     # anonymous, plain http
        push_to(f"{reg.host}/demo:v1")                # reg.host == "127.0.0.1:PORT"

    with RegistryServer(auth=("alice", "s3cret")) as reg:          # htpasswd basic auth
        ...
    cert, key = make_self_signed_cert(tmp_path)
    with RegistryServer(tls=(cert, key)) as reg:                   # https (reg.url starts https://)
        ...

Attributes: ``url`` ("http[s]://127.0.0.1:PORT"), ``host`` ("127.0.0.1:PORT"),
``port``, ``scheme``, ``username``/``password`` (None when anonymous),
``ca_cert`` (the cert path when TLS), ``storage_dir`` (registry's files),
``log_path`` (its stdout/stderr). ``ref(repo, tag)`` gives "127.0.0.1:PORT/repo:tag".

Everything lives in a fresh temporary directory (or ``workdir``), removed by
``stop()`` unless ``keep=True``. A missing binary, a registry that dies or
never answers raises ``RegistryStartError`` with the reason and the log tail:
tests that need a registry must fail loudly, never skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REGISTRY_BIN = "/usr/bin/docker-registry"


class RegistryStartError(RuntimeError):
    """The registry could not be started (binary missing, crashed, never answered)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """Write a bcrypt htpasswd file (the only hash docker-registry accepts)."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RegistryStartError("htpasswd not found (Debian package apache2-utils; run .ci/sysdeps)")
    lines = []
    for user, password in users.items():
        out = subprocess.run(
            [htpasswd, "-Bbn", user, password], check=True, capture_output=True, text=True
        ).stdout.strip()
        lines.append(out)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_self_signed_cert(directory: str | os.PathLike, name: str = "registry") -> tuple[Path, Path]:
    """Create a self-signed cert/key for 127.0.0.1 and localhost with openssl.

    Returns (cert_path, key_path). The cert is its own CA: pass it as the CA
    bundle to clients (or put it in a certs.d-style dir as ca.crt).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class RegistryServer:
    """Start/stop one docker-registry process. See the module docstring."""

    def __init__(
        self,
        *,
        auth: tuple[str, str] | dict[str, str] | None = None,
        tls: tuple[str | os.PathLike, str | os.PathLike] | None = None,
        workdir: str | os.PathLike | None = None,
        keep: bool = False,
        start_timeout: float = 30.0,
    ) -> None:
        if isinstance(auth, tuple):
            auth = {auth[0]: auth[1]}
        self.users: dict[str, str] = dict(auth or {})
        self.tls = (Path(tls[0]), Path(tls[1])) if tls else None
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="zconv-registry-"))
        self.keep = keep
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"

    # -- public attributes -------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        if self.port is None:
            raise RuntimeError("registry not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def username(self) -> str | None:
        return next(iter(self.users), None)

    @property
    def password(self) -> str | None:
        return self.users.get(self.username) if self.username else None

    @property
    def ca_cert(self) -> Path | None:
        return self.tls[0] if self.tls else None

    def ref(self, repo: str, tag: str = "latest") -> str:
        """'127.0.0.1:PORT/repo:tag' (prefix with docker:// for containers/image)."""
        return f"{self.host}/{repo}:{tag}"

    # -- lifecycle ---------------------------------------------------------
    def _write_config(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage_dir}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: zconv-test-secret",
            "  headers:",
            "    X-Content-Type-Options: [nosniff]",
        ]
        if self.tls:
            lines += [
                "  tls:",
                f"    certificate: {self.tls[0]}",
                f"    key: {self.tls[1]}",
            ]
        if self.users:
            htpasswd = make_htpasswd(self.workdir / "htpasswd", self.users)
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: zconv-test",
                f"    path: {htpasswd}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _answers(self) -> bool:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls[0]))
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=ctx) as r:
                return r.status == 200
        except urllib.error.HTTPError as e:
            return e.code == 401 and bool(self.users)  # auth on: 401 means it is up
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> RegistryServer:
        if not os.access(REGISTRY_BIN, os.X_OK):
            raise RegistryStartError(f"{REGISTRY_BIN} not found (Debian package docker-registry; run .ci/sysdeps)")
        for _attempt in range(3):  # the free port can be taken between probe and bind
            self.port = _free_port()
            self._write_config()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # docker-registry reads REGISTRY_* variables as configuration: a user's
                # REGISTRY_AUTH_FILE (podman's) would become auth.file and stop it starting.
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
                    "OTEL_TRACES_EXPORTER": "none",
                },
            )
            log.close()
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self._answers():
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.stop(remove=False)
                raise RegistryStartError(
                    f"docker-registry on {self.host} did not answer /v2/ within "
                    f"{self.start_timeout:.0f}s; log:\n{self._log_tail()}"
                )
            if "address already in use" not in self._log_tail().lower():
                break
        raise RegistryStartError(f"docker-registry exited with code {self.proc.returncode}; log:\n{self._log_tail()}")

    def stop(self, remove: bool | None = None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove is None:
            remove = self._own_dir and not self.keep
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
