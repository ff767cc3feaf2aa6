"""containers-storage: for a real rootless podman user.

A user (`zconvrl`, created if missing, with subordinate uids) imports a tar
with files of several container uids and modes, among them a 0600 file of
uid 5 in a 0700 directory of uid 5, and builds a COPY layer on it. In the
user's store those files belong to the user's subordinate uids, so the user
cannot open them as they are. zconv, run as that user with the store found
the way podman finds it (XDG_CONFIG_HOME/containers/storage.conf,
XDG_DATA_HOME), must convert the image to exactly what root gets from the
same layers, with every layer decompressing to the tar podman stored.

Each driver podman runs rootless here: vfs, native overlay and overlay with
fuse-overlayfs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from converter.convert import convert_refs
from converter.errors import BadInputError
from converter.image.storage import userns
from support.podstore import make_store
from support.rootless import ensure_user, unavailable, user_code, user_venv

# The tests with the real rootless user are slow and interop: ~15 s per driver (podman import and
# build as the user); the helper's own protocol is checked without a namespace, quickly.

IMAGE = "localhost/zconv-rootless:1"
APP = "localhost/zconv-rootless-app:1"
CONTAINERFILE = """\
FROM localhost/zconv-rootless:1
COPY --chown=7:7 private /opt/private
COPY public.txt /opt/public.txt
"""


def _tar(out: Path) -> Path:
    """Files of uid 0, 5 and 1000, modes down to 0000, a hardlink and a symlink."""
    import random

    rng = random.Random(5)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:

        def add(name: str, data: bytes | None = None, mode: int = 0o644, uid: int = 0, **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode, ti.uid, ti.gid = 1_700_000_000, mode, uid, uid
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data is not None else None)

        add("etc", mode=0o755, type=tarfile.DIRTYPE)
        add("etc/hello", b"hello\n")
        add("etc/shadow-like", b"root:*:19000::::::\n" * 50, mode=0o000)
        add("secret", mode=0o700, uid=5, type=tarfile.DIRTYPE)
        add("secret/key", b"secret data\n" * 1000, mode=0o600, uid=5)
        add("secret/big.bin", rng.randbytes(1 << 20) + b"text " * 200_000, mode=0o640, uid=5)
        add("secret/key-link", type=tarfile.LNKTYPE, linkname="secret/key", uid=5, mode=0o600)
        add("home", mode=0o755, type=tarfile.DIRTYPE)
        add("home/dev", mode=0o750, uid=1000, type=tarfile.DIRTYPE)
        add("home/dev/notes", b"notes\n" * 3000, mode=0o400, uid=1000)
        add("home/dev/link", type=tarfile.SYMTYPE, linkname="notes", uid=1000, mode=0o777)
        add("usr-bin-tool", rng.randbytes(300_000), mode=0o4755)
    out.chmod(0o644)
    return out


def _layout_manifest(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    return json.loads((layout / "blobs" / "sha256" / entry["digest"].split(":")[1]).read_text())


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


@pytest.fixture(scope="module")
def rootless():
    why = unavailable()
    if why:
        pytest.skip(why)
    user = ensure_user()
    venv = user_venv()
    work = Path(tempfile.mkdtemp(prefix="zconv-rootless-", dir="/tmp"))
    work.chmod(0o755)
    try:
        user_code(venv, work / "code")
        tar = _tar(work / "layer.tar")
        yield {"user": user, "venv": venv, "work": work, "tar": tar}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _user_dir(rootless: dict, name: str) -> Path:
    d = rootless["work"] / name
    d.mkdir()
    os.chown(d, rootless["user"].uid, rootless["user"].uid)
    return d


@pytest.fixture(scope="module", params=["vfs", "overlay", "fuse-overlayfs"])
def store(request, rootless):
    """The user's store for one driver, found through XDG_CONFIG_HOME and XDG_DATA_HOME."""
    user = rootless["user"]
    home = _user_dir(rootless, f"u-{request.param}")
    conf = '[storage]\ndriver = "vfs"\n' if request.param == "vfs" else '[storage]\ndriver = "overlay"\n'
    if request.param == "fuse-overlayfs":
        if not os.path.exists("/usr/bin/fuse-overlayfs") or not os.path.exists("/dev/fuse"):
            pytest.skip("fuse-overlayfs or /dev/fuse missing")
        mode = os.stat("/dev/fuse").st_mode & 0o777
        if mode & 0o006 != 0o006 and os.geteuid() == 0:
            # Inside a container /dev/fuse may be root's 0600 (hosts have 0666, which rootless
            # podman needs): give other users access for this driver's tests, then put it back.
            os.chmod("/dev/fuse", mode | 0o666)
            request.addfinalizer(lambda: os.chmod("/dev/fuse", mode))
        if os.stat("/dev/fuse").st_mode & 0o006 != 0o006:
            # e.g. inside a container whose /dev/fuse is root's 0600: podman build cannot mount as the user
            pytest.skip(
                "/dev/fuse is not readable and writable by other users (mode %o)"
                % (os.stat("/dev/fuse").st_mode & 0o777)
            )
        conf += '[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n'
    ctx = home / "ctx"
    env = user.env(
        XDG_CONFIG_HOME=str(home / "cfg"),
        XDG_DATA_HOME=str(home / "data"),
        ZCONV_CACHE_DIR=str(home / "cache"),
        PYTHONPATH=str(rootless["work"] / "code"),
    )
    p = user.run(
        [
            "sh",
            "-c",
            'mkdir -p "$XDG_CONFIG_HOME/containers" "$1/private" && printf "%s" "$2" > "$XDG_CONFIG_HOME/containers/storage.conf"'
            ' && printf "private\\n" > "$1/private/token" && chmod 600 "$1/private/token" && chmod 700 "$1/private"'
            ' && printf "public\\n" > "$1/public.txt" && printf "%s" "$3" > "$1/Containerfile"',
            "sh",
            str(ctx),
            conf,
            CONTAINERFILE,
        ],
        env=env,
    )
    assert p.returncode == 0, p.stderr
    user.podman("import", str(rootless["tar"]), IMAGE, env=env)
    user.podman("build", "--network=none", "-t", APP, str(ctx), env=env)
    graphroot = home / "data" / "containers" / "storage"
    driver = "vfs" if request.param == "vfs" else "overlay"
    assert (graphroot / f"{driver}-layers").is_dir(), f"podman did not use the {driver} driver"
    return {"env": env, "home": home, "graphroot": graphroot, "driver": driver, "ctx": ctx, **rootless}


