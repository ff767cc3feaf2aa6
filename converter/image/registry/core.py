"""What the mixins of RegistryClient (blobs, manifests, rangecheck) use of the client.

Declarations for the type checker only, except get_blob_ranges (shared by
the blob and range-check mixins): RegistryClient (client.py) defines the
rest. The mixins subclass ClientCore instead of annotating `self` with
RegistryClient, which the type checker cannot accept (RegistryClient is a
subclass of the mixin, not a supertype of it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import requests

    from converter.errors import AuthError
    from converter.image.registry.errors import Transient
    from converter.image.registry.http import Transport
    from converter.image.registry.upload_sessions import UploadSessions


class ClientCore:
    host: str
    chunk_size: int
    http: Transport
    uploads: UploadSessions

    if TYPE_CHECKING:

        def request(
            self,
            method: str,
            path: str,
            *,
            repository: str | None,
            scopes: tuple[str, ...] = (),
            headers: dict[str, str] | None = None,
            body: Callable[[], Any] | None = None,
            stream: bool = False,
            what: str = "",
            retry: bool = True,
        ) -> requests.Response: ...

        def count(self, what: str, n: int = 1) -> None: ...

        def _log(self, msg: str) -> None: ...

        def _backoff(self, attempt: int, err: Transient, what: str) -> None: ...

        def _auth_failed(self, resp: requests.Response, repository: str | None, what: str) -> AuthError: ...

        @staticmethod
        def _pull(repo: str) -> tuple[str, ...]: ...

        @staticmethod
        def _push(repo: str, *mount_from: str) -> tuple[str, ...]: ...

        def _raise_for_blob(self, resp: requests.Response, repo: str, digest: str) -> None: ...

    def get_blob_ranges(self, repo: str, digest: str, ranges: str, what: str) -> requests.Response:
        """A streamed GET of byte ranges of a blob ("0-9,100-199"); identity encoding, so offsets are the blob's."""
        return self.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            repository=repo,
            scopes=self._pull(repo),
            headers={"Range": f"bytes={ranges}", "Accept-Encoding": "identity"},
            stream=True,
            what=what,
        )
