"""containers-storage:[STORE]IMAGE: read images straight from podman's/buildah's local store.

No podman process and no `podman save`: the source reads the store's records
(`<driver>-images/images.json`, `<driver>-layers/layers.json`), the manifest
and config stored with the image (big-data files in `<driver>-images/<id>/`),
and rebuilds every layer's original tar from its tar-split plus the files in
the layer's diff directory (layer.py), checking each against its DiffID.

The image it presents is the stored manifest with every layer replaced by its
uncompressed tar (`application/vnd.oci.image.layer.v1.tar`, digest = DiffID,
size = its uncompressed size) and no per-layer annotations, the config kept
byte for byte: what `podman save --format oci-archive` writes for the image,
so converting either gives the same layers.

Read locks (lock.py) are held from opening to close(), so a concurrent
`podman build`, `podman rmi` or pull cannot change the store under us.

IMAGE, as skopeo and podman write it: NAME[:TAG], NAME@DIGEST, @ID, ID or a
unique ID prefix (at least 3 hex digits). Short names also match the
`localhost/` and `docker.io/library/` names podman gives images.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from converter.errors import BadInputError
from converter.image.model import (
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    OCI_LAYER_TAR,
    Descriptor,
    ImageSource,
    Manifest,
    VerifyingReader,
    descriptor_for,
    parse_manifest_or_index,
    sha256_digest,
    short,
    verify_bytes,
)
from converter.image.storage import userns
from converter.image.storage.layer import LayerFiles, LayerReader, RebuiltTar
from converter.image.storage.lock import ReadLocks, say_on_stderr
from converter.image.storage.lock import lock_timeout as default_lock_timeout
from converter.image.storage.store import Store, StoreSpec, find_store, parse_reference

__all__ = ["StorageSource", "parse_reference", "find_store", "Store", "StoreSpec"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEXPREFIX = re.compile(r"^[0-9a-f]{3,64}$")
_BIGDATA_PLAIN = re.compile(r"^[.0-9a-z]*$")


def big_data_file_name(key: str) -> str:
    """containers/storage's file name for an image's big-data item (store.go makeBigDataBaseName)."""
    if _BIGDATA_PLAIN.match(key):
        return key
    return "=" + base64.b64encode(key.encode("utf-8")).decode("ascii")


def _name_candidates(name: str) -> list[str]:
    """The stored names a user-written NAME[:TAG] can mean, most literal first."""
    last = name.rsplit("/", 1)[-1]
    with_tag = name if ":" in last else name + ":latest"
    out = [name, with_tag]
    first = with_tag.split("/", 1)[0]
    if "/" not in with_tag or not ("." in first or ":" in first or first == "localhost"):
        out.append("localhost/" + with_tag)
        out.append("docker.io/" + ("library/" + with_tag if "/" not in with_tag else with_tag))
    return list(dict.fromkeys(out))


def _load_json_file(path: str, what: str, limit: int) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BadInputError(f"{what}: cannot read {path} ({e.strerror})") from None
    if len(data) > limit:
        raise BadInputError(f"{what}: {path} is larger than {limit} bytes")
    try:
        return json.loads(data) if data.strip() else []
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInputError(f"{what}: {path} is not valid JSON ({e})") from None


@dataclass(frozen=True)
class _Layer:
    id: str
    diff_id: str
    size: int
    tarsplit: str
    dirs: tuple[str, ...]


class StorageSource(ImageSource):
    def __init__(self, spec: StoreSpec | None, image: str, description: str, lock_timeout: float | None = None) -> None:
        self.description = description
        self.store = find_store(spec)
        self.image = image
        self.reference_tag = None
        # Before the locks: `podman unshare` cannot start while we hold them (userns.py).
        self._files, self._no_userns = userns.acquire(
            self.store.graphroot,
            lock_timeout if lock_timeout is not None else default_lock_timeout(),
            say_on_stderr,
        )
        self._locks = ReadLocks(
            [
                os.path.join(self.store.graphroot, "storage.lock"),
                os.path.join(self.store.layers_dir, "layers.lock"),
                os.path.join(self.store.images_dir, "images.lock"),
            ],
            description,
            timeout=lock_timeout,
        )
        try:
            self._locks.__enter__()
            try:
                # Waiting on storage.lock waits out a driver operation in flight; the
                # layer and image locks are what keep our records and files still.
                self._locks.release(os.path.join(self.store.graphroot, "storage.lock"))
                self._load()
            except BaseException:
                self._locks.release()
                raise
        except BaseException:
            userns.release(self._files)
            raise

    # ------------------------------------------------------------ loading

    def _find_image(self, images: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
        want = self.image
        by_id = {img.get("id"): img for img in images if isinstance(img, dict)}
        ident = want[1:] if want.startswith("@") else want
        ident = ident.removeprefix("sha256:") if want.startswith(("@", "sha256:")) else ident
        if _HEX64.match(ident) and ident in by_id:
            return by_id[ident], None
        digest = None
        name = want
        if "@" in want and not want.startswith("@"):
            name, _, digest = want.partition("@")
        if not want.startswith("@"):
            for cand in _name_candidates(name) if digest is None else [name]:
                for img in by_id.values():
                    names = [n for n in img.get("names") or [] if isinstance(n, str)]
                    if digest is not None:
                        bare = {n.rsplit(":", 1)[0] if ":" in n.rsplit("/", 1)[-1] else n for n in names}
                        digests = set(img.get("digests") or []) | {img.get("digest")}
                        if bare & {c.rsplit(":", 1)[0] for c in _name_candidates(name)} and digest in digests:
                            return img, None
                    elif cand in names:
                        last = cand.rsplit("/", 1)[-1]
                        return img, last.rsplit(":", 1)[1] if ":" in last else None
        if _HEXPREFIX.match(ident):
            hits = [img for i, img in by_id.items() if isinstance(i, str) and i.startswith(ident)]
            if len(hits) == 1:
                return hits[0], None
            if len(hits) > 1:
                raise BadInputError(
                    f"{self.description}: ID prefix {ident!r} matches {len(hits)} images; give more digits"
                )
        raise BadInputError(f"{self.description}: no image {want!r} in the store {self.store}")

    def _big_data(self, image_id: str, key: str, limit: int) -> bytes:
        path = os.path.join(self.store.images_dir, image_id, big_data_file_name(key))
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise BadInputError(f"{self.description}: image {image_id[:12]} has no {key!r} stored ({path})") from None
        except OSError as e:
            raise BadInputError(f"{self.description}: cannot read {path} ({e.strerror})") from None
        if len(data) > limit:
            raise BadInputError(f"{self.description}: {path} is larger than {limit} bytes")
        return data

    def _stored_manifest(self, img: dict[str, Any]) -> Manifest:
        image_id = img["id"]
        keys = [k for k in img.get("big-data-names") or [] if isinstance(k, str) and k.startswith("manifest")]
        if "manifest" in keys:  # the main one first
            keys.remove("manifest")
            keys.insert(0, "manifest")
        found = None
        for key in keys:
            doc = parse_manifest_or_index(
                self._big_data(image_id, key, MAX_MANIFEST_SIZE), where=f"{self.description}: stored {key}"
            )
            if isinstance(doc, Manifest):
                if doc.config.digest == "sha256:" + image_id:
                    return doc
                found = found or doc
        if found is None:
            raise BadInputError(f"{self.description}: image {image_id[:12]} has no image manifest stored")
        return found

    def _layer_dirs(self, layer_id: str) -> tuple[str, ...]:
        root = self.store.graphroot
        if self.store.driver == "vfs":
            return (os.path.join(root, "vfs", "dir", layer_id),)
        base = os.path.join(root, "overlay")
        dirs = [os.path.join(base, layer_id, "diff")]
        try:
            with open(os.path.join(base, layer_id, "lower")) as f:
                lowers = f.read().strip()
        except OSError:
            lowers = ""
        for low in filter(None, lowers.split(":")):
            dirs.append(os.path.join(base, low))
        return tuple(dirs)

    def _load(self) -> None:
        st = self.store
        images = _load_json_file(os.path.join(st.images_dir, "images.json"), self.description, 256 << 20)
        if images is None:
            raise BadInputError(f"{self.description}: no image store in {st.graphroot} (driver {st.driver})")
        if not isinstance(images, list):
            raise BadInputError(f"{self.description}: {st.images_dir}/images.json is not a list of images")
        img, tag = self._find_image(images)
        self._image_id = img["id"]
        self.reference_tag = tag
        layers_doc = _load_json_file(os.path.join(st.layers_dir, "layers.json"), self.description, 256 << 20) or []
        records = {r.get("id"): r for r in layers_doc if isinstance(r, dict)}

        stored = self._stored_manifest(img)
        self._config = self._big_data(self._image_id, stored.config.digest, MAX_CONFIG_SIZE)
        config_desc = descriptor_for(stored.config.media_type, self._config)
        if config_desc.digest != stored.config.digest:
            raise BadInputError(
                f"{self.description}: stored config of image {self._image_id[:12]} does not match "
                f"its digest {short(stored.config.digest)}"
            )
        try:
            diff_ids = json.loads(self._config)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            raise BadInputError(
                f"{self.description}: config of image {self._image_id[:12]} has no rootfs.diff_ids"
            ) from None

        chain: list[dict[str, Any]] = []
        lid = img.get("layer") or ""
        while lid:
            rec = records.get(lid)
            if rec is None:
                raise BadInputError(
                    f"{self.description}: layer {lid[:12]} of image {self._image_id[:12]} is not in the store"
                )
            chain.append(rec)
            lid = rec.get("parent") or ""
            if len(chain) > 10000:
                raise BadInputError(f"{self.description}: layer chain of image {self._image_id[:12]} loops")
        chain.reverse()
        if len(chain) != len(diff_ids):
            raise BadInputError(
                f"{self.description}: image {self._image_id[:12]} has {len(chain)} layers but its "
                f"config lists {len(diff_ids)} diff_ids"
            )
        layer_mt = OCI_LAYER_TAR if stored.media_type != DOCKER_MANIFEST else DOCKER_LAYER_TAR
        self._layers: dict[str, _Layer] = {}
        descs = []
        for rec, diff_id in zip(chain, diff_ids):
            lid = rec["id"]
            what = f"{self.description}: layer {lid}"
            recorded = rec.get("diff-digest")
            if recorded and recorded != diff_id:
                raise BadInputError(f"{what} has DiffID {short(recorded)} but the config lists {short(diff_id)}")
            tarsplit = os.path.join(st.layers_dir, f"{lid}.tar-split.gz")
            if not os.path.exists(tarsplit):
                raise BadInputError(
                    f"{what} has no tar-split ({tarsplit}), so its original tar cannot be rebuilt; "
                    "use `podman save --format oci-archive` for this image"
                )
            layer = _Layer(lid, diff_id, rec.get("diff-size") or -1, tarsplit, self._layer_dirs(lid))
            if layer.size < 0:
                layer = replace(layer, size=self._measure(layer))
            self._layers[diff_id] = layer
            descs.append(Descriptor(layer_mt, diff_id, layer.size))
        mt = stored.media_type if stored.media_type in MANIFEST_TYPES else DOCKER_MANIFEST
        manifest = Manifest(
            mt,
            stored.config,
            tuple(descs),
            annotations=stored.annotations,
            subject=stored.subject,
            artifact_type=stored.artifact_type,
        )
        self._manifest = manifest.to_bytes()
        self._manifest_desc = descriptor_for(mt, self._manifest)
        self._tags = sorted(
            {n.rsplit("/", 1)[-1].rsplit(":", 1)[1] for n in img.get("names") or [] if ":" in n.rsplit("/", 1)[-1]}
        )

    def _layer_files(self, layer: _Layer, what: str) -> LayerFiles:
        return LayerFiles(list(layer.dirs), what, self._files, self._no_userns)

    def _measure(self, layer: _Layer) -> int:
        """Size of a layer whose record lacks it (old stores): one pass over the rebuilt tar."""
        n = 0
        with RebuiltTar(layer.tarsplit, self._layer_files(layer, f"{self.description}: layer {layer.id}")) as r:
            while True:
                data = r.read(1 << 20)
                if not data:
                    return n
                n += len(data)

    # ------------------------------------------------------------ ImageSource

    def list_tags(self) -> list[str]:
        return list(self._tags)

    def resolve(self, tag: str) -> Descriptor:
        t = tag.lstrip("@")
        if tag in self._tags or t == self._manifest_desc.digest or t.removeprefix("sha256:") == self._image_id:
            return self._manifest_desc
        raise BadInputError(
            f"{self.description}: the image has no tag {tag!r} (tags: {', '.join(self._tags) or 'none'})"
        )

    def targets(self) -> list[tuple[str | None, Descriptor]]:
        return [(self.reference_tag, self._manifest_desc)]

    def get_manifest(self, desc: Descriptor) -> bytes:
        if desc.digest != self._manifest_desc.digest:
            raise BadInputError(f"{self.description}: no manifest {desc.digest}")
        return verify_bytes(self._manifest, desc, f"{self.description}: manifest {short(desc.digest)}")

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        if desc.digest == sha256_digest(self._config):
            import io

            return VerifyingReader(io.BytesIO(self._config), desc.digest, desc.size, f"{self.description}: config")
        layer = self._layers.get(desc.digest)
        if layer is None:
            raise BadInputError(f"{self.description}: blob {desc.digest} is not part of image {self._image_id[:12]}")
        what = f"{self.description}: layer {layer.id}"
        raw = RebuiltTar(layer.tarsplit, self._layer_files(layer, what))
        return LayerReader(raw, layer.diff_id, layer.size, what, what)

    def close(self) -> None:
        self._locks.release()
        files, self._files = self._files, userns.LocalFiles()
        userns.release(files)  # after the locks: the helper's podman takes them as it exits
