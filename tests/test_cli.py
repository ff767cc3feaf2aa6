"""The zconv command as a user runs it: output, --json, exit codes, error lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testdata"))
import make_sample as ms  # noqa: E402

SAMPLE = ROOT / "testdata" / "sample"


def zconv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converter.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_convert_json_report(tmp_path):
    out = tmp_path / "out"
    r = zconv("convert", "--json", f"oci:{SAMPLE}", f"oci:{out}:zstd")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    img = ms.sample_image()
    assert [x["old_digest"] for x in rep["layers"]] == [layer.digest for layer in img.layers]
    assert [x["old_size"] for x in rep["layers"]] == [len(layer.data) for layer in img.layers]
    assert [x["diff_id"] for x in rep["layers"]] == [ms.sha256(t) for t in img.tars]
    for x in rep["layers"]:
        assert x["chunked"] is True and x["reason"] is None
        assert x["new_media_type"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert (out / "blobs" / "sha256" / x["new_digest"].split(":")[1]).stat().st_size == x["new_size"]
        assert isinstance(x["seconds"], float)
    (image,) = rep["images"]
    assert image["tag"] == "zstd" and image["source_digest"] == img.manifest.digest
    assert r.stderr == ""  # no progress when stderr is not a terminal


def test_convert_text_summary_and_quiet(tmp_path):
    r = zconv("convert", str(SAMPLE), str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "3 of 3 layer(s) zstd:chunked" in r.stdout
    assert "tag v1: sha256:" in r.stdout
    q = zconv("convert", "-q", str(SAMPLE), str(tmp_path / "b"))
    assert q.returncode == 0 and q.stdout == "" and q.stderr == ""


def test_plain_zstd_fallback_warns_and_strict_exits_3(tmp_path):
    tar = ms.make_tar([ms.Entry("a", data=b"1"), ms.Entry("a", data=b"2")])
    img = ms.make_image([tar])
    src = tmp_path / "dup"
    ms.write_layout(str(src), img.blobs(), [("dup", img.manifest)])
    r = zconv("convert", "--json", f"oci:{src}", f"oci:{tmp_path / 'out'}")
    assert r.returncode == 0, r.stderr
    (layer,) = json.loads(r.stdout)["layers"]
    assert layer["chunked"] is False and layer["reason"]
    assert "zconv: warning:" in r.stderr and "layer 1/1" in r.stderr
    s = zconv("convert", "--strict", f"oci:{src}", f"oci:{tmp_path / 'strict'}")
    assert s.returncode == 3
    assert s.stderr.startswith("zconv: error: ") and s.stderr.count("\n") == 1
    assert not (tmp_path / "strict").exists()


def test_bad_input_exit_code_and_single_error_line(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src)
    (src / "index.json").unlink()
    r = zconv("convert", f"oci:{src}", f"oci:{tmp_path / 'out'}")
    assert r.returncode == 2
    assert r.stderr == f"zconv: error: oci:{src}: not an OCI layout (index.json is missing)\n"
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_64(tmp_path):
    r = zconv("convert", "dir:/nowhere", str(tmp_path / "o"))
    assert r.returncode == 64 and "unknown transport 'dir'" in r.stderr
    r = zconv("convert", str(SAMPLE))
    assert r.returncode == 64 and "Missing argument" in r.stderr
    r = zconv("convert", "--level", "99", str(SAMPLE), str(tmp_path / "o"))
    assert r.returncode == 64
    r = zconv("convert", "--tls-verify", "maybe", str(SAMPLE), str(tmp_path / "o"))
    assert r.returncode == 64 and "--tls-verify" in r.stderr
    r = zconv("convert", str(SAMPLE), f"docker-archive:{tmp_path / 'x.tar'}")
    assert r.returncode == 64 and "cannot be a destination" in r.stderr
    assert not (tmp_path / "o").exists()


def test_help_explains_references_and_exit_codes():
    r = zconv("--help")
    assert r.returncode == 0
    for word in ("convert", "inspect", "oci-archive:", "docker-archive:", "docker://"):
        assert word in r.stdout
    c = zconv("convert", "--help")
    assert c.returncode == 0
    for word in ("--level", "--threads", "--strict", "--force", "--quiet", "--json", "--dual", "Exit codes"):
        assert word in c.stdout


def test_inspect_after_convert(tmp_path):
    out = tmp_path / "out"
    assert zconv("convert", "-q", str(SAMPLE), str(out)).returncode == 0
    r = zconv("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("zstd:chunked") >= 3 and "TOC:" in r.stdout
    j = zconv("inspect", "--json", f"oci:{out}:v1")
    data = json.loads(j.stdout)
    (img,) = data["images"]
    assert img["kind"] == "manifest" and img["chunked_layers"] == 3
    assert all("toc" in layer for layer in img["layers"])


# ---------------------------------------------------------------- one walker, one error path


def _index_chain(tmp_path: Path, levels: int) -> Path:
    """A layout whose tag points at `levels` indexes nested in each other, then one image."""
    img = ms.make_image([ms.make_tar([ms.Entry("f", data=b"deep")])])
    blobs = list(img.blobs())
    top = ms.make_index([img])
    blobs.append(top)
    for _ in range(levels - 1):
        top = ms.Blob(
            ms.OCI_INDEX, ms.dumps({"schemaVersion": 2, "mediaType": ms.OCI_INDEX, "manifests": [top.descriptor()]})
        )
        blobs.append(top)
    path = tmp_path / f"chain{levels}"
    ms.write_layout(str(path), blobs, [("v1", top)])
    return path


def test_index_chain_deeper_than_the_limit_is_one_line_in_every_command(tmp_path):
    from converter.imageread import MAX_INDEX_DEPTH

    deep = _index_chain(tmp_path, MAX_INDEX_DEPTH + 1)
    ref = f"oci:{deep}:v1"
    runs = {
        "convert": zconv("convert", ref, f"oci:{tmp_path / 'out'}:v1"),
        "inspect": zconv("inspect", ref),
        "verify": zconv("verify", ref),
        "estimate": zconv("estimate", ref, ref),
        # the layout is walked (every blob must be there) before the registry is contacted
        "push": zconv("push", ref, "docker://127.0.0.1:9/deep:v1"),
    }
    for name, r in runs.items():
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("zconv: error: "), (name, r.stderr)
        assert f"index chain deeper than {MAX_INDEX_DEPTH} levels" in r.stderr, (name, r.stderr)
    assert not (tmp_path / "out").exists()
    # the deepest chain allowed still works
    ok = _index_chain(tmp_path, MAX_INDEX_DEPTH)
    r = zconv("convert", "--json", f"oci:{ok}:v1", f"oci:{tmp_path / 'out'}:v1")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["layers"]) == 1
    r = zconv("inspect", f"oci:{ok}:v1")
    assert r.returncode == 0 and r.stdout.count("index    sha256:") == MAX_INDEX_DEPTH, r.stdout


def test_unexpected_exception_is_one_line_exit_70_and_traceback_only_on_request():
    # A command that fails the way a bug would; main() must not show a traceback for it.
    prog = (
        "import sys\n"
        "from converter.cli import main\n"
        "from converter.cli_app import app\n"
        "@app.command()\n"
        "def boom() -> None:\n"
        "    {}['missing']\n"
        "sys.exit(main())\n"
    )
    import os

    env = {k: v for k, v in os.environ.items() if k != "ZCONV_DEBUG"}
    r = subprocess.run([sys.executable, "-c", prog, "boom"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 70
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("zconv: error: internal error (KeyError: 'missing')")
    assert "please report it" in r.stderr and "ZCONV_DEBUG=1" in r.stderr
    r = subprocess.run(
        [sys.executable, "-c", prog, "boom"], capture_output=True, text=True, cwd=ROOT, env={**env, "ZCONV_DEBUG": "1"}
    )
    assert r.returncode == 70 and "Traceback (most recent call last)" in r.stderr


# ---------------------------------------------------------------- control characters from outside

ESC_TAG = "v1\x1b]0;pwned\x07"  # an OSC sequence that retitles the terminal
ESC_ANN = "\x1b[2J\x1b[Hfake: all good\r"


def _hostile_layout(tmp_path: Path) -> Path:
    """A layout whose tag, layer annotation and directory name carry escape sequences."""
    tar = ms.make_tar([ms.Entry("a", data=b"1"), ms.Entry("a", data=b"2")])  # not chunkable: a warning
    img = ms.make_image([tar])
    manifest = json.loads(img.manifest.data)
    manifest["layers"][0]["annotations"] = {"org.example.note": ESC_ANN}
    mblob = ms.Blob(ms.OCI_MANIFEST, ms.dumps(manifest))
    path = tmp_path / "dir\x1b[31mred"
    ms.write_layout(str(path), [mblob, img.config, *img.layers], [(ESC_TAG, mblob)])
    return path


def _no_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    assert not bad, repr(text)


def test_control_characters_from_the_image_are_escaped_on_the_terminal(tmp_path):
    from converter.textsafe import printable

    src = _hostile_layout(tmp_path)
    # inspect: tag, annotation value and path appear, escaped
    r = zconv("inspect", f"oci:{src}")
    assert r.returncode == 0, r.stderr
    _no_controls(r.stdout)
    assert printable(ESC_ANN) in r.stdout and "\\x1b[2J\\x1b[Hfake: all good\\r" in r.stdout
    assert printable(ESC_TAG) in r.stdout and "dir\\x1b[31mred" in r.stdout
    # convert: the plain-zstd warning names the layer by tag (logging formatter) and the summary the tag
    r = zconv("convert", f"oci:{src}", f"oci:{tmp_path / 'out'}")
    assert r.returncode == 0, r.stderr
    _no_controls(r.stdout + r.stderr)
    assert "zconv: warning:" in r.stderr and "v1\\x1b]0;pwned\\x07" in r.stderr
    assert "tag v1\\x1b]0;pwned\\x07: sha256:" in r.stdout
    # verify and estimate text reports
    for args in (("verify", f"oci:{src}"), ("estimate", f"oci:{src}", f"oci:{src}")):
        r = zconv(*args)
        _no_controls(r.stdout + r.stderr)
        assert "dir\\x1b[31mred" in r.stdout, (args, r.stdout, r.stderr)
    # the error line: a file name from the layout
    (src / "index.json").unlink()
    r = zconv("inspect", f"oci:{src}")
    assert r.returncode == 2
    _no_controls(r.stderr)
    assert r.stderr.startswith("zconv: error: oci:") and "dir\\x1b[31mred" in r.stderr
    assert r.stderr.count("\n") == 1


def test_printable_escapes_every_control_and_keeps_text():
    from converter.textsafe import printable

    assert printable("plain ünïcode / tag:v1.2-rc") == "plain ünïcode / tag:v1.2-rc"
    assert printable("\x1b[31m\x07\r\n\t\x00\x7f\x85\x9b") == "\\x1b[31m\\x07\\r\\n\\t\\x00\\x7f\\x85\\x9b"
    assert printable("name\udcff") == "name\\xff"  # a non-UTF-8 byte of a file name (surrogateescape)
    assert printable("a\u2028b") == "a\\u2028b"
    printable("\udcff\ud800").encode("utf-8")  # never a UnicodeEncodeError when printed


def test_estimate_with_nothing_to_fetch_says_so():
    ref = f"oci:{SAMPLE}:v1"
    r = zconv("estimate", ref, ref)
    assert r.returncode == 0, r.stderr
    total = r.stdout.splitlines()[-1]
    assert total.startswith("total: missing 0 bytes out of 0 (nothing to fetch); fetch 0 B of ")
    assert "None" not in r.stdout


def test_warnings_go_to_the_current_stderr_on_every_in_process_run(tmp_path):
    import contextlib
    import io

    from converter.cli import main

    tar = ms.make_tar([ms.Entry("a", data=b"1"), ms.Entry("a", data=b"2")])  # plain-zstd fallback: a warning
    img = ms.make_image([tar])
    src = tmp_path / "dup"
    ms.write_layout(str(src), img.blobs(), [("dup", img.manifest)])
    for run in ("one", "two"):  # each run with its own stderr, as in an embedding program
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            assert main(["convert", "-q", f"oci:{src}", f"oci:{tmp_path / run}"]) == 0
        err = buf.getvalue()
        assert err.count("zconv: warning:") == 1 and "layer 1/1" in err, (run, err)
