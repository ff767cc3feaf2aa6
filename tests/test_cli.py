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
    return subprocess.run([sys.executable, "-m", "converter.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, stdin=subprocess.DEVNULL)


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
