"""containers-storage: as a source, against stores the real podman wrote.

Each driver gets its own private store (storage.conf + CONTAINERS_STORAGE_CONF,
never the machine's), a base from `podman import` (xattr, hardlink) and an app
built on it (RUN with a hardlink and a whiteout, COPY layers). Converting it
from the store must give exactly what converting `podman save --format
oci-archive` of the same image gives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converter.convert import convert_refs
from converter.errors import BadInputError, UsageError
from converter.image.model import parse_manifest_or_index
from converter.image.refs import open_sink, open_source, parse_ref
from converter.image.storage import StorageSource
from converter.image.storage.store import StoreSpec, find_store, parse_reference
from support.podstore import build_app, make_store

APP = "localhost/zconv-app:1"


@pytest.fixture(scope="module", params=["overlay", "vfs"])
def store(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"store-{request.param}")
    st = make_store(work / "s", request.param)
    image_id = build_app(st, work)
    saved = work / "saved.tar"
    st.podman("save", "--format", "oci-archive", "-o", str(saved), APP)
    return {"st": st, "id": image_id, "saved": saved, "work": work}


@pytest.fixture
def conf_env(store, monkeypatch):
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(store["st"].conf))
    monkeypatch.setenv("ZCONV_STORAGE_LOCK_TIMEOUT", "30")
    return store


def _layout_manifest(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    return json.loads((layout / "blobs" / "sha256" / entry["digest"].split(":")[1]).read_text())


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converter.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# ------------------------------------------------------------------ references and store discovery


def test_reference_forms_parse():
    assert parse_reference("localhost/app:1", "r") == (None, "localhost/app:1")
    spec, image = parse_reference("[overlay@/var/lib/x+/run/x]app@sha256:" + "a" * 64, "r")
    assert spec == StoreSpec("overlay", "/var/lib/x", "/run/x") and image == "app@sha256:" + "a" * 64
    spec, image = parse_reference("[/g+/r:opt1,opt2]@" + "b" * 64, "r")
    assert spec == StoreSpec(None, "/g", "/r", ("opt1", "opt2")) and image == "@" + "b" * 64
    for bad in ("[overlay@/g", "[relative+/r]x", "[/g]", ""):
        with pytest.raises(UsageError):
            parse_reference(bad, "containers-storage:" + bad)
    assert parse_ref("containers-storage:app:1").transport == "containers-storage"
    with pytest.raises(UsageError, match="source only"):
        open_sink("containers-storage:app:1")


def test_store_found_like_containers_storage(tmp_path, monkeypatch):
    for var in ("CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "storage.conf"
    conf.write_text(
        '[storage]\ndriver = "vfs"\ngraphroot = "/srv/g"\nrunroot = "/srv/r"\n'
        'rootless_storage_path = "/srv/users/$UID"\n'
    )
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    st = find_store()
    assert (st.driver, st.graphroot, st.runroot, st.config_file) == ("vfs", "/srv/g", "/srv/r", str(conf))
    monkeypatch.setenv("STORAGE_DRIVER", "overlay")
    assert find_store().driver == "overlay"
    # the reference's specifier wins over the configuration
    assert find_store(StoreSpec("vfs", "/x", None)).graphroot == "/x"
    monkeypatch.delenv("STORAGE_DRIVER")
    monkeypatch.delenv("CONTAINERS_STORAGE_CONF")

    # a non-root user: ~/.config file when present, else the per-user store from a system file
    import converter.image.storage.store as store_mod

    monkeypatch.setattr(store_mod, "_is_root", lambda: False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setattr(store_mod, "SYSTEM_CONF", str(conf))
    st = find_store()
    assert st.graphroot == f"/srv/users/{os.getuid()}" and st.runroot == str(tmp_path / "run" / "containers")
    conf.write_text('[storage]\ndriver = "overlay"\n')
    st = find_store()
    assert st.graphroot == str(tmp_path / "data" / "containers" / "storage")
    user = tmp_path / "cfg" / "containers" / "storage.conf"
    user.parent.mkdir(parents=True)
    user.write_text('[storage]\ndriver = "vfs"\ngraphroot = "/home/u/g"\n')
    st = find_store()
    assert (st.driver, st.graphroot, st.config_file) == ("vfs", "/home/u/g", str(user))


def test_inside_podman_unshare_the_rootless_store_is_used(tmp_path, monkeypatch):
    """`podman unshare` runs us with euid 0 and $_CONTAINERS_ROOTLESS_UID: still the user's store."""
    import converter.image.storage.store as store_mod

    for var in ("CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "overlay"\nrootless_storage_path = "/srv/users/$UID"\n')
    monkeypatch.setattr(store_mod, "SYSTEM_CONF", str(conf))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("_CONTAINERS_ROOTLESS_UID", "4321")
    st = find_store()
    assert st.graphroot == "/srv/users/4321" and st.runroot.endswith("4321/containers")
    monkeypatch.setenv("_CONTAINERS_ROOTLESS_UID", "0")
    if os.geteuid() == 0:
        assert find_store().graphroot == "/var/lib/containers/storage"


# ------------------------------------------------------------------ the image, byte for byte


def test_store_image_converts_like_podman_save(conf_env, tmp_path):
    ours = tmp_path / "ours"
    theirs = tmp_path / "theirs"
    report = convert_refs(f"containers-storage:{APP}", f"oci:{ours}:v1")
    convert_refs(f"oci-archive:{conf_env['saved']}", f"oci:{theirs}:v1")
    m_ours, m_theirs = _layout_manifest(ours, "v1"), _layout_manifest(theirs, "v1")
    assert len(m_ours["layers"]) == 5  # import, RUN (hardlink), RUN (whiteout), 2 x COPY
    assert [layer["digest"] for layer in m_ours["layers"]] == [layer["digest"] for layer in m_theirs["layers"]]
    assert m_ours["config"]["digest"] == m_theirs["config"]["digest"] == "sha256:" + conf_env["id"]
    assert m_ours == m_theirs
    assert all(r.chunked for r in report.layers)
    # the source's layers are the uncompressed tars, digest = DiffID
    config = json.loads((ours / "blobs" / "sha256" / conf_env["id"]).read_text())
    assert [r.old_digest for r in report.layers] == config["rootfs"]["diff_ids"]


def test_image_named_by_id_prefix_short_name_and_store_specifier(conf_env, tmp_path, monkeypatch):
    st = conf_env["st"]
    image_id = conf_env["id"]
    digests = set()
    monkeypatch.delenv("CONTAINERS_STORAGE_CONF")
    spec = f"[{st.driver}@{st.graphroot}+{st.runroot}]"
    for image in [f"@{image_id}", image_id[:10], "zconv-app:1", APP]:
        with open_source(f"containers-storage:{spec}{image}") as src:
            ((tag, desc),) = src.targets()
            digests.add(desc.digest)
            assert tag == ("1" if ":" in image else None)
    assert len(digests) == 1
    with pytest.raises(BadInputError, match="no image 'nope'"):
        open_source(f"containers-storage:{spec}nope")


def test_hardlinks_xattrs_and_whiteout_survive(conf_env, tmp_path):
    import tarfile

    with open_source(f"containers-storage:{APP}") as src:
        ((_, desc),) = src.targets()
        manifest = parse_manifest_or_index(src.get_manifest(desc))
        members = {}
        for layer in manifest.layers:
            out = tmp_path / f"{layer.digest[7:19]}.tar"
            with src.open_blob(layer) as r, open(out, "wb") as f:
                shutil.copyfileobj(r, f)
                r.finish()
            with tarfile.open(out) as t:
                for m in t.getmembers():
                    members.setdefault(m.name, []).append(m)
    assert members["data/with-xattr"][0].pax_headers.get("SCHILY.xattr.user.zconv") == "kept"
    assert any(m.islnk() for m in members["data/hardlink"])
    assert any(m.islnk() for m in members.get("app/copied-hardlink", []))
    assert "data/.wh.removed-later" in members


def test_tampered_layer_fails_naming_the_layer(conf_env, tmp_path):
    with open_source(f"containers-storage:{APP}") as src:
        layers = list(src._layers.values())  # chain order
    victim = next(layer for layer in layers if (Path(layer.dirs[0]) / "app" / "payload.bin").exists())
    path = Path(victim.dirs[0]) / "app" / "payload.bin"
    original = path.read_bytes()
    try:
        path.write_bytes(original[:100] + b"X" + original[101:])
        with pytest.raises(BadInputError, match=f"layer {victim.id} does not rebuild to its DiffID"):
            convert_refs(f"containers-storage:{APP}", f"oci:{tmp_path / 'lib'}:v1")
        out = tmp_path / "cli"
        p = _cli("convert", f"containers-storage:{APP}", f"oci:{out}:v1")
        assert p.returncode != 0
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and victim.id in lines[0] and "Traceback" not in p.stderr, p.stderr
        assert not (out / "index.json").exists()
        path.write_bytes(original[:-10])  # shorter than its tar entry
        with pytest.raises(BadInputError, match=f"layer {victim.id}: file app/payload.bin .* is shorter"):
            convert_refs(f"containers-storage:{APP}", f"oci:{tmp_path / 'short'}:v1")
    finally:
        path.write_bytes(original)


# ------------------------------------------------------------------ locks

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_store_locked_for_writing_waits_with_a_message(conf_env, tmp_path):
    st = conf_env["st"]
    holder = _hold_write_lock(st.graphroot / f"{st.driver}-layers" / "layers.lock", 2)
    try:
        started = time.monotonic()
        p = _cli(
            "convert",
            f"containers-storage:{APP}",
            f"oci:{tmp_path / 'out'}:v1",
            env={**os.environ, "ZCONV_STORAGE_LOCK_TIMEOUT": "60"},
        )
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 0, p.stderr
    assert "waiting for" in p.stderr and "layers.lock" in p.stderr
    assert waited >= 1.0  # it did wait for the writer rather than read under it
    assert _layout_manifest(tmp_path / "out", "v1")["config"]["digest"] == "sha256:" + conf_env["id"]


def test_store_locked_too_long_fails_with_one_line(conf_env, tmp_path):
    st = conf_env["st"]
    holder = _hold_write_lock(st.graphroot / f"{st.driver}-images" / "images.lock", 120)
    try:
        p = _cli(
            "convert",
            f"containers-storage:{APP}",
            f"oci:{tmp_path / 'out'}:v1",
            env={**os.environ, "ZCONV_STORAGE_LOCK_TIMEOUT": "1"},
        )
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "images.lock is still locked for writing" in last and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out" / "index.json").exists()


def test_open_source_holds_read_locks_against_podman(conf_env, tmp_path):
    """While zconv reads, a real `podman rmi` waits; it goes ahead once the source is closed."""
    st = conf_env["st"]
    st.podman("tag", APP, "localhost/zconv-app:untag-me")
    src = StorageSource(None, APP, "containers-storage:" + APP)
    try:
        rmi = subprocess.Popen(
            [
                "podman",
                "--runtime",
                "/usr/sbin/runc",
                "--cgroup-manager=cgroupfs",
                "--events-backend=none",
                "rmi",
                "localhost/zconv-app:untag-me",
            ],
            env=st.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.5)
        assert rmi.poll() is None, "podman rmi changed the store while zconv held its read locks"
    finally:
        src.close()
    assert rmi.wait(timeout=60) == 0
    assert "untag-me" not in st.podman("images", "--format", "{{.Tag}}").stdout


# ------------------------------------------------------------------ registry + the real consumer


@pytest.mark.interop
def test_store_to_registry_is_partially_pulled(conf_env, registry, interop, tmp_path):
    from test_interop import assert_partial_pull

    repo = f"storage-{conf_env['st'].driver}"
    report = convert_refs(f"containers-storage:{APP}", f"docker://{registry.host}/{repo}:1")
    ref = f"docker://{registry.host}/{repo}:1"
    with open_source(ref) as src:
        ((_, desc),) = src.targets()
        manifest = json.loads(src.get_manifest(desc))
    theirs = tmp_path / "theirs"
    convert_refs(f"oci-archive:{conf_env['saved']}", f"oci:{theirs}:v1")
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in _layout_manifest(theirs, "v1")["layers"]
    ]
    assert report.images[0].digest == desc.digest
    store = tmp_path / "pullstore"
    res = interop.pull(ref, store, log=tmp_path / "pull.log")
    res["log_file"] = str(tmp_path / "pull.log")
    assert_partial_pull(res, manifest, "containers-storage -> registry")


