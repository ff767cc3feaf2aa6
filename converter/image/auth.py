"""Registry credentials: where podman looks for them, and `zconv login`.

Lookup order follows containers/image (pkg/docker/config), so a `podman
login` is honoured by zconv and a `zconv login` by podman:

1. ``$REGISTRY_AUTH_FILE`` if set, else ``${XDG_RUNTIME_DIR}/containers/auth.json``
   (``/run/containers/$UID/auth.json`` when XDG_RUNTIME_DIR is unset) —
   the file `login` writes;
2. ``${XDG_CONFIG_HOME:-~/.config}/containers/auth.json``;
3. ``${DOCKER_CONFIG:-~/.docker}/config.json``;
4. ``~/.dockercfg`` (the legacy docker format: entries at the top level).

The first file holding an entry for the registry wins. Inside a file, a key
may name a repository namespace (``host/ns/repo``); the longest one matching
the reference wins, as in podman. ``credHelpers``/``credsStore`` entries run
``docker-credential-<name> get`` like docker does.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from converter.errors import AuthError, UsageError
from converter.fsutil import write_file_atomic

DOCKER_IO = "docker.io"
_DOCKER_IO_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # where they came from, for error messages ("--creds", a file path)

    def basic_token(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def parse_creds(value: str) -> Credentials:
    """`--creds USER[:PASS]` as podman takes it (the password may contain ':')."""
    user, sep, password = value.partition(":")
    if not user or not sep:
        raise UsageError("--creds must be USER:PASSWORD")
    return Credentials(user, password, "--creds")


def primary_auth_file() -> Path:
    """The file `zconv login` writes (podman's default --authfile)."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "containers" / "auth.json"
    return Path(f"/run/containers/{os.getuid()}/auth.json")


def auth_file_candidates(auth_file: str | os.PathLike | None = None) -> list[tuple[Path, bool]]:
    """(path, legacy_format) in lookup order; `auth_file` (--authfile) replaces the first one."""
    home = Path(os.path.expanduser("~"))
    xdg_config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    docker_dir = Path(os.environ.get("DOCKER_CONFIG") or home / ".docker")
    return [
        (Path(auth_file) if auth_file else primary_auth_file(), False),
        (xdg_config / "containers" / "auth.json", False),
        (docker_dir / "config.json", False),
        (home / ".dockercfg", True),
    ]


def _normalize_key(key: str) -> str:
    """Auth file keys may be URLs (docker's "https://index.docker.io/v1/")."""
    key = key.strip()
    if key in _DOCKER_IO_ALIASES:
        return DOCKER_IO
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            # docker writes "https://host/v1/": only the host part counts then
            host, _, rest = key.partition("/")
            if rest.strip("/") in ("v1", "v2", ""):
                key = host
            break
    key = key.rstrip("/")
    if key in _DOCKER_IO_ALIASES:
        return DOCKER_IO
    return key


def _decode_entry(entry: dict, path: Path) -> tuple[str, str] | None:
    auth = entry.get("auth")
    if auth:
        try:
            user, _, password = base64.b64decode(auth).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as e:
            raise AuthError(f"{path}: invalid base64 'auth' entry ({e})") from None
        return user, password
    if entry.get("username") and entry.get("password") is not None:
        return entry["username"], entry["password"]
    return None


def _cred_helper(helper: str, host: str) -> tuple[str, str] | None:
    binary = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([binary, "get"], input=host.encode(), capture_output=True, timeout=60)
    except FileNotFoundError:
        raise AuthError(f"credential helper {binary} (configured for {host}) is not installed") from None
    if proc.returncode != 0:
        # helpers answer "credentials not found in native keychain": not an error
        return None
    try:
        payload = json.loads(proc.stdout)
        return payload["Username"], payload["Secret"]
    except (ValueError, KeyError):
        raise AuthError(f"credential helper {binary} returned unreadable output for {host}") from None


def _read_json(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuthError(f"cannot read auth file {path}: {e.strerror}") from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise AuthError(f"auth file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise AuthError(f"auth file {path} is not a JSON object")
    return data


def lookup_credentials(
    host: str, repository: str | None = None, auth_file: str | os.PathLike | None = None
) -> Credentials | None:
    """Credentials for `host` (and optionally `host/repository`), or None."""
    host = _normalize_key(host)
    wanted = [host]
    if repository:
        parts = repository.split("/")
        # longest namespace first: host/a/b/c, host/a/b, host/a, host
        wanted = [f"{host}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)] + [host]
    for path, legacy in auth_file_candidates(auth_file):
        data = _read_json(path)
        if data is None:
            continue
        auths = data if legacy else data.get("auths") or {}
        normalized: dict[str, dict] = {}
        for key, entry in auths.items():
            if isinstance(entry, dict):
                normalized.setdefault(_normalize_key(key), entry)
        for key in wanted:
            helper = (data.get("credHelpers") or {}).get(key) if not legacy else None
            if helper:
                found = _cred_helper(helper, key)
                if found:
                    return Credentials(found[0], found[1], f"docker-credential-{helper}")
            entry = normalized.get(key)
            if entry is not None:
                found = _decode_entry(entry, path)
                if found:
                    return Credentials(found[0], found[1], str(path))
        store = None if legacy else data.get("credsStore")
        if store:
            found = _cred_helper(store, host)
            if found:
                return Credentials(found[0], found[1], f"docker-credential-{store}")
    return None


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file_atomic(path, (json.dumps(data, indent="\t") + "\n").encode(), mode=0o600)


def store_credentials(host: str, creds: Credentials, path: Path | None = None) -> Path:
    """Add or replace the entry for `host` in the auth file podman reads."""
    path = path or primary_auth_file()
    data = _read_json(path) or {}
    auths = data.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise AuthError(f"auth file {path}: 'auths' is not an object")
    key = _normalize_key(host)
    for old in [k for k in auths if _normalize_key(k) == key]:
        del auths[old]
    auths[key] = {"auth": creds.basic_token()}
    _write_json_atomic(path, data)
    return path


def remove_credentials(host: str, path: Path | None = None) -> bool:
    path = path or primary_auth_file()
    data = _read_json(path)
    if not data or not isinstance(data.get("auths"), dict):
        return False
    key = _normalize_key(host)
    old = [k for k in data["auths"] if _normalize_key(k) == key]
    for k in old:
        del data["auths"][k]
    if old:
        _write_json_atomic(path, data)
    return bool(old)