def _zconv(store: dict, *args: str, env: dict | None = None, via: list[str] | None = None):
    """zconv as the user, with a cache of its own (a memo hit would not read the store at all)."""
    python = str(store["venv"] / "bin" / "python")
    env = dict(env or store["env"])
    if env.get("ZCONV_CACHE_DIR") == store["env"]["ZCONV_CACHE_DIR"]:
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=store["home"]))
        os.chown(cache, store["user"].uid, store["user"].uid)
        env["ZCONV_CACHE_DIR"] = str(cache)
    return store["user"].run([*(via or []), python, "-m", "converter.cli", *args], env=env)


@pytest.mark.slow
@pytest.mark.interop
def test_layer_files_are_unreadable_to_the_user_as_is(store):
    """The premise: the store has files the user cannot open without the user namespace."""
    user = store["user"]
    keys = list(store["graphroot"].glob(f"{'vfs/dir' if store['driver'] == 'vfs' else 'overlay'}/*/**/secret/key"))
    assert keys, "secret/key not found in the store"
    st = keys[0].stat()
    assert st.st_uid == user.subuid_start + 4 and st.st_mode & 0o777 == 0o600  # container uid 5
    p = user.run(["cat", str(keys[0])], env=store["env"])
    assert p.returncode != 0 and "Permission denied" in p.stderr


