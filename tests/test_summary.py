"""The Markdown summary for CI pages (converter/summary.py), from a real conversion and estimate."""

from __future__ import annotations

import time
from pathlib import Path

from converter.convert import convert_refs
from converter.estimate import estimate_sources
from converter.image.refs import open_source
from converter.progress import human
from converter.summary import append_summary, render_summary

SAMPLE = Path(__file__).resolve().parents[1] / "testdata" / "sample"


def test_summary_has_headline_images_and_one_row_per_layer(tmp_path):
    t0 = time.monotonic()
    report = convert_refs(f"oci:{SAMPLE}:v1", f"oci:{tmp_path / 'out'}:v1")
    seconds = time.monotonic() - t0
    text = render_summary(report, f"oci:{SAMPLE}:v1", "oci:out:v1", seconds)
    lines = text.splitlines()
    assert lines[0].startswith("### **zconv**: ")
    old = sum(r.old_size for r in report.layers)
    new = sum(r.new_size for r in report.layers)
    assert f"{human(old)} → {human(new)}" in lines[0]
    assert f"{len(report.layers)} of {len(report.layers)} zstd:chunked" in lines[0]
    assert f"`{report.images[0].digest}`" in text
    rows = [line for line in lines if line.startswith("| ") and "`sha256:" in line and "zstd" not in line[:10]]
    layer_rows = [line for line in rows if line.count("|") == 8]
    assert len(layer_rows) == len(report.layers)
    for r, row in zip(report.layers, layer_rows):
        assert r.new_digest[:19] in row and human(r.old_size) in row and "| yes |" in row

    out = tmp_path / "summary.md"
    out.write_text("earlier step\n")
    append_summary(str(out), text)
    assert out.read_text() == "earlier step\n" + text


def test_summary_with_estimate_against_the_previous_tag(tmp_path):
    layout = tmp_path / "out"
    convert_refs(f"oci:{SAMPLE}:v1", f"oci:{layout}:prev")
    report = convert_refs(f"oci:{SAMPLE}:v1", f"oci:{layout}:v1")
    with open_source(f"oci:{layout}:prev") as old, open_source(f"oci:{layout}:v1") as new:
        est = estimate_sources([old], new)
    text = render_summary(report, "a", "b", 1.0, est, f"oci:{layout}:prev")
    head = text.splitlines()[0]
    assert f"a client with `oci:{layout}:prev` fetches 0 B of" in head
    assert text.count("nothing (has it)") == len(report.layers)


def _zconv(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "converter.cli", *args], capture_output=True, text=True)


def test_cli_summary_digestfile_and_estimate_against_previous_tag(tmp_path):
    import json

    layout = tmp_path / "out"
    first = _zconv("convert", "-q", f"oci:{SAMPLE}:v1", f"oci:{layout}:prev")
    assert first.returncode == 0, first.stderr
    summary, digestfile = tmp_path / "summary.md", tmp_path / "digest"
    p = _zconv(
        "convert",
        "-q",
        "--summary",
        str(summary),
        "--estimate-against",
        f"oci:{layout}:prev",
        "--digestfile",
        str(digestfile),
        f"oci:{SAMPLE}:v1",
        f"oci:{layout}:v1",
    )
    assert p.returncode == 0, p.stderr
    index = json.loads((layout / "index.json").read_text())
    (v1,) = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "v1"]
    assert digestfile.read_text() == v1["digest"] + "\n"
    text = summary.read_text()
    assert text.startswith("### **zconv**: ") and f"a client with `oci:{layout}:prev` fetches 0 B" in text


def test_cli_separate_tls_flags_and_estimate_needs_summary(tmp_path):
    p = _zconv("convert", "--dest-tls-verify", "maybe", f"oci:{SAMPLE}:v1", f"oci:{tmp_path / 'o'}:v1")
    assert p.returncode == 64 and "--dest-tls-verify takes true or false, not 'maybe'" in p.stderr, p.stderr
    p = _zconv("convert", "--estimate-against", "oci:x:1", f"oci:{SAMPLE}:v1", f"oci:{tmp_path / 'o'}:v1")
    assert p.returncode == 64 and "needs --summary" in p.stderr
    assert not (tmp_path / "o").exists()
