"""Manifests and tags."""

from __future__ import annotations

from typing import TYPE_CHECKING

from converter.errors import BadInputError, RegistryError
from converter.image.model import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    new_hasher,
    sha256_digest,
    short,
)
from converter.image.registry.blobs import read_body
from converter.image.registry.core import ClientCore
from converter.image.registry.errors import check_status, error_codes, error_detail
from converter.image.registry.http import resolve_url
from converter.jsonload import load_json

if TYPE_CHECKING:
    pass

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_TAG_PAGES = 10000


class ManifestsMixin(ClientCore):
    """Manifest and tag operations of RegistryClient (self is the client)."""

    def get_manifest(self, repo: str, ref: str, accept: str = MANIFEST_ACCEPT) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest `ref` (tag or digest) names."""
        what = f"{self.host}/{repo}:{ref}" if not ref.startswith("sha") else f"{self.host}/{repo}@{ref}"
        resp = self.request(
            "GET",
            f"/v2/{repo}/manifests/{ref}",
            repository=repo,
            scopes=self._pull(repo),
            headers={"Accept": accept},
            stream=True,
            what=what,
        )
        with resp:
            check_status(
                resp,
                200,
                what=what,
                action="GET manifest failed",
                auth_failed=lambda r: self._auth_failed(r, repo, what),
                name_unknown=f"{what}: repository {repo} not found on {self.host}",
                not_found=f"{what}: manifest unknown (no such tag or digest in the repository)",
            )
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_SIZE:
                raise BadInputError(f"{what}: manifest is {declared} bytes, over the {MAX_MANIFEST_SIZE}-byte limit")
            data = read_body(resp, MAX_MANIFEST_SIZE + 1, what)
            if len(data) > MAX_MANIFEST_SIZE:
                raise BadInputError(f"{what}: manifest is over the {MAX_MANIFEST_SIZE}-byte limit")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if ref.startswith("sha256:") or ref.startswith("sha512:"):
            h = new_hasher(ref)
            h.update(data)
            if f"{ref.split(':')[0]}:{h.hexdigest()}" != ref:
                raise BadInputError(f"{what}: manifest content does not match its digest")
            digest = ref
        else:
            digest = sha256_digest(data)
        return data, media_type, digest

    def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        resp = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{ref}",
            repository=repo,
            scopes=self._pull(repo),
            headers={"Accept": MANIFEST_ACCEPT},
            what=f"{self.host}/{repo}:{ref}",
        )
        resp.close()
        if resp.status_code != 200:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        size = resp.headers.get("Content-Length")
        mt = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest or not size or not size.isdigit():
            return None
        return Descriptor(media_type=mt, digest=digest, size=int(size))

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        what = (
            f"{self.host}/{repo}:{ref}: writing the tag"
            if not ref.startswith("sha")
            else f"{self.host}/{repo}@{short(ref)}: pushing manifest"
        )
        if len(data) > MAX_MANIFEST_SIZE:
            raise BadInputError(
                f"{what}: manifest is {len(data)} bytes, over the {MAX_MANIFEST_SIZE}-byte limit registries accept"
            )
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            repository=repo,
            scopes=self._push(repo),
            headers={"Content-Type": media_type},
            body=lambda: data,
            what=what,
        )
        resp.close()
        if resp.status_code in (200, 201, 202):
            digest = sha256_digest(data)
            got = resp.headers.get("Docker-Content-Digest")
            if got and got != digest:
                raise RegistryError(f"{what}: registry stored the manifest as {got[:80]}, expected {digest}")
            return digest
        if resp.status_code == 413:
            raise BadInputError(f"{what}: registry refused the manifest as too large ({len(data)} bytes)")
        codes = error_codes(resp)
        if resp.status_code not in (401, 403) and ("MANIFEST_BLOB_UNKNOWN" in codes or "BLOB_UNKNOWN" in codes):
            raise RegistryError(
                f"{what}: registry says blobs the manifest references are missing: {error_detail(resp)}"
            )
        check_status(
            resp, what=what, action="PUT manifest failed", auth_failed=lambda r: self._auth_failed(r, repo, what)
        )
        raise AssertionError("unreachable")

    def list_tags(self, repo: str) -> list[str]:
        tags: list[str] = []
        path = f"/v2/{repo}/tags/list"
        where = f"{self.host}/{repo}"
        for _ in range(MAX_TAG_PAGES):
            resp = self.request("GET", path, repository=repo, scopes=self._pull(repo), what=where)
            check_status(
                resp,
                200,
                what=where,
                action="listing tags failed",
                auth_failed=lambda r: self._auth_failed(r, repo, where),
                not_found=f"{where}: repository not found",
            )
            doc = load_json(resp.content, f"{where}: tag list")
            page = doc.get("tags") if isinstance(doc, dict) else None
            if page is not None and not (isinstance(page, list) and all(isinstance(t, str) for t in page)):
                raise BadInputError(f"{where}: tag list is not a list of strings")
            tags.extend(page or [])
            nxt = resp.links.get("next", {}).get("url")
            if not nxt:
                break
            # A next page on another host is fetched without our credentials (Transport.send decides).
            path = resolve_url(resp.url, nxt, f"{where}: next page")
        return sorted(set(tags))