@pytest.mark.slow
@pytest.mark.interop
def test_rootless_convert_equals_root_and_the_stored_tars(store, tmp_path, monkeypatch):
    user = store["user"]
    out = _user_dir(store, f"out-{store['home'].name}")
    started = time.monotonic()
    p = _zconv(store, "convert", f"containers-storage:{APP}", f"oci:{out / 'lay'}:x")
    seconds = time.monotonic() - started
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    print(f"rootless convert ({store['driver']}): {seconds:.2f}s")

    # The tars podman stored, as `podman save` writes them (gzip'd by podman 4.3).
    saved = out / "saved.tar"
    user.podman("save", "--format", "oci-archive", "-o", str(saved), APP, env=store["env"])
    theirs = tmp_path / "saved"
    with tarfile.open(saved) as t:
        t.extractall(theirs, filter="data")
    (saved_entry,) = json.loads((theirs / "index.json").read_text())["manifests"]
    m_saved = json.loads(_blob(theirs, saved_entry["digest"]).read_text())
    config = json.loads(_blob(theirs, m_saved["config"]["digest"]).read_text())
    stored_tars = [_blob(theirs, layer["digest"]) for layer in m_saved["layers"]]
    assert len(stored_tars) == 3  # import + 2 x COPY

    ours = _layout_manifest(out / "lay", "x")
    assert ours["config"]["digest"] == m_saved["config"]["digest"]
    assert len(ours["layers"]) == 3
    for layer, stored, diff_id in zip(ours["layers"], stored_tars, config["rootfs"]["diff_ids"]):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert "io.github.containers.zstd-chunked.manifest-position" in layer["annotations"]
        plain = subprocess.run(["zstd", "-dc", str(_blob(out / "lay", layer["digest"]))], capture_output=True).stdout
        data = stored.read_bytes()
        assert plain == (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id

    # What root gets from the same layers: the user's `podman save` archive, converted as root.
    root_out = tmp_path / "root"
    convert_refs(f"oci-archive:{saved}", f"oci:{root_out}:x")
    assert _layout_manifest(root_out, "x") == ours

    # And root's own store, with the same tar imported: the same first layer, byte for byte.
    root_store = make_store(tmp_path / "rootstore", store["driver"])
    root_store.podman("import", str(store["tar"]), IMAGE)
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(root_store.conf))
    convert_refs(f"containers-storage:{IMAGE}", f"oci:{tmp_path / 'rootstore-out'}:x")
    (root_layer,) = _layout_manifest(tmp_path / "rootstore-out", "x")["layers"]
    assert root_layer == ours["layers"][0]

    p = _zconv(store, "verify", f"oci:{out / 'lay'}:x")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "verdict: OK" in p.stdout


@pytest.mark.slow
@pytest.mark.interop
def test_inside_podman_unshare_gives_the_same_image(store):
    """The documented fallback, `podman unshare zconv ...`, finds the same store and writes the same image."""
    base = _user_dir(store, f"unshare-{store['home'].name}")
    out, direct = base / "unshare", base / "direct"
    p = _zconv(store, "convert", "-q", f"containers-storage:{APP}", f"oci:{direct}:x")
    assert p.returncode == 0, p.stderr
    p = _zconv(store, "convert", "-q", f"containers-storage:{APP}", f"oci:{out}:x", via=["podman", "unshare"])
    assert p.returncode == 0, p.stderr
    assert _layout_manifest(out, "x") == _layout_manifest(direct, "x")


_HOLD_AND_RMI = """
import json, subprocess, sys, time
from converter.image.storage import StorageSource
src = StorageSource(None, sys.argv[1], "containers-storage:" + sys.argv[1])
helper = type(src._files).__name__
rmi = subprocess.Popen(["podman", "--events-backend=none", "rmi", sys.argv[2]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(2)
waited = rmi.poll() is None
src.close()
rc = rmi.wait(timeout=60)
print(json.dumps({"helper": helper, "rmi_waited": waited, "rmi_rc": rc}))
"""


