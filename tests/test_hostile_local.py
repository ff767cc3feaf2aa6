"""Hostile local inputs (issue 9): crafted layouts and archives, concurrent and killed runs.

Every case goes through the CLI entry (`converter.cli.main`) as a user would
run it and checks what the user sees: the exit code, one error line naming
what and where, no traceback, and a destination left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "testdata" / "sample"

from converter.cli import main  # noqa: E402
from converter.errors import BadInputError  # noqa: E402
from converter.jsonload import load_json, nesting_depth  # noqa: E402


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(capsys, *argv: str) -> tuple[int, str]:
    """zconv ARGV in-process; returns (exit code, stderr). Fails on a traceback."""
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("zconv: error:")]
    assert len(lines) == 1, err
    return lines[0]


def copy_sample(tmp_path: Path, name: str = "src") -> Path:
    dst = tmp_path / name
    shutil.copytree(SAMPLE, dst)
    return dst


def index_entry(layout: Path) -> dict:
    return json.loads((layout / "index.json").read_bytes())["manifests"][0]


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def put_blob(layout: Path, data: bytes) -> str:
    d = sha(data)
    blob_path(layout, d).write_bytes(data)
    return d


def replace_manifest(layout: Path, edit) -> None:
    """Rewrite the sample's manifest with `edit(doc)` (or raw bytes from it) and point index.json at it."""
    entry = index_entry(layout)
    doc = json.loads(blob_path(layout, entry["digest"]).read_bytes())
    new = edit(doc)
    data = new if isinstance(new, bytes) else json.dumps(doc).encode()
    entry = dict(entry, digest=put_blob(layout, data), size=len(data))
    write_index(layout, [entry])


def write_index(layout: Path, entries: list, raw: bytes | None = None) -> None:
    (layout / "index.json").write_bytes(
        raw if raw is not None else json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    )


def convert_fails(capsys, tmp_path: Path, src: Path, code: int = 2, match: str = "") -> str:
    dst = tmp_path / "out"
    rc, err = run(capsys, "convert", "-q", f"oci:{src}", f"oci:{dst}")
    line = one_error_line(err)
    assert rc == code, err
    assert match in line, line
    assert not dst.exists()
    return line


# ------------------------------------------------------------------ JSON


