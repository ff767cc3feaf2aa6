"""Registry failures: one HTTP error type, one status check, one retryable marker."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import requests

from converter.errors import AuthError, RegistryError
from converter.jsonload import load_json

#: Statuses worth retrying (the registry or a proxy is busy or failing for now).
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
#: Registry error bodies are small; a bigger one is not parsed for its codes.
MAX_ERROR_BODY = 64 * 1024


class Transient(Exception):
    """A failure worth retrying (dropped connection, 429, 5xx, a stalled answer)."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryHTTPError(RegistryError):
    """The registry answered a request with a status the caller cannot use."""

    def __init__(
        self, message: str, *, status: int, codes: Iterable[str] = (), method: str = "", url: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.codes = frozenset(codes)
        self.method = method
        self.url = url

    @property
    def temporary(self) -> bool:
        return self.status in RETRY_STATUS


_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def printable(text: str, limit: int = 300) -> str:
    """Text from a registry made safe for a terminal: control characters escaped, length bounded."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else _ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        for c in text
    )


def _error_doc(resp: requests.Response) -> Any:
    """The registry's JSON error body, None when there is none (or it is not JSON)."""
    cached = getattr(resp, "_zconv_error_doc", False)
    if cached is not False:
        return cached
    doc = None
    try:
        if resp._content is False:  # streamed and not read yet (a private field of requests.Response)
            data = resp.raw.read(MAX_ERROR_BODY + 1, decode_content=True) or b""
        else:
            data = resp.content or b""
        if data and len(data) <= MAX_ERROR_BODY:
            doc = load_json(data, "registry error", max_size=MAX_ERROR_BODY)
    except Exception:  # noqa: BLE001 - an unreadable error body only costs the detail
        doc = None
    try:
        resp._zconv_error_doc = doc  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return doc


def _errors(resp: requests.Response) -> list[dict[str, Any]]:
    doc = _error_doc(resp)
    errs = doc.get("errors") if isinstance(doc, dict) else None
    return [e for e in errs if isinstance(e, dict)] if isinstance(errs, list) else []


def error_detail(resp: requests.Response) -> str:
    """The registry's error code/message ("MANIFEST_UNKNOWN: manifest unknown"), else the HTTP reason."""
    parts = []
    for e in _errors(resp)[:3]:
        code = e.get("code") or ""
        msg = e.get("message") or ""
        code = code if isinstance(code, str) else str(code)
        msg = msg if isinstance(msg, str) else str(msg)
        parts.append(f"{code}: {msg}" if code and msg else code or msg)
    parts = [printable(p) for p in parts if p]
    if parts:
        return "; ".join(parts)
    return printable(f"HTTP {resp.status_code} {resp.reason or ''}".strip())


def error_codes(resp: requests.Response) -> set[str]:
    return {str(e.get("code")) for e in _errors(resp)}


def conn_error_text(e: BaseException) -> str:
    text = str(e)
    if "Connection refused" in text or "ECONNREFUSED" in text:
        return "connection refused"
    if (
        "Name or service not known" in text
        or "nodename nor servname" in text
        or "Temporary failure in name resolution" in text
    ):
        return "host name not found"
    if isinstance(e, requests.exceptions.Timeout):
        return "timed out"
    if "RemoteDisconnected" in text or "Connection aborted" in text or "Connection reset" in text:
        return "connection dropped"
    return text.splitlines()[0][:200] if text else type(e).__name__


def transient_for(resp: requests.Response) -> Transient:
    """The retryable failure a 429/5xx answer stands for (closes the response)."""
    detail = error_detail(resp)
    if not detail.startswith("HTTP "):
        detail = f"HTTP {resp.status_code} ({detail})"
    retry_after = resp.headers.get("Retry-After")
    resp.close()
    return Transient(detail, retry_after)


def check_status(
    resp: requests.Response,
    *ok: int,
    what: str,
    action: str,
    auth_failed: Callable[[requests.Response], AuthError] | None = None,
    not_found: str | None = None,
    name_unknown: str | None = None,
) -> requests.Response:
    """Return `resp` when its status is one of `ok`, else raise the error it stands for.

    401/403 -> `auth_failed(resp)`; 404 with NAME_UNKNOWN -> `name_unknown`;
    other 404 -> `not_found`; anything else -> "`what`: `action`: detail".
    """
    status = resp.status_code
    if status in ok:
        return resp
    req = resp.request
    codes = error_codes(resp)
    method = req.method or "" if req else ""
    url = (req.url or "") if req else ""
    resp.close()
    if status in (401, 403) and auth_failed is not None:
        raise auth_failed(resp)
    if status == 404 and name_unknown and "NAME_UNKNOWN" in codes:
        raise RegistryHTTPError(name_unknown, status=status, codes=codes, method=method, url=url)
    if status == 404 and not_found:
        raise RegistryHTTPError(not_found, status=status, codes=codes, method=method, url=url)
    raise RegistryHTTPError(
        f"{what}: {action}: {error_detail(resp)}", status=status, codes=codes, method=method, url=url
    )