@pytest.mark.slow
@pytest.mark.interop
def test_rootless_reader_holds_the_stores_locks_against_podman(store):
    """As the user, with the namespace helper running: a real `podman rmi` waits until the source closes."""
    store["user"].podman("tag", APP, "localhost/zconv-rootless-app:untag-me", env=store["env"])
    python = str(store["venv"] / "bin" / "python")
    p = store["user"].run([python, "-c", _HOLD_AND_RMI, APP, "localhost/zconv-rootless-app:untag-me"], env=store["env"])
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result == {"helper": "NamespaceFiles", "rmi_waited": True, "rmi_rc": 0}
    names = store["user"].podman("images", "--format", "{{.Repository}}:{{.Tag}}", env=store["env"]).stdout
    assert "untag-me" not in names


_TWO_SOURCES = """
import json, shutil, sys
from converter.image.model import parse_manifest_or_index
from converter.image.storage import StorageSource, userns

def drain(src):
    ((_, desc),) = src.targets()
    n = 0
    for layer in parse_manifest_or_index(src.get_manifest(desc)).layers:
        with src.open_blob(layer) as r:
            while chunk := r.read(1 << 20):
                n += len(chunk)
            r.finish()
    return n

first = StorageSource(None, sys.argv[1], "first")
second = StorageSource(None, sys.argv[2], "second")  # opened while the first holds the locks
shared = first._files is second._files and type(first._files).__name__ == "NamespaceFiles"
sizes = [drain(second)]
first.close()
sizes.append(drain(second))  # the helper outlives the first source
second.close()
print(json.dumps({"shared": shared, "sizes": sizes, "helpers_left": len(userns._SHARED)}))
"""


@pytest.mark.slow
@pytest.mark.interop
def test_two_sources_in_one_process_share_the_helper(store):
    """A second source opened under the first one's locks (estimate, --reuse-from) must not start a
    second `podman unshare`, which would wait for those locks."""
    python = str(store["venv"] / "bin" / "python")
    p = store["user"].run([python, "-c", _TWO_SOURCES, IMAGE, APP], env=store["env"], timeout=120)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["shared"] and result["helpers_left"] == 0
    assert result["sizes"][0] == result["sizes"][1] > 2 << 20  # every layer read, DiffIDs checked


@pytest.mark.slow
@pytest.mark.interop
def test_store_locked_for_writing_as_the_user_fails_with_one_line(store):
    user = store["user"]
    lock = store["graphroot"] / f"{store['driver']}-layers" / "layers.lock"
    holder = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={user.uid}",
            f"--regid={user.uid}",
            "--init-groups",
            "--",
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = _user_dir(store, f"locked-{store['home'].name}") / "lay"
        env = {**store["env"], "ZCONV_STORAGE_LOCK_TIMEOUT": "2"}
        p = _zconv(store, "convert", f"containers-storage:{APP}", f"oci:{out}:x", env=env)
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "layers.lock is still locked for writing" in last and "Traceback" not in p.stderr, p.stderr
    assert not (out / "index.json").exists()


@pytest.mark.slow
@pytest.mark.interop
def test_without_podman_one_line_says_to_use_podman_unshare(store):
    out = _user_dir(store, f"nopodman-{store['home'].name}")
    env = {**store["env"], "PATH": "/nonexistent", "ZCONV_CACHE_DIR": str(out / "cache")}
    p = _zconv(store, "convert", f"containers-storage:{APP}", f"oci:{out / 'lay'}:x", env=env)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "permission denied" in lines[0] and "podman is not installed" in lines[0]
    assert "`podman unshare zconv ...`" in lines[0]
    assert not (out / "lay" / "index.json").exists()


# ------------------------------------------------------------------ the helper, without a namespace