def test_loader_limits_are_one_line_errors():
    for data, what in [
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 64"),
        (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
        (b"NaN", "not valid JSON"),
        (b"[1e999]", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"1" * 5000, "too many digits"),
        (b"{nope", "not valid JSON"),
        # Thousands of strings that never close: the depth scan must stay linear (this hung when it was not).
        (b'\\"' * 300_000, "not valid JSON"),
        (b'["\\' * 300_000, "not valid JSON|nests deeper"),
    ]:
        with pytest.raises(BadInputError, match=what) as ei:
            load_json(data, "here")
        assert str(ei.value).startswith("here: ") and "\n" not in str(ei.value)
    with pytest.raises(BadInputError, match="larger than 10 bytes"):
        load_json(b"[" + b"1," * 20 + b"1]", "here", max_size=10)
    # Valid pairs, escaped backslashes and brackets inside strings are fine.
    assert load_json(b'{"a": "\\ud83d\\ude00", "b": "\\\\ud800", "c": "[[[[{{{{"}', "x") == {
        "a": "\U0001f600",
        "b": "\\ud800",
        "c": "[[[[{{{{",
    }
    assert nesting_depth(b'[[["]]]]]]"]]]') == 3
    assert load_json(b"[" * 64 + b"]" * 64, "x") is not None


def test_deeply_nested_index_json(capsys, tmp_path):
    src = copy_sample(tmp_path)
    write_index(src, [], raw=b'{"schemaVersion": 2, "manifests": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    convert_fails(capsys, tmp_path, src, match="index.json: JSON nests deeper than 64")


def test_deeply_nested_manifest(capsys, tmp_path):
    src = copy_sample(tmp_path)
    replace_manifest(src, lambda doc: json.dumps(doc)[:-1].encode() + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    convert_fails(capsys, tmp_path, src, match="nests deeper than 64")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("urls", 5, "'urls' must be a list of strings"),
        ("urls", [1], "'urls' must be a list of strings"),
        ("size", 2**63, "invalid size"),
        ("size", -1, "invalid size"),
        ("size", True, "invalid size"),
        ("size", 1.5, "invalid size"),
        ("annotations", {"a": 1}, "annotations must map strings to strings"),
        ("annotations", "x", "annotations must map strings to strings"),
        ("platform", {"os": 1, "architecture": "amd64"}, "'os' must be a string"),
        ("platform", {"os": "linux", "architecture": "amd64", "features": "sse"}, "'features' must be a list"),
        ("platform", [], "platform is not a JSON object"),
        ("artifactType", {}, "'artifactType' must be a string"),
    ],
)
def test_descriptor_field_types_in_layer(capsys, tmp_path, field, value, match):
    src = copy_sample(tmp_path)

    def edit(doc):
        doc["layers"][0][field] = value

    replace_manifest(src, edit)
    convert_fails(capsys, tmp_path, src, match=match)


@pytest.mark.parametrize("field, value", [("urls", 5), ("size", 2**63), ("platform", {"architecture": ["x"]})])
def test_descriptor_field_types_in_index_json(capsys, tmp_path, field, value):
    src = copy_sample(tmp_path)
    entry = index_entry(src)
    entry[field] = value
    write_index(src, [entry])
    line = convert_fails(capsys, tmp_path, src)
    assert "index.json entry 0" in line


def test_manifest_annotations_and_lone_surrogate(capsys, tmp_path):
    src = copy_sample(tmp_path)
    replace_manifest(src, lambda doc: doc.update(annotations={"a": ["b"]}))
    convert_fails(capsys, tmp_path, src, match="annotations must map strings to strings")
    src2 = copy_sample(tmp_path, "src2")
    replace_manifest(src2, lambda doc: json.dumps(doc)[:-1].encode() + b', "annotations": {"k": "\\udc00"}}')
    convert_fails(capsys, tmp_path, src2, match="lone UTF-16 surrogate")


def test_lone_surrogate_in_index_json_tag(capsys, tmp_path):
    src = copy_sample(tmp_path)
    entry = index_entry(src)
    raw = json.dumps({"schemaVersion": 2, "manifests": [entry]}).replace('"v1"', '"\\ud800"').encode()
    write_index(src, [], raw=raw)
    convert_fails(capsys, tmp_path, src, match="lone UTF-16 surrogate")


def test_config_that_is_not_json(capsys, tmp_path):
    src = copy_sample(tmp_path)
    garbage = put_blob(src, b"\x00not json at all")

    def edit(doc):
        doc["config"]["digest"] = garbage
        doc["config"]["size"] = len(b"\x00not json at all")

    replace_manifest(src, edit)
    convert_fails(capsys, tmp_path, src, match="config")
    src2 = copy_sample(tmp_path, "src2")
    deep = put_blob(src2, b"[" * 10000 + b"]" * 10000)

    def edit2(doc):
        doc["config"]["digest"] = deep
        doc["config"]["size"] = 20000

    replace_manifest(src2, edit2)
    convert_fails(capsys, tmp_path, src2, match="nests deeper than 64")


# ------------------------------------------------------------------ files that are not regular files


def run_child(*argv: str, timeout: float = 60) -> tuple[int, str]:
    """zconv in a child process with a timeout, for inputs that could hang a reader (FIFOs, devices)."""
    import subprocess

    code = "import sys; from converter.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, p.stderr


def layer_digest(layout: Path) -> str:
    m = json.loads(blob_path(layout, index_entry(layout)["digest"]).read_bytes())
    return m["layers"][0]["digest"]


def swap(path: Path, make) -> None:
    path.unlink()
    make(path)


@pytest.mark.parametrize(
    "which, make, kind",
    [
        ("layer", os.mkfifo, "is a FIFO, not a regular file"),
        ("layer", os.mkdir, "is a directory, not a regular file"),
        ("layer", lambda p: os.symlink("/dev/zero", p), "is a symlink to /dev/zero, which is a character device"),
        ("layer", lambda p: (os.mkfifo(str(p) + ".fifo"), os.symlink(str(p) + ".fifo", p)), "which is a FIFO"),
        ("manifest", os.mkfifo, "is a FIFO, not a regular file"),
        ("index.json", os.mkfifo, "index.json: is a FIFO, not a regular file"),
        ("index.json", lambda p: os.symlink("/dev/urandom", p), "which is a character device"),
        ("oci-layout", os.mkfifo, "oci-layout: is a FIFO, not a regular file"),
        ("oci-layout", os.mkdir, "oci-layout: is a directory"),
    ],
)
def test_layout_files_that_are_not_regular_are_refused_before_reading(tmp_path, which, make, kind):
    src = copy_sample(tmp_path)
    if which == "layer":
        target = blob_path(src, layer_digest(src))
    elif which == "manifest":
        target = blob_path(src, index_entry(src)["digest"])
    else:
        target = src / which
    swap(target, make)
    dst = tmp_path / "out"
    commands = [["convert", "-q", f"oci:{src}", f"oci:{dst}"]]
    if which != "layer":  # inspect and verify read layers only when they are zstd:chunked
        commands += [["inspect", f"oci:{src}"], ["verify", f"oci:{src}"]]
    for argv in commands:
        rc, err = run_child(*argv)
        assert rc == 2, (argv, err)
        assert kind in one_error_line(err), err
    assert not dst.exists()


def test_symlink_out_of_the_layout_warns_with_its_target(tmp_path):
    src = copy_sample(tmp_path)
    layer = blob_path(src, layer_digest(src))
    outside = tmp_path / "elsewhere" / "layer.bin"
    outside.parent.mkdir()
    shutil.move(layer, outside)
    os.symlink(outside, layer)
    dst = tmp_path / "out"
    rc, err = run_child("convert", "-q", f"oci:{src}", f"oci:{dst}")
    assert rc == 0, err
    warnings = [ln for ln in err.splitlines() if "leaves the layout" in ln]
    assert len(warnings) == 1 and str(outside) in warnings[0], err
    assert (dst / "index.json").is_file()
    # A symlink inside the layout is fine and says nothing.
    src2 = copy_sample(tmp_path, "src2")
    layer2 = blob_path(src2, layer_digest(src2))
    shutil.move(layer2, src2 / "moved")
    os.symlink("../../moved", layer2)
    rc, err = run_child("convert", "-q", f"oci:{src2}", f"oci:{tmp_path / 'out2'}")
    assert rc == 0 and "leaves the layout" not in err, err


# ------------------------------------------------------------------ archives


def archive_of(layout: Path, out: Path, edit=None) -> Path:
    """Tar a layout; `edit(name, TarInfo) -> TarInfo | None` may replace a member (None: keep)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(layout.rglob("*")):
            rel = str(p.relative_to(layout))
            ti = tf.gettarinfo(str(p), rel)
            new = edit(rel, ti) if edit else None
            if new is not None:
                tf.addfile(new)
            elif p.is_file():
                with open(p, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)
    return out


def special(rel: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(rel)
    ti.type = kind
    ti.linkname = link
    ti.mode = 0o644
    return ti


@pytest.mark.parametrize(
    "member, kind, link, match",
    [
        ("layer", tarfile.SYMTYPE, "/etc/passwd", "is a link out of the archive (to '/etc/passwd')"),
        ("layer", tarfile.SYMTYPE, "../../../../outside", "is a link out of the archive"),
        ("layer", tarfile.LNKTYPE, "/etc/passwd", "is a link out of the archive"),
        ("layer", tarfile.LNKTYPE, "../x", "is a link out of the archive"),
        ("layer", tarfile.CHRTYPE, "", "is a character device, not a regular file"),
        ("layer", tarfile.FIFOTYPE, "", "is a FIFO, not a regular file"),
        ("layer", tarfile.DIRTYPE, "", "is a directory, not a regular file"),
        ("index.json", tarfile.SYMTYPE, "/etc/passwd", "'index.json' is a link out of the archive"),
        ("index.json", tarfile.SYMTYPE, "index.json", "link chain that does not end"),
    ],
)
def test_oci_archive_members_must_be_regular(capsys, tmp_path, member, kind, link, match):
    src = copy_sample(tmp_path)
    rel = "index.json" if member == "index.json" else str(blob_path(src, layer_digest(src)).relative_to(src))
    arc = archive_of(src, tmp_path / "a.tar", lambda name, ti: special(rel, kind, link) if name == rel else None)
    dst = tmp_path / "out"
    rc, err = run(capsys, "convert", "-q", f"oci-archive:{arc}", f"oci:{dst}")
    assert rc == 2, err
    assert match in one_error_line(err)
    assert not dst.exists()


def test_oci_archive_links_inside_the_archive_still_work(capsys, tmp_path):
    src = copy_sample(tmp_path)
    layer = blob_path(src, layer_digest(src))
    shutil.move(layer, src / "real-layer")
    os.symlink("../../real-layer", layer)
    arc = archive_of(src, tmp_path / "a.tar")
    with tarfile.open(arc) as tf:
        assert tf.getmember(str(layer.relative_to(src))).issym()
    rc, err = run(capsys, "convert", "-q", f"oci-archive:{arc}", f"oci:{tmp_path / 'out'}")
    assert rc == 0, err
    layer.unlink()
    os.link(src / "real-layer", layer)  # tarfile stores the second name as a hard link to the first
    arc2 = archive_of(src, tmp_path / "b.tar")
    with tarfile.open(arc2) as tf:
        assert tf.getmember("real-layer").islnk()
    rc, err = run(capsys, "convert", "-q", f"oci-archive:{arc2}", f"oci:{tmp_path / 'out2'}")
    assert rc == 0, err


def test_archive_path_that_is_a_fifo_or_device(tmp_path):
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    for ref in (f"oci-archive:{fifo}", f"docker-archive:{fifo}", "oci-archive:/dev/zero"):
        rc, err = run_child("convert", "-q", ref, f"oci:{tmp_path / 'out'}")
        assert rc == 2, err
        assert "not a regular file" in one_error_line(err), err
    assert not (tmp_path / "out").exists()


def docker_archive(tmp_path: Path, layer_member) -> Path:
    """A docker-archive whose only layer member is `layer_member(name) -> TarInfo` (with no data)."""
    import io

    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
    ).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["x:1"], "Layers": ["layer.tar"]}]).encode()
    out = tmp_path / "d.tar"
    with tarfile.open(out, "w") as tf:
        for name, data in (("manifest.json", manifest), ("config.json", config)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        tf.addfile(layer_member("layer.tar"))
    return out


@pytest.mark.parametrize(
    "kind, link, match",
    [
        (tarfile.SYMTYPE, "/dev/zero", "is a link out of the archive (to '/dev/zero')"),
        (tarfile.LNKTYPE, "../../etc/shadow", "is a link out of the archive"),
        (tarfile.BLKTYPE, "", "is a block device, not a regular file"),
    ],
)
def test_docker_archive_members_must_be_regular(capsys, tmp_path, kind, link, match):
    arc = docker_archive(tmp_path, lambda name: special(name, kind, link))
    rc, err = run(capsys, "convert", "-q", f"docker-archive:{arc}", f"oci:{tmp_path / 'out'}")
    assert rc == 2, err
    assert match in one_error_line(err)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ concurrent and killed runs


def zconv_child(*argv: str, env: dict | None = None):
    import subprocess

    code = "import sys; from converter.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def tags_of(layout: Path) -> list[str]:
    doc = json.loads((layout / "index.json").read_bytes())
    return sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in doc["manifests"])


def leftovers(dst: Path) -> list[str]:
    beside = [p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.zconv-")]
    inside = [p.name for p in dst.iterdir() if p.name.startswith(".")] if dst.is_dir() else []
    return beside + inside


@pytest.mark.parametrize("existing", [False, True])
def test_concurrent_converts_into_one_layout_keep_every_tag(tmp_path, existing):
    dst = tmp_path / "out"
    if existing:
        shutil.copytree(SAMPLE, dst)
    tags = [f"t{i}" for i in range(6)]
    procs = [zconv_child("convert", "-q", f"oci:{SAMPLE}:v1", f"oci:{dst}:{t}") for t in tags]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "Traceback" not in err
    assert tags_of(dst) == sorted(tags + (["v1"] if existing else []))
    assert leftovers(dst) == []


def test_second_writer_waits_with_a_message_then_fails_when_busy_too_long(tmp_path):
    from converter.image.layout import LayoutLock

    dst = tmp_path / "out"
    shutil.copytree(SAMPLE, dst)
    before = (dst / "index.json").read_bytes()
    lock = LayoutLock(str(dst), "test")
    lock.acquire()
    try:
        p = zconv_child("convert", "-q", f"oci:{SAMPLE}:v1", f"oci:{dst}:late", env={"ZCONV_LOCK_TIMEOUT": "2"})
        out, err = p.communicate(timeout=120)
        assert p.returncode == 1, err
        assert "waiting for it" in err
        assert "the layout is busy" in one_error_line(err)
        assert (dst / "index.json").read_bytes() == before
        # Waiting works: the writer finishes once the lock is released.
        p = zconv_child("convert", "-q", f"oci:{SAMPLE}:v1", f"oci:{dst}:late")
        import time

        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if any(x.name.startswith(".out.zconv-") for x in tmp_path.iterdir()):
                time.sleep(1.0)  # it is staging or already waiting: let it reach the lock
                break
            time.sleep(0.05)
    finally:
        lock.release()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert tags_of(dst) == ["late", "v1"]
    assert leftovers(dst) == []


KILL_AFTER_STAGING = """
import os, signal, sys
from converter.image.layout import LayoutSink
from converter.image.model import OCI_CONFIG, descriptor_for
sink = LayoutSink(sys.argv[1], "killed")
data = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
sink.put_blob_bytes(descriptor_for(OCI_CONFIG, data), data)
print(sink.temp_dir(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

KILL_HOLDING_THE_LOCK = """
import os, signal, sys
from converter.image.layout import LayoutLock
lock = LayoutLock(sys.argv[1], "killed")
lock.acquire()
open(os.path.join(sys.argv[1], ".tmp-index.json-killed"), "wb").write(b'{"schemaVer')
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_runs_leave_nothing_the_next_run_does_not_clean(tmp_path):
    import signal
    import subprocess

    dst = tmp_path / "out"
    shutil.copytree(SAMPLE, dst)
    p = subprocess.run([sys.executable, "-c", KILL_AFTER_STAGING, str(dst)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == -signal.SIGKILL
    stage = Path(p.stdout.strip())
    assert stage.is_dir() and stage.name.startswith(".out.zconv-")
    p = subprocess.run(
        [sys.executable, "-c", KILL_HOLDING_THE_LOCK, str(dst)], capture_output=True, text=True, cwd=ROOT
    )
    assert p.returncode == -signal.SIGKILL
    assert (dst / ".zconv-lock").exists() and (dst / ".tmp-index.json-killed").exists()
    # A live run's staging directory must survive the cleaning.
    live = zconv_child("convert", "-q", f"oci:{SAMPLE}:v1", f"oci:{tmp_path / 'other'}")
    p = zconv_child("convert", "-q", f"oci:{SAMPLE}:v1", f"oci:{dst}:next")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert not stage.exists()
    assert tags_of(dst) == ["next", "v1"]
    assert leftovers(dst) == []
    live.communicate(timeout=120)
    assert live.returncode == 0
    # And a real run killed at some point of its work: the next run cleans up after it too.
    for delay in (0.2, 0.5, 0.9):
        import time

        k = zconv_child("convert", "-q", f"oci:{SAMPLE}:v1", f"oci:{dst}:k{delay}")
        time.sleep(delay)
        k.send_signal(signal.SIGKILL)
        k.communicate(timeout=60)
    p = zconv_child("convert", "-q", f"oci:{SAMPLE}:v1", f"oci:{dst}:last")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert {"last", "next", "v1"} <= set(tags_of(dst))
    assert leftovers(dst) == []


def test_stale_archive_work_directories_are_removed(tmp_path):
    import signal
    import subprocess

    code = """
import os, signal, sys
from converter.image.layout import OciArchiveSink
sink = OciArchiveSink(sys.argv[1], "killed")
os.kill(os.getpid(), signal.SIGKILL)
"""
    arc = tmp_path / "a.tar"
    p = subprocess.run([sys.executable, "-c", code, str(arc)], cwd=ROOT)
    assert p.returncode == -signal.SIGKILL
    assert [x for x in tmp_path.iterdir() if x.name.startswith(".a.tar.zconv-")]
    p = zconv_child("convert", "-q", f"oci:{SAMPLE}:v1", f"oci-archive:{arc}")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.tar"]


# ------------------------------------------------------------------ push of a layout whose blob lies


@pytest.mark.parametrize("tamper", ["same size", "longer", "shorter"])
def test_push_never_commits_a_blob_that_is_not_what_its_digest_says(registry, tmp_path, tamper):
    from converter.image.registry import RegistryClient

    src = copy_sample(tmp_path)
    digest = layer_digest(src)
    path = blob_path(src, digest)
    data = path.read_bytes()
    bad = {"same size": bytes(len(data)), "longer": data + b"x" * 100, "shorter": data[:-10]}[tamper]
    path.write_bytes(bad)
    repo = f"hostile/tampered-{tamper.replace(' ', '-')}"
    p = zconv_child("push", "-q", f"oci:{src}:v1", f"docker://{registry.host}/{repo}:v1")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    assert "Traceback" not in err
    assert digest[7:19] in one_error_line(err)
    with RegistryClient(registry.host) as c:
        assert c.head_manifest(repo, "v1") is None
        assert c.blob_size(repo, digest) is None
        assert c.blob_size(repo, sha(bad)) is None


# ------------------------------------------------------------------ found by make fuzz, not fixed here


def test_trailing_garbage_after_the_end_of_archive_is_not_written_as_chunked(capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "testdata"))
    import make_sample as ms

    tar = bytearray(ms.make_tar([ms.Entry("etc/hostname", data=b"zconv\n"), ms.Entry("etc/motd", data=b"hi " * 300)]))
    tar[0:1024] = bytes(1024)  # the end-of-archive marker first ...
    tar[1024] ^= 1  # ... then bytes that are not a valid header
    tar = bytes(tar)
    img = ms.make_image([tar], compress=False)
    src = tmp_path / "src"
    ms.write_layout(str(src), img.blobs(), [("v1", img.manifest)])
    dst = tmp_path / "out"
    rc, err = run(capsys, "convert", "-q", f"oci:{src}", f"oci:{dst}")
    assert rc == 0, err
    assert "written as plain zstd" in err and "not zero blocks" in err, err
    rc, err = run(capsys, "verify", f"oci:{dst}")
    assert rc == 0, err  # what convert wrote must be consumable (plain zstd is; a broken chunked layer is not)
    rc, err = run(capsys, "convert", "-q", "--strict", f"oci:{src}", f"oci:{tmp_path / 'strict'}")
    assert rc == 3, err
    assert not (tmp_path / "strict").exists()