@pytest.mark.interop
@pytest.mark.parametrize("fmt", ["gzip", "zstd:chunked"])
def test_pulled_image_converts_like_the_built_one(store, registry, tmp_path, monkeypatch, fmt):
    """An image podman pulled (from gzip, or from our own zstd:chunked) reads back to the same layers."""
    from support.podstore import make_store

    st = store["st"]
    ref = f"{registry.host}/pulled-{st.driver}:{fmt.replace(':', '-')}"
    if fmt == "gzip":
        st.podman("push", "--tls-verify=false", APP, f"docker://{ref}")
    else:
        convert_refs(f"oci-archive:{store['saved']}", f"docker://{ref}")
    fresh = make_store(tmp_path / "fresh", st.driver)
    fresh.podman("pull", "--tls-verify=false", f"docker://{ref}")
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(fresh.conf))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    convert_refs(f"containers-storage:{ref}", f"oci:{ours}:v1")
    convert_refs(f"oci-archive:{store['saved']}", f"oci:{theirs}:v1")
    m_ours, m_theirs = _layout_manifest(ours, "v1"), _layout_manifest(theirs, "v1")
    assert [layer["digest"] for layer in m_ours["layers"]] == [layer["digest"] for layer in m_theirs["layers"]]
    assert m_ours["config"]["digest"] == m_theirs["config"]["digest"]