def test_helper_protocol_opens_resolves_and_passes_descriptors(tmp_path):
    """The helper run as we are (no `podman unshare`): the same requests, answers and descriptors."""
    import errno
    import threading

    d = tmp_path / "d"
    d.mkdir()
    for i in range(20):
        (d / f"f{i}").write_bytes(b"content %d\n" % i * (i + 1))
    (tmp_path / "dirlink").symlink_to(d)
    (tmp_path / "filelink").symlink_to(d / "f1")
    files = userns.start_helper([], 30, lambda msg: None)
    try:
        fd = files.open(str(d / "f3"))
        try:
            assert os.read(fd, 1000) == b"content 3\n" * 4
        finally:
            os.close(fd)
        assert files.realpath(str(tmp_path / "dirlink")) == os.path.realpath(d)
        with pytest.raises(FileNotFoundError):
            files.open(str(d / "missing"))
        with pytest.raises(OSError) as e:
            files.open(str(tmp_path / "filelink"))  # O_NOFOLLOW: a symlink is not the layer's file
        assert e.value.errno == errno.ELOOP

        got: dict[int, bytes] = {}

        def read(i: int) -> None:
            for _ in range(10):
                fd = files.open(str(d / f"f{i}"))
                try:
                    got[i] = os.read(fd, 1000)
                finally:
                    os.close(fd)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == {i: b"content %d\n" % i * (i + 1) for i in range(20)}
    finally:
        files.stop()
    with pytest.raises(BadInputError, match="podman unshare"):
        files.open(str(d / "f1"))


def test_helper_that_cannot_start_says_why(tmp_path):
    fail = ["sh", "-c", "echo 'Error: cannot find newuidmap: exec: not found' >&2; exit 125", "sh"]
    with pytest.raises(OSError, match=r"exit code 125\): Error: cannot find newuidmap"):
        userns.start_helper(fail, 30, lambda msg: None)
    said = []
    with pytest.raises(OSError, match="did not start within 2.5s"):
        userns.start_helper(["sh", "-c", "sleep 30", "sh"], 2.5, said.append)
    assert len(said) == 1 and "waiting for `podman unshare`" in said[0]


def test_root_reads_a_store_as_it_is():
    if os.geteuid() != 0:
        pytest.skip("as root")
    files, why = userns.acquire("/", 5, lambda msg: None)
    assert isinstance(files, userns.LocalFiles) and why is None


def test_user_config_is_read_over_the_systems_rootless_defaults(tmp_path, monkeypatch):
    """~/.config/containers/storage.conf without graphroot or driver keeps the system file's
    rootless_storage_path and driver, as containers/storage's rootless defaults do."""
    import converter.image.storage.store as store_mod
    from converter.image.storage.store import find_store

    for var in ("CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "XDG_RUNTIME_DIR", "_CONTAINERS_ROOTLESS_UID"):
        monkeypatch.delenv(var, raising=False)
    system = tmp_path / "system.conf"
    system.write_text(
        '[storage]\ndriver = "vfs"\ngraphroot = "/var/lib/containers/storage"\n'
        'rootless_storage_path = "/srv/users/$UID/storage"\n'
    )
    monkeypatch.setattr(store_mod, "SYSTEM_CONF", str(system))
    monkeypatch.setattr(store_mod, "_is_root", lambda: False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    user = tmp_path / "cfg" / "containers" / "storage.conf"
    user.parent.mkdir(parents=True)
    user.write_text("[storage]\n")
    st = find_store()
    assert (st.driver, st.graphroot, st.config_file) == ("vfs", f"/srv/users/{os.getuid()}/storage", str(user))
    user.write_text('[storage]\ndriver = "overlay"\ngraphroot = "/home/u/g"\n')
    assert (find_store().driver, find_store().graphroot) == ("overlay", "/home/u/g")
    # a driver rootless podman cannot use is not taken over; the store's own directories decide
    system.write_text('[storage]\ndriver = "zfs"\n')
    user.write_text("[storage]\n")
    (tmp_path / "data" / "containers" / "storage" / "vfs-layers").mkdir(parents=True)
    st = find_store()
    assert (st.driver, st.graphroot) == ("vfs", str(tmp_path / "data" / "containers" / "storage"))
