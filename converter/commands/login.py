"""`zconv login HOST` / `zconv logout HOST`: the auth file podman and zconv both read."""

from __future__ import annotations

import getpass
import pathlib
import sys

import typer

from converter.cli_app import app
from converter.commands import CERT_DIR_HELP, TIMEOUT_HELP, TLS_HELP, parse_bool
from converter.errors import UsageError
from converter.image import auth as authmod


def _split_host(target: str) -> tuple[str, str]:
    """ "docker://host/ns" or "host/ns" -> (registry host, auth file key)."""
    for prefix in ("docker://", "https://", "http://"):
        if target.startswith(prefix):
            target = target[len(prefix) :]
    target = target.rstrip("/")
    if not target:
        raise UsageError("login needs a registry host, e.g. zconv login registry.example.com")
    host = target.split("/", 1)[0]
    return host, target


def login_registry(
    target: str,
    username: str,
    password: str,
    *,
    tls_verify: bool = True,
    cert_dir: str | None = None,
    auth_file: str | None = None,
    source: str = "--password",
    timeout: float = 60.0,
) -> str:
    """Check the credentials against the registry, then store them; returns the auth file path.

    `source` says where the password came from, for the message when the registry rejects it.
    Two retries only, a second apart: a person is waiting, and a rejected password is not retried.
    """
    host, key = _split_host(target)
    if not username:
        raise UsageError(f"login {host}: a username is required")
    if not password:
        raise UsageError(f"login {host}: a password is required")
    from converter.image.registry import RegistryClient, RetryPolicy  # the HTTP stack: only when used

    with RegistryClient(
        host,
        creds=authmod.Credentials(username, password, source),
        tls_verify=tls_verify,
        cert_dir=cert_dir,
        retry=RetryPolicy(retries=2, delay=1.0),
        timeout=timeout,
    ) as client:
        client.check_login()
    path = authmod.store_credentials(
        key,
        authmod.Credentials(username, password, "login"),
        path=None if auth_file is None else pathlib.Path(auth_file),
    )
    return str(path)


@app.command()
def login(
    registry: str = typer.Argument(..., help="registry host[:port] (optionally /namespace)"),
    username: str = typer.Option(None, "--username", "-u", help="user name (prompted when missing)"),
    password: str = typer.Option(
        None, "--password", "-p", help="password (prompted when missing; prefer --password-stdin)"
    ),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from standard input"),
    authfile: str = typer.Option(
        None,
        "--authfile",
        help="auth file to write (default: $REGISTRY_AUTH_FILE or ${XDG_RUNTIME_DIR}/containers/auth.json)",
    ),
    tls_verify: str = typer.Option("true", "--tls-verify", help=TLS_HELP, metavar="BOOL"),
    cert_dir: str = typer.Option(None, "--cert-dir", help=CERT_DIR_HELP, metavar="DIR"),
    timeout: float = typer.Option(60.0, "--timeout", help=TIMEOUT_HELP, metavar="SECONDS"),
) -> None:
    """Log in to a registry: check the credentials and store them where podman looks."""
    verify = parse_bool(tls_verify, "--tls-verify")
    if password and password_stdin:
        raise UsageError("--password and --password-stdin are mutually exclusive")
    user = username
    pw = password
    source = "--password"
    if password_stdin:
        if not user:
            raise UsageError("--password-stdin needs --username")
        pw = sys.stdin.readline().rstrip("\r\n")
        source = "--password-stdin (standard input)"
    if not user:
        user = input("Username: ").strip()
    if not pw:
        pw = getpass.getpass("Password: ")
        source = "the password prompt"
    if not timeout > 0:
        raise UsageError(f"--timeout takes a number of seconds > 0, not {timeout}")
    path = login_registry(
        registry, user, pw, tls_verify=verify, cert_dir=cert_dir, auth_file=authfile, source=source, timeout=timeout
    )
    print(f"Login Succeeded! (credentials stored in {path})")


@app.command()
def logout(
    registry: str = typer.Argument(..., help="registry host[:port] (optionally /namespace)"),
    authfile: str = typer.Option(None, "--authfile", help="auth file to edit"),
) -> None:
    """Remove stored credentials for a registry from the auth file."""
    _, key = _split_host(registry)
    removed = authmod.remove_credentials(key, pathlib.Path(authfile) if authfile else None)
    if not removed:
        raise UsageError(f"not logged in to {key}")
    print(f"Removed login credentials for {key}")
